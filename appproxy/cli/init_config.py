"""
What C{appproxy init} writes: L{InitPlan}, the values worked out (and checked)
from the command line, and the service and connector configuration files
rendered from it.  Pure: no I/O; L{appproxy.cli.init} writes the files.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import attrs

__all__ = ["Addresses", "InitPlan", "connector_toml", "service_toml"]


#: Where C{appproxy init} puts the metrics listener: Prometheus's port for
#: exporters of this kind, on loopback only.
METRICS_LISTEN = "tcp:9464:interface=127.0.0.1"


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@attrs.frozen
class Addresses:
    """The two listeners, and the addresses that reach them."""

    listen: str
    """The public listener endpoint."""
    tunnel_listen: str
    """The connectors' listener endpoint."""
    provider_address: str
    """Where the service reaches its own built-in provider."""
    service_address: str | None
    """What the connector dials; L{None}: it resolves the tunnel host name."""

    @classmethod
    def from_bind(
        cls,
        bind: ipaddress.IPv4Address | ipaddress.IPv6Address,
        *,
        port: int,
        tunnel_port: int,
        listen: str | None = None,
        service_address: str | None = None,
    ) -> Addresses:
        """
        Both listeners bind C{bind}; the service reaches its built-in
        provider through it (loopback for a wildcard address, 0.0.0.0 or
        ::), and so does a connector unless C{service_address} says
        otherwise; for a wildcard address it resolves the tunnel host name.
        C{listen}, when given, replaces the public listener's endpoint.
        """
        interface = bind.compressed.replace(":", "\\:")
        dialled: str | None
        if bind.is_unspecified:
            local, dialled = ("::1" if bind.version == 6 else "127.0.0.1"), None
        else:
            local = dialled = bind.compressed
        return cls(
            listen=listen if listen is not None else f"tcp:{port}:interface={interface}",
            tunnel_listen=f"tcp:{tunnel_port}:interface={interface}",
            provider_address=_host_port(local, port),
            service_address=service_address if service_address is not None else dialled,
        )


@attrs.frozen
class InitPlan:
    """Everything C{appproxy init} needs to know before it writes anything."""

    state_dir: Path
    """The directory that receives the files (absolute)."""
    domain: str
    """Apps are published as C{NAME.DOMAIN}."""
    app_name: str
    """The demo app's name, also its host name label."""
    app_host: str
    """The app's public host name."""
    tunnel_host: str
    """The host name in the tunnel certificate, which connectors verify."""
    login_host: str
    """The built-in provider's host name."""
    internal_url: str
    """Where the connector sends the app's requests."""
    group: str
    """The connector group serving the app."""
    connector_id: str
    """The id in the connector's certificate."""
    port: int
    """The public HTTPS port in the app's URL."""
    tunnel_port: int
    """The port connectors dial."""
    listen: str
    """The public listener endpoint."""
    tunnel_listen: str
    """The listener endpoint for connectors."""
    data_dir: Path | None
    """C{service.state_dir} (absolute), or L{None} for C{state} next to the file."""
    service_address: str | None
    """The address connectors dial, or L{None} to resolve the tunnel host name."""
    provider_address: str
    """Where the service reaches its own built-in provider (C{host:port})."""
    with_connector: bool = True
    """Whether init issues (and records) a connector, or every one registers."""
    metrics_listen: str | None = METRICS_LISTEN
    """The Prometheus metrics listener (C{[metrics] listen}); L{None}: off."""

    def _origin(self, host: str) -> str:
        return f"https://{host}" if self.port == 443 else f"https://{host}:{self.port}"

    @property
    def external_url(self) -> str:
        """What users open."""
        return self._origin(self.app_host) + "/"

    @property
    def login_origin(self) -> str:
        """The built-in provider's issuer."""
        return self._origin(self.login_host)


def _metrics_toml(plan: InitPlan) -> str:
    """The C{[metrics]} table (commented out when off)."""
    off = "# " if plan.metrics_listen is None else ""
    return (
        f"{off}[metrics]\n"
        "# Prometheus metrics over plain HTTP at /metrics (docs/metrics.md): keep the\n"
        "# listener private (loopback, or an address only the scraper reaches).\n"
        f"{off}listen = {_toml_str(plan.metrics_listen or METRICS_LISTEN)}\n"
    )


def _toml_str(value: str) -> str:
    """A TOML basic string."""
    out = ['"']
    for char in value:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def service_toml(plan: InitPlan) -> str:
    """The service's configuration file."""
    login_origin = plan.login_origin
    return f"""\
# appproxy service configuration (written by "appproxy init").
# Relative paths are resolved against the directory holding this file.
# Reference: docs/configuration.md

[service]
# Public HTTPS listener (a Twisted endpoint string); appproxy adds TLS itself.
listen = {_toml_str(plan.listen)}
# Durable state (created if missing; writable by the service's user).
state_dir = {_toml_str(str(plan.data_dir) if plan.data_dir is not None else "state")}
# Seconds a request may wait for a free connector before a 503.
queue_timeout = 10
# "text" for people, "json" (JSON lines on stdout) for machines.
# log_format = "text"

# One or more certificates; the one whose names match the SNI host name is
# used, the first one otherwise.
[[service.certificates]]
cert = "tls/service.pem"
key = "tls/service.key"

[tunnel]
# Listener for connectors (mutual TLS, HTTP/2; registration over HTTP/1.1).
listen = {_toml_str(plan.tunnel_listen)}
# The certificate connectors verify (it names the tunnel host).
cert = "tls/tunnel.pem"
key = "tls/tunnel.key"
# The CA that signs connector client certificates, and its key: the service
# signs the certificate of each connector that registers (appproxy-connector
# register). Without the key, registration and renewal are off.
connector_ca = "ca.pem"
connector_ca_key = "ca.key"

{_metrics_toml(plan)}
[[apps]]
# Unique name, shown in logs and error pages.
name = {_toml_str(plan.app_name)}
# What users open.
external_url = {_toml_str(plan.external_url)}
# Where the connector sends the requests.
internal_url = {_toml_str(plan.internal_url)}
# The connectors that serve this app (the group is in their certificates).
connector_group = {_toml_str(plan.group)}
# Users sign in (OpenID Connect) before any request reaches the app;
# "passthrough" publishes it without sign-in.
pre_authentication = "oidc"
# Who may use the app (both empty: every signed-in user).
# allowed_users = ["alice"]
# allowed_groups = ["staff"]
# Optional, with their defaults:
# session_lifetime = 28800
# persistent_cookie = false
# http_only_cookie = true
# jwt_assertion = false
# translate_urls_in_headers = true
# backend_timeout = "default"
# verify_backend_tls = true

# Header-based single sign-on: header = claim.
[apps.headers]
X-Remote-User = "preferred_username"
X-Remote-Name = "name"
X-Remote-Email = "email"
X-Remote-Groups = "groups"

[oidc]
# The OpenID provider users sign in with. Here: the service's own built-in
# provider ([builtin_provider] below); for Entra ID, Okta, Keycloak or Google
# put its issuer URL, your client id and a file holding the client secret.
issuer = {_toml_str(login_origin)}
client_id = "appproxy"
client_secret_file = "oidc-client-secret"
# client_auth = "client_secret_basic"
# The one redirect URI to register at the provider.
callback_url = {_toml_str(login_origin + "/.appproxy/callback")}
# Which claim is the user name, and which holds the groups.
# username_claim = "preferred_username"
# groups_claim = "groups"
# Trust for the provider's TLS (default: the system's CA store).
provider_ca = "ca.pem"
# Connect here instead of resolving the issuer's host name.
provider_address = {_toml_str(plan.provider_address)}

[builtin_provider]
# The service's own OpenID provider, for a machine with nothing else.
# Add users with: appproxy users add NAME --config THIS_FILE (or --state-dir with its directory)
issuer = {_toml_str(login_origin)}
"""


def _service_address(plan: InitPlan) -> str:
    if plan.service_address is None:
        return ' (a DNS name or IP address).\n# service_address = "203.0.113.10"'
    return f".\nservice_address = {_toml_str(plan.service_address)}"


def connector_toml(plan: InitPlan) -> str:
    """The connector's configuration file."""
    return f"""\
# appproxy connector configuration (written by "appproxy init").
# Relative paths are resolved against the directory holding this file.
# Reference: docs/configuration.md

[connector]
# The host name the service's tunnel certificate must carry.
service_host = {_toml_str(plan.tunnel_host)}
# The service's tunnel port.
service_port = {plan.tunnel_port}
# Dial this address instead of resolving service_host{_service_address(plan)}
# Tunnel connections kept open.
connections = 4
# Concurrent requests per connection.
capacity = 100
# The service CA pinned at setup; it signed the service's tunnel certificate.
ca = "ca.pem"
# This connector's client certificate; it names the connector and its group.
cert = "connector.pem"
key = "connector.key"
# Optional, with their defaults:
# ping_interval = 15
# log_format = "text"
"""
