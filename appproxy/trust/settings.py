"""
What the enrolment API tells a connector about its group
(L{connector_settings}: C{GET /v1/config}) and which groups there are
(L{app_groups}).

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import hashlib

import attrs

from appproxy.config import ServiceConfig
from appproxy.tunnel.enrolment import AppSettings, ConnectorSettings, encode

__all__ = ["DAY", "app_groups", "connector_settings"]

DAY = 86400.0


def app_groups(config: ServiceConfig) -> tuple[str, ...]:
    """The connector groups the configured apps use, sorted."""
    return tuple(sorted({app.connector_group for app in config.apps}))


def connector_settings(config: ServiceConfig, connector_id: str, group: str) -> ConnectorSettings:
    """
    The configuration of connector C{connector_id} of C{group}: the group's
    apps (internal URL and backend TLS), how often to pull again, when to
    renew, how many tunnel connections to keep; C{version} is a hash of the
    rest, so it changes whenever anything else does.
    """
    connectors = config.connectors
    apps = tuple(
        AppSettings(
            name=app.name,
            internal_url=app.internal_url,
            verify_tls=app.verify_backend_tls,
            ca_pem=app.backend_ca_pem.decode("ascii", "replace") if app.backend_ca_pem else None,
            timeout=app.backend_timeout,
        )
        for app in config.apps
        if app.connector_group == group
    )
    settings = ConnectorSettings(
        connector_id=connector_id,
        group=group,
        apps=apps,
        connections=connectors.connections,
        config_interval=connectors.config_interval,
        renew_after=connectors.renew_after_days * DAY,
        version="-",
    )
    version = "sha256:" + hashlib.sha256(encode(settings)).hexdigest()[:32]
    return attrs.evolve(settings, version=version)
