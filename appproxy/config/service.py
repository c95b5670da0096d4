"""
The service's file, C{service.toml}: C{[service]} (the public listener),
C{[tunnel]} (where connectors dial in), the apps, sign-in and conditional
access, and the checks across them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from appproxy.config import _admin, _apps, _connectors, _limits, _metrics, _policies, _signin
from appproxy.config._endpoint import endpoint
from appproxy.config._files import ca_file, certificate_files, read_toml
from appproxy.config._messages import quote
from appproxy.config._table import Context, document
from appproxy.config._values import networks
from appproxy.config.model import (
    LOG_FORMATS,
    AppConfig,
    BuiltinProviderConfig,
    OidcConfig,
    ServiceConfig,
)

__all__ = ["load_service_config", "parse_service_config"]

_TOP_KEYS = (
    "service",
    "tunnel",
    "apps",
    "oidc",
    "builtin_provider",
    "risk",
    "locations",
    "policies",
    "connectors",
    "admin",
    "events",
    "metrics",
    "limits",
)
_SERVICE_KEYS = (
    "listen",
    "state_dir",
    "queue_timeout",
    "log_format",
    "certificates",
    "trusted_proxies",
    "client_header_timeout",
    "client_body_min_rate",
    "client_header_connections_per_address",
    "websockets_per_user",
)
_CERTIFICATE_KEYS = ("cert", "key")
_TUNNEL_KEYS = ("listen", "cert", "key", "connector_ca", "connector_ca_key")


def load_service_config(path: str | Path) -> ServiceConfig:
    """
    Read and check the service's configuration file.

    @raise ConfigError: naming the file, the key and what is wrong with it.
    """
    return parse_service_config(read_toml(path), Path(path))


def parse_service_config(data: Mapping[str, object], path: Path) -> ServiceConfig:
    """
    L{load_service_config} for a document already parsed from the file at
    C{path} (relative paths in it are relative to its directory).
    """
    top = document(data, path, _TOP_KEYS)

    service = top.table(
        "service", _SERVICE_KEYS, "a [service] table with listen, state_dir and certificates"
    )
    listen = endpoint(
        service,
        "listen",
        "appproxy adds TLS itself: use a tcp: endpoint and [[service.certificates]]",
    )
    state_dir = service.path("state_dir")
    queue_timeout = service.number("queue_timeout", 10.0, 3600.0)
    log_format = service.choice("log_format", LOG_FORMATS, "text")
    client_limits, limits = _limits.limits(top, service)
    certificates = tuple(
        certificate_files(table, "cert", "key")
        for table in service.tables(
            "certificates",
            _CERTIFICATE_KEYS,
            "at least one [[service.certificates]] table with cert and key",
        )
    )

    tunnel = top.table(
        "tunnel", _TUNNEL_KEYS, "a [tunnel] table with listen, cert, key and connector_ca"
    )
    tunnel_listen = endpoint(
        tunnel, "listen", "appproxy adds TLS itself: use a tcp: endpoint and tunnel.cert/tunnel.key"
    )
    tunnel_cert = certificate_files(tunnel, "cert", "key")
    connector_ca, connector_ca_pem = ca_file(tunnel, "connector_ca")
    ca_key, ca_key_pem = _connectors.connector_ca_key(tunnel, connector_ca_pem, connector_ca)

    apps = _apps.apps(top)
    trusted_proxies = networks(service, "trusted_proxies")
    oidc = _signin.oidc(top)
    builtin = _signin.builtin_provider(top, state_dir)
    connectors = _connectors.connectors(top, builtin)
    risk = _policies.risk(top)
    locations = _policies.locations(top)
    policies = _policies.policies(
        top, {app.name for app in apps}, {location.name for location in locations}
    )
    _check_sign_in(top.ctx, apps, oidc, builtin)
    admin = _admin.admin(top, {"service.listen": listen, "tunnel.listen": tunnel_listen})
    events = _admin.events(top)
    metrics = _metrics.metrics(top, {"service.listen": listen, "tunnel.listen": tunnel_listen})

    return ServiceConfig(
        path=top.ctx.path,
        listen=listen,
        state_dir=state_dir,
        queue_timeout=queue_timeout,
        log_format=log_format,
        certificates=certificates,
        tunnel_listen=tunnel_listen,
        tunnel_cert=tunnel_cert,
        connector_ca=connector_ca,
        connector_ca_pem=connector_ca_pem,
        connector_ca_key=ca_key,
        connector_ca_key_pem=ca_key_pem,
        connectors=connectors,
        apps=apps,
        trusted_proxies=trusted_proxies,
        oidc=oidc,
        builtin_provider=builtin,
        risk=risk,
        locations=locations,
        policies=policies,
        client_limits=client_limits,
        limits=limits,
        admin=admin,
        events=events,
        metrics=metrics,
    )


def _check_sign_in(
    ctx: Context,
    apps: tuple[AppConfig, ...],
    oidc: OidcConfig | None,
    builtin: BuiltinProviderConfig | None,
) -> None:
    """
    An app that signs in needs C{[oidc]}; the login hosts (the callback's
    and the built-in provider's) are not hosts of apps.
    """
    if oidc is None:
        for index, app in enumerate(apps):
            if app.signs_in:
                ctx.fail(
                    f"apps[{index}].pre_authentication",
                    f"app {quote(app.name)} requires sign-in ('oidc', the default) but there"
                    " is no [oidc] table: add one, or set pre_authentication = 'passthrough'",
                )
    _signin.check_sign_in(ctx, oidc, builtin)
    app_hosts = {app.external_host: app.name for app in apps}
    login_hosts = [
        ("oidc.callback_url", None if oidc is None else oidc.callback_host),
        ("builtin_provider.issuer", None if builtin is None else builtin.host),
    ]
    for key, host in login_hosts:
        if host is not None and host in app_hosts:
            ctx.fail(
                key,
                f"its host {quote(host)} is the host of app {quote(app_hosts[host])}:"
                " use a host of its own (login.DOMAIN)",
            )
