"""
twistd plugins for appproxy: C{twistd appproxy} (the public service) and
C{twistd appproxy-connector} (the connector inside the private network).

Kept import-light: the real modules are imported only when a plugin is used.
"""

from twisted.application.service import ServiceMaker

appproxyService = ServiceMaker(
    "appproxy service",
    "appproxy.daemon.service_tap",
    "The public appproxy service: TLS, routing, tunnel listener for connectors.",
    "appproxy",
)

appproxyConnector = ServiceMaker(
    "appproxy connector",
    "appproxy.daemon.connector_tap",
    "The appproxy connector: dials out to the service and forwards to internal apps.",
    "appproxy-connector",
)
