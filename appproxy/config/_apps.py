"""
The service's C{[[apps]]}: the published applications, each with its URLs,
back-end settings, who may use it, its session cookie and identity headers.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from appproxy.access.policy import Assignment
from appproxy.config._files import optional_ca_file
from appproxy.config._messages import quote, toml_key, type_name
from appproxy.config._table import MISSING, Table
from appproxy.config._values import base_url
from appproxy.config.model import BACKEND_TIMEOUTS, DEFAULT_PORTS, AppConfig

_APP_KEYS = (
    "name",
    "external_url",
    "internal_url",
    "connector_group",
    "pre_authentication",
    "translate_urls_in_headers",
    "backend_timeout",
    "verify_backend_tls",
    "backend_ca",
    "allowed_users",
    "allowed_groups",
    "session_lifetime",
    "persistent_cookie",
    "http_only_cookie",
    "jwt_assertion",
    "headers",
    "websocket",
    "websocket_origins",
    "websocket_idle_timeout",
    "max_websockets",
)
_PRE_AUTHENTICATION = ("oidc", "passthrough")
#: Keys that need a signed-in user, and their values that do not.
_SIGN_IN_KEYS = ("allowed_users", "allowed_groups", "jwt_assertion")
_HARMLESS: tuple[object, ...] = (MISSING, [], False)
#: Request headers an identity mapping may not name: the proxy sets or
#: strips them itself.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "cookie",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-request-id",
        "forwarded",
    }
)
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


def apps(top: Table) -> tuple[AppConfig, ...]:
    """C{[[apps]]}: at least one, no two with the same name or external URL."""
    result: list[AppConfig] = []
    names: dict[str, str] = {}
    urls: dict[str, str] = {}
    for table in top.tables("apps", _APP_KEYS, "at least one [[apps]] table"):
        app = _app(table)
        if app.name in names:
            table.fail("name", f"{quote(app.name)} is already used by {names[app.name]}")
        if app.external_url in urls:
            table.fail(
                "external_url",
                f"{quote(app.external_url)} is already used by {urls[app.external_url]}",
            )
        names[app.name] = table.where
        urls[app.external_url] = f"{table.where} ({app.name})"
        result.append(app)
    return tuple(result)


def _app(table: Table) -> AppConfig:
    name = table.name("name")
    external_url = base_url(table, "external_url", external=True)
    internal_url = base_url(table, "internal_url", external=False)
    connector_group = table.name("connector_group")
    pre_authentication = table.choice("pre_authentication", _PRE_AUTHENTICATION, "oidc")
    translate = table.boolean("translate_urls_in_headers", True)
    timeout = _backend_timeout(table)
    verify = table.boolean("verify_backend_tls", True)
    backend_ca, backend_ca_pem = optional_ca_file(table, "backend_ca")
    assignment = Assignment(
        users=table.string_list("allowed_users"), groups=table.string_list("allowed_groups")
    )
    session_lifetime = table.integer("session_lifetime", 8 * 3600, 60, 30 * 24 * 3600)
    persistent = table.boolean("persistent_cookie", False)
    http_only = table.boolean("http_only_cookie", True)
    jwt_assertion = table.boolean("jwt_assertion", False)
    headers = _identity_headers(table)
    websocket = table.boolean("websocket", True)
    websocket_origins = _origins(table, "websocket_origins")
    websocket_idle_timeout = table.number("websocket_idle_timeout", 900.0, 7 * 24 * 3600.0)
    max_websockets = table.integer("max_websockets", 1000, 0, 1_000_000)
    if pre_authentication == "passthrough":
        for key in _SIGN_IN_KEYS:
            if table.get(key) not in _HARMLESS:
                table.fail(key, "needs sign-in: a passthrough app has no signed-in user")
    return AppConfig(
        name=name,
        external_url=external_url,
        internal_url=internal_url,
        connector_group=connector_group,
        pre_authentication=pre_authentication,
        translate_urls_in_headers=translate,
        backend_timeout=timeout,
        verify_backend_tls=verify,
        backend_ca=backend_ca,
        backend_ca_pem=backend_ca_pem,
        assignment=assignment,
        session_lifetime=session_lifetime,
        persistent_cookie=persistent,
        http_only_cookie=http_only,
        jwt_assertion=jwt_assertion,
        headers=headers,
        websocket=websocket,
        websocket_origins=websocket_origins,
        websocket_idle_timeout=websocket_idle_timeout,
        max_websockets=max_websockets,
    )


def _backend_timeout(table: Table) -> float:
    """
    C{backend_timeout}: "default" (85 s), "long" (180 s), or a number of
    seconds from 1 to 3600 for apps that need something else.
    """
    value = table.get("backend_timeout")
    if isinstance(value, str):
        return BACKEND_TIMEOUTS[table.choice("backend_timeout", tuple(BACKEND_TIMEOUTS), "default")]
    if value is MISSING:
        return BACKEND_TIMEOUTS["default"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        table.fail(
            "backend_timeout",
            f'must be "default", "long" or a number of seconds, not {type_name(value)}',
        )
    return table.number("backend_timeout", BACKEND_TIMEOUTS["default"], 3600)


def _identity_headers(table: Table) -> tuple[tuple[str, str], ...]:
    """C{[apps.headers]}: header name = claim name."""
    value = table.get("headers")
    if value is MISSING:
        return ()
    if not isinstance(value, dict):
        table.fail("headers", f"must be a table of header = claim, not {type_name(value)}")
    where = table.key("headers")
    seen: dict[str, str] = {}
    result = []
    for header, claim in value.items():
        key = f"{where}.{toml_key(header)}"
        if not _HEADER_NAME.fullmatch(header):
            table.ctx.fail(key, "is not a valid header name (letters, digits and '-')")
        normal = header.lower().replace("_", "-")
        if normal in _RESERVED_HEADERS or normal.startswith("x-appproxy-"):
            table.ctx.fail(key, "is set by appproxy itself and cannot carry a claim")
        if normal in seen:
            table.ctx.fail(key, f"is the same header as {quote(seen[normal])}")
        seen[normal] = header
        if not isinstance(claim, str):
            table.ctx.fail(key, f"must be a claim name (a string), not {type_name(claim)}")
        if not claim:
            table.ctx.fail(key, "must not be empty")
        result.append((header, claim))
    return tuple(result)


def _origins(table: Table, name: str) -> tuple[str, ...]:
    """
    A list of web origins (C{https://host[:port]}, or C{http://} for a page
    served in the clear), normalised as browsers send them in C{Origin}:
    lowercase, default port elided, no path.
    """
    result: list[str] = []
    for index, value in enumerate(table.string_list(name)):
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            table.fail_item(name, index, f"{quote(value)} is not a valid origin")
        host = parts.hostname or ""
        if (
            parts.scheme not in ("http", "https")
            or not host
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or "@" in parts.netloc
            or not value.isascii()
        ):
            table.fail_item(
                name,
                index,
                f"{quote(value)} is not an origin: write scheme://host or scheme://host:port"
                " (for example https://portal.example.com)",
            )
        shown_host = f"[{host}]" if ":" in host else host
        default = DEFAULT_PORTS[parts.scheme]
        origin = f"{parts.scheme}://{shown_host}"
        if port is not None and port != default:
            origin += f":{port}"
        result.append(origin)
    return tuple(result)
