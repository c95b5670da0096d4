"""
Configuration files of the service and the connector.

The schema is documented in C{docs/configuration.md}.  Each daemon reads one
TOML file; relative paths inside it are relative to the directory holding the
file; unknown keys are errors.  Any problem raises L{ConfigError}, whose
C{str()} is one line naming the file, the key and the problem, and which never
contains the content of a certificate or key file.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from appproxy.access.policy import Assignment, MfaRule, NamedLocation, Policy, unknown_locations

__all__ = [
    "BACKEND_TIMEOUTS",
    "AppConfig",
    "BuiltinProviderConfig",
    "CertificateFiles",
    "ConfigError",
    "ConnectorConfig",
    "OidcConfig",
    "RiskConfig",
    "ServiceConfig",
    "load_connector_config",
    "load_service_config",
    "parse_connector_config",
    "parse_service_config",
]

#: Seconds to wait for an internal app's response headers, by C{backend_timeout}.
BACKEND_TIMEOUTS: Final[Mapping[str, float]] = {"default": 85.0, "long": 180.0}

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# Host names in URLs: a little looser than DNS (underscores occur in internal names).
_URL_HOST = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_DIGITS = re.compile(r"[0-9]+")
_MAX_SHOWN = 200

_SERVICE_TOP_KEYS = (
    "service",
    "tunnel",
    "apps",
    "oidc",
    "builtin_provider",
    "risk",
    "locations",
    "policies",
)
_SERVICE_KEYS = (
    "listen",
    "state_dir",
    "queue_timeout",
    "log_format",
    "certificates",
    "trusted_proxies",
)
_OIDC_KEYS = (
    "issuer",
    "client_id",
    "client_secret_file",
    "client_auth",
    "callback_url",
    "scopes",
    "username_claim",
    "groups_claim",
    "algorithms",
    "clock_skew",
    "provider_ca",
    "provider_address",
    "mfa_amr",
    "mfa_acr",
    "step_up_acr_values",
    "jwks_refetch_interval",
)
_BUILTIN_PROVIDER_KEYS = ("issuer", "users_file", "device_client_id")
_RISK_KEYS = ("failed_sign_in_limit", "failed_sign_in_window", "anonymizers")
_LOCATION_KEYS = ("name", "networks")
_POLICY_KEYS = (
    "name",
    "apps",
    "exclude_apps",
    "users",
    "groups",
    "exclude_users",
    "exclude_groups",
    "locations",
    "exclude_locations",
    "risks",
    "grant",
    "sign_in_frequency",
)
_CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
#: Client ids the built-in provider accepts.
_CLIENT_ID = re.compile(r"[\x21-\x39\x3b-\x7e]{1,255}")
_CLIENT_ID_PROBLEM = (
    "is not a valid client id (1 to 255 printable ASCII characters, no spaces or ':')"
)
#: The shortest client secret the built-in provider accepts.
_MIN_BUILTIN_CLIENT_SECRET = 16
#: Signature algorithms an ID token may use (asymmetric only: never "none",
#: never an HMAC, which a provider's public key could be abused to forge).
_ID_TOKEN_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_RISK_SIGNALS = ("failed-sign-ins", "anonymizer")
_GRANTS = ("block", "mfa")
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
_CERTIFICATE_KEYS = ("cert", "key")
_TUNNEL_KEYS = ("listen", "cert", "key", "connector_ca")
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
)
_PRE_AUTHENTICATION = ("oidc", "passthrough")
_CONNECTOR_TOP_KEYS = ("connector",)
_CONNECTOR_KEYS = (
    "service_host",
    "service_port",
    "service_address",
    "connections",
    "capacity",
    "ca",
    "cert",
    "key",
    "ping_interval",
    "log_format",
)
_LOG_FORMATS = ("text", "json")

# Parameters of the endpoint types accepted for listeners, in Twisted's
# positional order.
_ENDPOINT_PARAMS: Final[Mapping[str, tuple[str, ...]]] = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "unix": ("address", "mode", "backlog", "lockfile"),
    "systemd": ("domain", "index", "name"),
}


class ConfigError(Exception):
    """
    A configuration file is unusable.

    @ivar file: the configuration file's path.
    @ivar key: the dotted path of the offending key (C{apps[1].internal_url}),
        or C{""} for a problem with the whole file.
    @ivar problem: what is wrong, one line.
    """

    file: str
    key: str
    problem: str

    def __init__(self, file: str, key: str, problem: str) -> None:
        super().__init__(file, key, problem)
        self.file = file
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        parts = [self.file, self.key, self.problem] if self.key else [self.file, self.problem]
        return ": ".join(_one_line(part) for part in parts)


@attrs.frozen(kw_only=True)
class CertificateFiles:
    """
    A certificate (chain) and its private key, read and checked.

    @ivar cert: path of the PEM certificate file (the leaf first, then any chain).
    @ivar key: path of the PEM private key file.
    @ivar cert_pem: the certificate file's content.
    @ivar key_pem: the key file's content (kept out of C{repr}).
    """

    cert: Path
    key: Path
    cert_pem: bytes = attrs.field(repr=False)
    key_pem: bytes = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class AppConfig:
    """
    One published application (an C{[[apps]]} table).

    C{external_url} and C{internal_url} are normalised: lowercase scheme and
    host, default port elided, path ending in C{/}.
    """

    name: str
    external_url: str
    internal_url: str
    connector_group: str
    #: C{"oidc"} (sign-in required) or C{"passthrough"} (no sign-in).
    pre_authentication: str = "oidc"
    translate_urls_in_headers: bool = True
    backend_timeout: float = BACKEND_TIMEOUTS["default"]
    verify_backend_tls: bool = True
    backend_ca: Path | None = None
    backend_ca_pem: bytes | None = attrs.field(default=None, repr=False)
    #: Who may use the app (both lists empty: every signed-in user).
    assignment: Assignment = attrs.field(factory=Assignment)
    #: Longest life of a session, in seconds (the ID token's may be shorter).
    session_lifetime: int = 8 * 3600
    #: Whether the session cookie outlives the browser session.
    persistent_cookie: bool = False
    #: Whether the session cookie is hidden from the app's scripts.
    http_only_cookie: bool = True
    #: Whether to send the signed C{X-AppProxy-Jwt-Assertion} header.
    jwt_assertion: bool = False
    #: Identity headers: (header name as written, claim name), in file order.
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def signs_in(self) -> bool:
        """Whether users must sign in before a request reaches the app."""
        return self.pre_authentication == "oidc"

    @property
    def cookie_name(self) -> str:
        """The name of the app's session cookie."""
        return f"__Host-appproxy-{self.name}"

    @property
    def external_host(self) -> str:
        """C{host} or C{host:port} (443 elided), lowercase, as in a C{Host} header."""
        return urlsplit(self.external_url).netloc

    @property
    def external_path(self) -> str:
        """The external URL's path, ending in C{/}."""
        return urlsplit(self.external_url).path

    @property
    def internal_scheme(self) -> str:
        """C{"http"} or C{"https"}."""
        return urlsplit(self.internal_url).scheme

    @property
    def internal_netloc(self) -> str:
        """C{host} or C{host:port} (default port elided; IPv6 literal bracketed)."""
        return urlsplit(self.internal_url).netloc

    @property
    def internal_host(self) -> str:
        """The internal host name or IP address, without brackets."""
        return urlsplit(self.internal_url).hostname or ""

    @property
    def internal_port(self) -> int:
        """The internal port, defaulted from the scheme."""
        parts = urlsplit(self.internal_url)
        return parts.port or _DEFAULT_PORTS[parts.scheme]

    @property
    def internal_path(self) -> str:
        """The internal URL's path, ending in C{/}."""
        return urlsplit(self.internal_url).path


@attrs.frozen(kw_only=True)
class OidcConfig:
    """
    How users sign in: the OpenID provider appproxy relies on (C{[oidc]}).
    """

    issuer: str
    client_id: str
    client_secret_file: Path
    client_secret: str = attrs.field(repr=False)
    client_auth: str = "client_secret_basic"
    #: The one redirect URI registered at the provider, on the login host.
    callback_url: str
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256")
    clock_skew: int = 60
    provider_ca: Path | None = None
    provider_ca_pem: bytes | None = attrs.field(default=None, repr=False)
    #: Connect here instead of resolving the issuer's host name.
    provider_address: str | None = None
    mfa: MfaRule = attrs.field(factory=MfaRule)
    #: What to ask the provider for (C{acr_values}) when policy requires MFA.
    step_up_acr_values: str = "mfa"
    #: Least time between two fetches of the provider's keys (an ID token
    #: with an unknown key id triggers one).
    jwks_refetch_interval: float = 30.0

    @property
    def callback_host(self) -> str:
        """The login host (C{host} or C{host:port}), as in a C{Host} header."""
        return urlsplit(self.callback_url).netloc

    @property
    def callback_path(self) -> str:
        return urlsplit(self.callback_url).path


@attrs.frozen(kw_only=True)
class BuiltinProviderConfig:
    """
    The service's own small OpenID provider (C{[builtin_provider]}).
    """

    issuer: str
    users_file: Path
    device_client_id: str = "appproxy-connector"

    @property
    def host(self) -> str:
        return urlsplit(self.issuer).netloc


@attrs.frozen(kw_only=True)
class RiskConfig:
    """Sign-in risk detection (C{[risk]})."""

    failed_sign_in_limit: int = 5
    failed_sign_in_window: float = 600.0
    anonymizers: Path | None = None


@attrs.frozen(kw_only=True)
class ServiceConfig:
    """The service's configuration (C{service.toml})."""

    path: Path
    listen: str
    state_dir: Path
    queue_timeout: float = 10.0
    log_format: str = "text"
    certificates: tuple[CertificateFiles, ...]
    tunnel_listen: str
    tunnel_cert: CertificateFiles
    connector_ca: Path
    connector_ca_pem: bytes = attrs.field(repr=False)
    apps: tuple[AppConfig, ...]
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    oidc: OidcConfig | None = None
    builtin_provider: BuiltinProviderConfig | None = None
    risk: RiskConfig = attrs.field(factory=RiskConfig)
    locations: tuple[NamedLocation, ...] = ()
    policies: tuple[Policy, ...] = ()

    @property
    def login_hosts(self) -> frozenset[str]:
        """Hosts the service answers itself: the callback and built-in provider."""
        hosts = set()
        if self.oidc is not None:
            hosts.add(self.oidc.callback_host)
        if self.builtin_provider is not None:
            hosts.add(self.builtin_provider.host)
        return frozenset(hosts)


@attrs.frozen(kw_only=True)
class ConnectorConfig:
    """The connector's configuration (C{connector.toml})."""

    path: Path
    service_host: str
    service_port: int = 8444
    service_address: str
    connections: int = 4
    capacity: int = 100
    ca: Path
    ca_pem: bytes = attrs.field(repr=False)
    cert: CertificateFiles
    ping_interval: float = 15.0
    log_format: str = "text"


_DEFAULT_PORTS: Final[Mapping[str, int]] = {"http": 80, "https": 443}


# Loading


def load_service_config(path: str | Path) -> ServiceConfig:
    """
    Read and check the service's configuration file.

    @raise ConfigError: if the file is unreadable or invalid.
    """
    absolute = Path(path).absolute()
    return parse_service_config(_read_toml(absolute), absolute)


def load_connector_config(path: str | Path) -> ConnectorConfig:
    """
    Read and check the connector's configuration file.

    @raise ConfigError: if the file is unreadable or invalid.
    """
    absolute = Path(path).absolute()
    return parse_connector_config(_read_toml(absolute), absolute)


def parse_service_config(data: dict[str, Any], path: Path) -> ServiceConfig:
    """
    Check an already parsed service configuration.

    @param data: the parsed TOML document.
    @param path: the file it came from; relative paths are resolved against
        its directory.

    @raise ConfigError: if the configuration is invalid.
    """
    path = Path(path).absolute()
    ctx = _Context(str(path), path.parent)
    top = _Table(ctx, "", data, _SERVICE_TOP_KEYS)

    service = top.table(
        "service", _SERVICE_KEYS, "a [service] table with listen, state_dir and certificates"
    )
    listen = _endpoint(
        service,
        "listen",
        "appproxy adds TLS itself: use a tcp: endpoint and [[service.certificates]]",
    )
    state_dir = service.path("state_dir")
    queue_timeout = service.number("queue_timeout", 10.0, 3600.0)
    log_format = service.choice("log_format", _LOG_FORMATS, "text")
    certificates = tuple(
        _certificate_files(table, "cert", "key")
        for table in service.tables(
            "certificates",
            _CERTIFICATE_KEYS,
            "at least one [[service.certificates]] table with cert and key",
        )
    )

    tunnel = top.table(
        "tunnel", _TUNNEL_KEYS, "a [tunnel] table with listen, cert, key and connector_ca"
    )
    tunnel_listen = _endpoint(
        tunnel, "listen", "appproxy adds TLS itself: use a tcp: endpoint and tunnel.cert/tunnel.key"
    )
    tunnel_cert = _certificate_files(tunnel, "cert", "key")
    connector_ca, connector_ca_pem = _ca_file(tunnel, "connector_ca")

    apps: list[AppConfig] = []
    names: dict[str, str] = {}
    urls: dict[str, str] = {}
    for table in top.tables("apps", _APP_KEYS, "at least one [[apps]] table"):
        app = _app(table)
        if app.name in names:
            table.fail("name", f"{_quote(app.name)} is already used by {names[app.name]}")
        if app.external_url in urls:
            table.fail(
                "external_url",
                f"{_quote(app.external_url)} is already used by {urls[app.external_url]}",
            )
        names[app.name] = table.where
        urls[app.external_url] = f"{table.where} ({app.name})"
        apps.append(app)

    trusted_proxies = tuple(
        _network(service, "trusted_proxies", index, text)
        for index, text in enumerate(service.string_list("trusted_proxies"))
    )
    oidc = _oidc(top) if top.get("oidc") is not _MISSING else None
    builtin = (
        _builtin_provider(top, state_dir) if top.get("builtin_provider") is not _MISSING else None
    )
    risk = _risk(top) if top.get("risk") is not _MISSING else RiskConfig()
    locations = _locations(top)
    policies = _policies(top, {app.name for app in apps}, {loc.name for loc in locations})

    if oidc is None:
        for index, app in enumerate(apps):
            if app.signs_in:
                ctx.fail(
                    f"apps[{index}].pre_authentication",
                    f"app {_quote(app.name)} requires sign-in ('oidc', the default) but there"
                    " is no [oidc] table: add one, or set pre_authentication = 'passthrough'",
                )
    if oidc is None and builtin is not None:
        ctx.fail(
            "builtin_provider",
            "needs an [oidc] table whose issuer is the built-in provider's"
            f" ({_quote(builtin.issuer)})",
        )
    if oidc is not None and builtin is not None and oidc.issuer.rstrip("/") == builtin.issuer:
        # appproxy registers itself as a client of its own provider.
        if not _CLIENT_ID.fullmatch(oidc.client_id):
            ctx.fail("oidc.client_id", f"{_quote(oidc.client_id)} {_CLIENT_ID_PROBLEM}")
        if oidc.client_id == builtin.device_client_id:
            ctx.fail(
                "oidc.client_id",
                f"{_quote(oidc.client_id)} is also builtin_provider.device_client_id:"
                " the two clients need different ids",
            )
        if len(oidc.client_secret) < _MIN_BUILTIN_CLIENT_SECRET:
            ctx.fail(
                "oidc.client_secret_file",
                "the built-in provider needs a client secret of at least"
                f" {_MIN_BUILTIN_CLIENT_SECRET} characters",
            )
    app_hosts = {app.external_host: app.name for app in apps}
    if oidc is not None and oidc.callback_host in app_hosts:
        ctx.fail(
            "oidc.callback_url",
            f"its host {_quote(oidc.callback_host)} is the host of app"
            f" {_quote(app_hosts[oidc.callback_host])}: use a host of its own (login.DOMAIN)",
        )
    if builtin is not None and builtin.host in app_hosts:
        ctx.fail(
            "builtin_provider.issuer",
            f"its host {_quote(builtin.host)} is the host of app"
            f" {_quote(app_hosts[builtin.host])}: use a host of its own (login.DOMAIN)",
        )

    return ServiceConfig(
        path=path,
        listen=listen,
        state_dir=state_dir,
        queue_timeout=queue_timeout,
        log_format=log_format,
        certificates=certificates,
        tunnel_listen=tunnel_listen,
        tunnel_cert=tunnel_cert,
        connector_ca=connector_ca,
        connector_ca_pem=connector_ca_pem,
        apps=tuple(apps),
        trusted_proxies=trusted_proxies,
        oidc=oidc,
        builtin_provider=builtin,
        risk=risk,
        locations=locations,
        policies=policies,
    )


def parse_connector_config(data: dict[str, Any], path: Path) -> ConnectorConfig:
    """
    Check an already parsed connector configuration.

    @param data: the parsed TOML document.
    @param path: the file it came from; relative paths are resolved against
        its directory.

    @raise ConfigError: if the configuration is invalid.
    """
    path = Path(path).absolute()
    ctx = _Context(str(path), path.parent)
    top = _Table(ctx, "", data, _CONNECTOR_TOP_KEYS)
    connector = top.table(
        "connector", _CONNECTOR_KEYS, "a [connector] table with service_host, ca, cert and key"
    )

    service_host = _dns_name(connector, "service_host")
    service_port = connector.integer("service_port", 8444, 1, 65535)
    service_address = _address(connector, "service_address", service_host)
    connections = connector.integer("connections", 4, 1, 64)
    capacity = connector.integer("capacity", 100, 1, 1000)
    ca, ca_pem = _ca_file(connector, "ca")
    cert = _certificate_files(connector, "cert", "key")
    ping_interval = connector.number("ping_interval", 15.0, 3600.0)
    log_format = connector.choice("log_format", _LOG_FORMATS, "text")

    return ConnectorConfig(
        path=path,
        service_host=service_host,
        service_port=service_port,
        service_address=service_address,
        connections=connections,
        capacity=capacity,
        ca=ca,
        ca_pem=ca_pem,
        cert=cert,
        ping_interval=ping_interval,
        log_format=log_format,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    file = str(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(file, "", f"cannot read: {_strerror(e)}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            file, "", f"invalid TOML: the file is not UTF-8 text (byte {e.start})"
        ) from None


# Checking tables and values


@attrs.frozen
class _Context:
    file: str
    base: Path

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(self.file, key, problem)


class _Missing:
    pass


_MISSING: Final = _Missing()


class _Table:
    """
    A TOML table being checked: rejects unknown keys up front, then hands out
    checked values by name.
    """

    def __init__(
        self, ctx: _Context, key: str, data: Mapping[str, object], known: tuple[str, ...]
    ) -> None:
        self.ctx = ctx
        self.where = key
        self._data = data
        for name in data:
            if name not in known:
                problem = "unknown key"
                close = difflib.get_close_matches(name, known, n=1)
                if close:
                    problem += f" (did you mean '{close[0]}'?)"
                ctx.fail(self.key(name), problem)

    def key(self, name: str) -> str:
        formatted = _format_key(name)
        return f"{self.where}.{formatted}" if self.where else formatted

    def fail(self, name: str, problem: str) -> NoReturn:
        self.ctx.fail(self.key(name), problem)

    def get(self, name: str) -> object:
        return self._data.get(name, _MISSING)

    def required(self, name: str, hint: str = "") -> object:
        value = self.get(name)
        if value is _MISSING:
            self.fail(name, f"is required ({hint})" if hint else "is required")
        return value

    def string(self, name: str, hint: str = "") -> str:
        return self._check_string(name, self.required(name, hint))

    def optional_string(self, name: str) -> str | None:
        value = self.get(name)
        return None if value is _MISSING else self._check_string(name, value)

    def _check_string(self, name: str, value: object) -> str:
        if not isinstance(value, str):
            self.fail(name, f"must be a string, not {_type_name(value)}")
        if not value:
            self.fail(name, "must not be empty")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, not {_type_name(value)}")
        return value

    def number(self, name: str, default: float, maximum: float) -> float:
        """A number of seconds, more than 0 and at most C{maximum}."""
        value = self.get(name)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(name, f"must be a number, not {_type_name(value)}")
        if not 0 < value <= maximum:
            self.fail(name, f"must be more than 0 and at most {maximum:g}, not {_number(value)}")
        return float(value)

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.get(name)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be an integer, not {_type_name(value)}")
        if not minimum <= value <= maximum:
            self.fail(name, f"must be from {minimum} to {maximum}, not {_number(value)}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            self.fail(name, f"must be a string, not {_type_name(value)}")
        if value not in choices:
            self.fail(name, f"must be {_or(choices)}, not {_quote(value)}")
        return value

    def name(self, name: str) -> str:
        value = self.string(name)
        if not _NAME.fullmatch(value):
            self.fail(
                name,
                f"{_quote(value)} is not a valid name (1 to 64 letters, digits, '-' or '_')",
            )
        return value

    def path(self, name: str, hint: str = "") -> Path:
        return self._check_path(name, self.string(name, hint))

    def _check_path(self, name: str, value: str) -> Path:
        if "\0" in value:
            self.fail(name, "must not contain a NUL character")
        return self.ctx.base / value

    def string_list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """An array of non-empty strings (may be empty)."""
        value = self.get(name)
        if value is _MISSING:
            return default
        if not isinstance(value, list):
            self.fail(name, f"must be an array of strings, not {_type_name(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.ctx.fail(
                    f"{self.key(name)}[{index}]", f"must be a string, not {_type_name(item)}"
                )
            if not item:
                self.ctx.fail(f"{self.key(name)}[{index}]", "must not be empty")
        return tuple(value)

    def optional_tables(self, name: str, known: tuple[str, ...]) -> list[_Table]:
        """An array of tables that may be absent or empty."""
        if self.get(name) is _MISSING or self.get(name) == []:
            return []
        return self.tables(name, known, "")

    def table(self, name: str, known: tuple[str, ...], hint: str) -> _Table:
        value = self.required(name, hint)
        if not isinstance(value, dict):
            self.fail(name, f"must be a table, not {_type_name(value)}")
        return _Table(self.ctx, self.key(name), value, known)

    def tables(self, name: str, known: tuple[str, ...], hint: str) -> list[_Table]:
        """An array of tables; at least one."""
        value = self.required(name, hint)
        if not isinstance(value, list):
            self.fail(name, f"must be an array of tables, not {_type_name(value)}")
        if not value:
            self.fail(name, "must have at least one entry")
        result = []
        for index, item in enumerate(value):
            key = f"{self.key(name)}[{index}]"
            if not isinstance(item, dict):
                self.ctx.fail(key, f"must be a table, not {_type_name(item)}")
            result.append(_Table(self.ctx, key, item, known))
        return result


def _app(table: _Table) -> AppConfig:
    name = table.name("name")
    external_url = _url(table, "external_url", external=True)
    internal_url = _url(table, "internal_url", external=False)
    connector_group = table.name("connector_group")
    pre_authentication = table.choice("pre_authentication", _PRE_AUTHENTICATION, "oidc")
    translate = table.boolean("translate_urls_in_headers", True)
    timeout = _backend_timeout(table)
    verify = table.boolean("verify_backend_tls", True)
    backend_ca: Path | None = None
    backend_ca_pem: bytes | None = None
    if table.get("backend_ca") is not _MISSING:
        backend_ca, backend_ca_pem = _ca_file(table, "backend_ca")
    assignment = Assignment(
        users=table.string_list("allowed_users"), groups=table.string_list("allowed_groups")
    )
    session_lifetime = table.integer("session_lifetime", 8 * 3600, 60, 30 * 24 * 3600)
    persistent = table.boolean("persistent_cookie", False)
    http_only = table.boolean("http_only_cookie", True)
    jwt_assertion = table.boolean("jwt_assertion", False)
    headers = _identity_headers(table)
    if pre_authentication == "passthrough":
        for key in ("allowed_users", "allowed_groups", "jwt_assertion"):
            if table.get(key) not in (_MISSING, [], False):
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
    )


def _identity_headers(table: _Table) -> tuple[tuple[str, str], ...]:
    """C{[apps.headers]}: header name = claim name."""
    value = table.get("headers")
    if value is _MISSING:
        return ()
    if not isinstance(value, dict):
        table.fail("headers", f"must be a table of header = claim, not {_type_name(value)}")
    where = table.key("headers")
    seen: dict[str, str] = {}
    result = []
    for header, claim in value.items():
        key = f"{where}.{_format_key(header)}"
        if not _HEADER_NAME.fullmatch(header):
            table.ctx.fail(key, "is not a valid header name (letters, digits and '-')")
        normal = header.lower().replace("_", "-")
        if normal in _RESERVED_HEADERS or normal.startswith("x-appproxy-"):
            table.ctx.fail(key, "is set by appproxy itself and cannot carry a claim")
        if normal in seen:
            table.ctx.fail(key, f"is the same header as {_quote(seen[normal])}")
        seen[normal] = header
        if not isinstance(claim, str):
            table.ctx.fail(key, f"must be a claim name (a string), not {_type_name(claim)}")
        if not claim:
            table.ctx.fail(key, "must not be empty")
        result.append((header, claim))
    return tuple(result)


def _https_url(table: _Table, name: str, *, path: bool) -> str:
    """An https URL without query, fragment or userinfo; lowercase host."""
    value = table.string(name)
    if any(char.isspace() or not char.isprintable() for char in value) or not value.isascii():
        table.fail(name, "must be an ASCII URL without whitespace or control characters")
    try:
        parts = urlsplit(value)
    except ValueError:
        table.fail(name, f"{_quote(value)} is not a valid URL")
    if "@" in parts.netloc:
        # Not echoed: it may hold a password.
        table.fail(name, "must not contain a user name or password")
    if parts.scheme != "https":
        table.fail(name, f"{_quote(value)} is not an https URL")
    if not parts.hostname:
        table.fail(name, f"{_quote(value)} has no host name")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        table.fail(name, f"{_quote(value)} must not have a query or fragment")
    host = parts.hostname.lower()
    if not (_is_ipv6_address(host) if ":" in host else _URL_HOST.fullmatch(host)):
        table.fail(name, f"{_quote(value)} has an invalid host name")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        table.fail(name, f"{_quote(value)} has an invalid port (must be from 1 to 65535)")
    if path and not parts.path.startswith("/"):
        table.fail(name, f"{_quote(value)} needs a path (for example /.appproxy/callback)")
    netloc = host if port in (None, 443) else f"{host}:{port}"
    if ":" in host:
        netloc = f"[{host}]" if port in (None, 443) else f"[{host}]:{port}"
    return f"https://{netloc}{parts.path}"


def _oidc(top: _Table) -> OidcConfig:
    table = top.table("oidc", _OIDC_KEYS, "")
    issuer = _https_url(table, "issuer", path=False)
    client_id = table.string("client_id")
    secret_file = table.path("client_secret_file")
    secret = _read_file(table, "client_secret_file", secret_file, "client secret")
    try:
        client_secret = secret.decode("utf-8").strip()
    except UnicodeDecodeError:
        table.fail("client_secret_file", f"{_quote(str(secret_file))} is not UTF-8 text")
    if not client_secret:
        table.fail("client_secret_file", f"{_quote(str(secret_file))} is empty")
    client_auth = table.choice("client_auth", _CLIENT_AUTH_METHODS, "client_secret_basic")
    callback_url = _https_url(table, "callback_url", path=True)
    scopes = table.string_list("scopes", ("openid", "profile", "email"))
    for index, scope in enumerate(scopes):
        if not all("!" <= char <= "~" and char not in '"\\' for char in scope):
            table.ctx.fail(
                f"{table.key('scopes')}[{index}]",
                f"{_quote(scope)} is not a valid scope (printable ASCII, no spaces,"
                " quotes or backslashes)",
            )
    if "openid" not in scopes:
        table.fail("scopes", "must include 'openid'")
    algorithms = table.string_list("algorithms", ("RS256", "PS256", "ES256"))
    if not algorithms:
        table.fail("algorithms", "must name at least one algorithm")
    for index, algorithm in enumerate(algorithms):
        if algorithm not in _ID_TOKEN_ALGORITHMS:
            table.ctx.fail(
                f"{table.key('algorithms')}[{index}]",
                f"{_quote(algorithm)} is not allowed (asymmetric signatures only:"
                f" {', '.join(_ID_TOKEN_ALGORITHMS)})",
            )
    provider_ca: Path | None = None
    provider_ca_pem: bytes | None = None
    if table.get("provider_ca") is not _MISSING:
        provider_ca, provider_ca_pem = _ca_file(table, "provider_ca")
    provider_address = table.optional_string("provider_address")
    if provider_address is not None:
        _host_and_port(table, "provider_address", provider_address)
    mfa_amr = table.string_list("mfa_amr", MfaRule().amr)
    mfa_acr = table.string_list("mfa_acr", MfaRule().acr)
    return OidcConfig(
        issuer=issuer,
        client_id=client_id,
        client_secret_file=secret_file,
        client_secret=client_secret,
        client_auth=client_auth,
        callback_url=callback_url,
        scopes=scopes,
        username_claim=table.optional_string("username_claim") or "preferred_username",
        groups_claim=table.optional_string("groups_claim") or "groups",
        algorithms=algorithms,
        clock_skew=table.integer("clock_skew", 60, 0, 600),
        provider_ca=provider_ca,
        provider_ca_pem=provider_ca_pem,
        provider_address=provider_address,
        mfa=MfaRule(amr=mfa_amr, acr=mfa_acr),
        step_up_acr_values=table.optional_string("step_up_acr_values") or "mfa",
        jwks_refetch_interval=table.number("jwks_refetch_interval", 30.0, 3600.0),
    )


def _host_and_port(table: _Table, name: str, value: str) -> None:
    """
    C{host}, C{host:port}, C{IPv4[:port]}, C{[IPv6][:port]} or a bare
    C{IPv6}: the forms L{appproxy.oidc.client.parse_provider_address} takes.
    """
    port = ""
    if value.startswith("["):
        host, close, rest = value[1:].partition("]")
        valid = bool(close) and _is_ipv6_address(host) and (not rest or rest.startswith(":"))
        if rest:
            port = rest[1:]
            valid = valid and bool(port)
    elif value.count(":") > 1:
        valid = _is_ipv6_address(value)
    else:
        host, colon, port = value.partition(":")
        valid = (_is_ip_address(host) or _is_dns_name(host.lower())) and bool(port or not colon)
    if port and not (re.fullmatch("[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
        valid = False
    if not valid:
        table.fail(
            name,
            f"{_quote(value)} is not a host name or address with an optional port"
            " (for example 127.0.0.1:8443)",
        )


def _builtin_provider(top: _Table, state_dir: Path) -> BuiltinProviderConfig:
    table = top.table("builtin_provider", _BUILTIN_PROVIDER_KEYS, "")
    issuer = _https_url(table, "issuer", path=False).rstrip("/")
    if urlsplit(issuer).path:
        table.fail("issuer", "must be a host name only (https://login.example.com), no path")
    users_file = table.optional_string("users_file") or "users.json"
    if "\0" in users_file:
        table.fail("users_file", "must not contain a NUL character")
    device_client_id = table.optional_string("device_client_id") or "appproxy-connector"
    if not _CLIENT_ID.fullmatch(device_client_id):
        table.fail("device_client_id", f"{_quote(device_client_id)} {_CLIENT_ID_PROBLEM}")
    return BuiltinProviderConfig(
        issuer=issuer,
        users_file=state_dir / users_file,
        device_client_id=device_client_id,
    )


def _risk(top: _Table) -> RiskConfig:
    table = top.table("risk", _RISK_KEYS, "")
    window = table.get("failed_sign_in_window")
    if isinstance(window, int | float) and not isinstance(window, bool) and 0 < window < 1:
        # The built-in provider counts whole seconds.
        table.fail(
            "failed_sign_in_window", f"must be at least 1 and at most 86400, not {_number(window)}"
        )
    anonymizers = table.path("anonymizers") if table.get("anonymizers") is not _MISSING else None
    if anonymizers is not None and not anonymizers.is_file():
        table.fail("anonymizers", f"{_quote(str(anonymizers))} is not a readable file")
    return RiskConfig(
        failed_sign_in_limit=table.integer("failed_sign_in_limit", 5, 1, 1000),
        failed_sign_in_window=table.number("failed_sign_in_window", 600.0, 86400.0),
        anonymizers=anonymizers,
    )


def _network(
    table: _Table, name: str, index: int, text: str
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        table.ctx.fail(
            f"{table.key(name)}[{index}]",
            f"{_quote(text)} is not an IP address or network (for example 10.0.0.0/8)",
        )


def _locations(top: _Table) -> tuple[NamedLocation, ...]:
    result: list[NamedLocation] = []
    for table in top.optional_tables("locations", _LOCATION_KEYS):
        name = table.name("name")
        if any(location.name == name for location in result):
            table.fail("name", f"{_quote(name)} is already used by another location")
        texts = table.string_list("networks")
        if not texts:
            table.fail("networks", "must list at least one network (for example 10.0.0.0/8)")
        networks = tuple(_network(table, "networks", i, text) for i, text in enumerate(texts))
        result.append(NamedLocation(name=name, networks=networks))
    return tuple(result)


def _policies(top: _Table, apps: set[str], locations: set[str]) -> tuple[Policy, ...]:
    result: list[Policy] = []
    known_locations = {
        location: NamedLocation(name=location, networks=()) for location in locations
    }
    for table in top.optional_tables("policies", _POLICY_KEYS):
        name = table.name("name")
        if any(policy.name == name for policy in result):
            table.fail("name", f"{_quote(name)} is already used by another policy")
        for key in ("apps", "exclude_apps"):
            for index, app in enumerate(table.string_list(key)):
                if app != "*" and app not in apps:
                    table.ctx.fail(
                        f"{table.key(key)}[{index}]",
                        f"there is no app named {_quote(app)} (use '*' for every app)",
                    )
        risks = table.string_list("risks")
        for index, risk in enumerate(risks):
            if risk not in _RISK_SIGNALS:
                table.ctx.fail(
                    f"{table.key('risks')}[{index}]",
                    f"must be {_or(_RISK_SIGNALS)}, not {_quote(risk)}",
                )
        grant_value = table.get("grant")
        grant = None if grant_value is _MISSING else table.choice("grant", _GRANTS, "block")
        frequency_value = table.get("sign_in_frequency")
        frequency = (
            None
            if frequency_value is _MISSING
            else table.integer("sign_in_frequency", 3600, 60, 90 * 24 * 3600)
        )
        if grant is None and frequency is None:
            table.fail("grant", "is required ('block' or 'mfa'), unless sign_in_frequency is set")
        policy = Policy(
            name=name,
            apps=table.string_list("apps", ("*",)),
            exclude_apps=table.string_list("exclude_apps"),
            users=table.string_list("users"),
            groups=table.string_list("groups"),
            exclude_users=table.string_list("exclude_users"),
            exclude_groups=table.string_list("exclude_groups"),
            locations=table.string_list("locations", ("*",)),
            exclude_locations=table.string_list("exclude_locations"),
            risks=risks,
            grant=grant,
            sign_in_frequency=frequency,
        )
        missing = unknown_locations(policy, known_locations)
        if missing:
            key = "locations" if missing[0] in policy.locations else "exclude_locations"
            table.fail(
                key,
                f"there is no [[locations]] entry named {_quote(missing[0])}"
                " (use '*' for anywhere)",
            )
        result.append(policy)
    return tuple(result)


# Files


def _read_file(table: _Table, name: str, path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        table.fail(name, f"cannot read {what} file {_quote(str(path))}: {_strerror(e)}")


def _load_certificates(table: _Table, name: str, path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certificates = []
    if not certificates:
        table.fail(name, f"{_quote(str(path))} does not contain a PEM certificate")
    return certificates


def _ca_file(table: _Table, name: str) -> tuple[Path, bytes]:
    """A file of one or more PEM CA certificates: its path and content."""
    path = table.path(name)
    pem = _read_file(table, name, path, "CA certificate")
    _load_certificates(table, name, path, pem)
    return path, pem


def _certificate_files(table: _Table, cert_name: str, key_name: str) -> CertificateFiles:
    """A certificate chain and the private key of its leaf certificate."""
    cert_path = table.path(cert_name)
    key_path = table.path(key_name)
    cert_pem = _read_file(table, cert_name, cert_path, "certificate")
    leaf = _load_certificates(table, cert_name, cert_path, cert_pem)[0]
    key_pem = _read_file(table, key_name, key_path, "key")
    shown = _quote(str(key_path))
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        table.fail(key_name, f"{shown} is encrypted; appproxy needs an unencrypted key")
    except (ValueError, UnsupportedAlgorithm):
        table.fail(key_name, f"{shown} does not contain a PEM private key")
    try:
        matches = _public_bytes(private_key.public_key()) == _public_bytes(leaf.public_key())
    except (ValueError, UnsupportedAlgorithm):
        matches = False
    if not matches:
        table.fail(
            key_name,
            f"{shown} does not match the certificate in {_quote(str(cert_path))}",
        )
    return CertificateFiles(cert=cert_path, key=key_path, cert_pem=cert_pem, key_pem=key_pem)


def _public_bytes(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# Endpoints, URLs, host names


def _endpoint(table: _Table, name: str, tls_problem: str) -> str:
    """
    A Twisted server endpoint string for a listener, checked without opening
    anything.
    """
    value = table.string(name)
    shown = _quote(value)
    parsed = _parse_endpoint(value)
    if parsed is None:
        table.fail(name, f"{shown} is not a valid endpoint: it ends with a lone backslash")
    args, kwargs = parsed
    kind = args[0]
    if kind.lower() in ("ssl", "tls"):
        table.fail(name, tls_problem)
    if kind not in _ENDPOINT_PARAMS:
        if len(args) == 1 and not kwargs:
            hint = f" (did you mean 'tcp:{kind}'?)" if _DIGITS.fullmatch(kind) else ""
            table.fail(name, f"{shown} is not an endpoint string{hint}")
        table.fail(
            name,
            f"{shown} is not a valid endpoint: unknown type {_quote(kind)}"
            " (use tcp:, tcp6:, unix: or systemd:)",
        )

    def invalid(problem: str) -> NoReturn:
        table.fail(name, f"{shown} is not a valid endpoint: {problem}")

    params = _ENDPOINT_PARAMS[kind]
    positional = args[1:]
    if len(positional) > len(params):
        invalid(f"too many arguments for a {kind}: endpoint")
    given = dict(zip(params, positional, strict=False))
    for option, option_value in kwargs.items():
        if option not in params:
            invalid(f"unknown option {_quote(option)} (known: {', '.join(params)})")
        if option in given:
            invalid(f"{option} is given twice")
        given[option] = option_value

    def integer(option: str, maximum: int | None = None) -> None:
        text = given.get(option)
        if text is None:
            return
        if not re.fullmatch("[0-9]{1,9}", text) or (maximum is not None and int(text) > maximum):
            limit = f"a number from 0 to {maximum}" if maximum is not None else "a number"
            invalid(f"{option} must be {limit}, not {_quote(text)}")

    if kind in ("tcp", "tcp6"):
        if "port" not in given:
            invalid(f"it needs a port number (for example '{kind}:443')")
        integer("port", 65535)
        integer("backlog")
    elif kind == "unix":
        if not given.get("address"):
            invalid("it needs a socket path (for example 'unix:/run/appproxy.sock')")
        integer("backlog")
        if "mode" in given and not re.fullmatch("[0-7]{1,4}", given["mode"]):
            invalid(f"mode must be octal digits, not {_quote(given['mode'])}")
        if given.get("lockfile", "0") not in ("0", "1"):
            invalid(f"lockfile must be 0 or 1, not {_quote(given['lockfile'])}")
    else:
        domain = given.get("domain")
        if not domain:
            invalid("it needs a domain (for example 'systemd:domain=INET:index=0')")
        if not re.fullmatch("[A-Z0-9_]+", domain) or not hasattr(socket, f"AF_{domain}"):
            invalid(f"unknown address family {_quote(domain)} (for example INET or INET6)")
        if ("index" in given) == ("name" in given):
            invalid("it needs exactly one of index= and name=")
        integer("index")
    return value


def _parse_endpoint(value: str) -> tuple[list[str], dict[str, str]] | None:
    """
    Split an endpoint string as Twisted does: C{:} separates arguments,
    C{key=value} arguments are keyword arguments, a backslash escapes the next
    character.  Returns L{None} if the string ends with a lone backslash.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    pieces: list[str] = []
    current: list[str] = []

    def add() -> None:
        if len(pieces) == 1:
            args.append(pieces[0])
        else:
            kwargs[pieces[0]] = pieces[1]

    ops = ":="
    chars = iter(value)
    for char in chars:
        if char in ops:
            pieces.append("".join(current))
            current = []
            if char == ":":
                add()
                pieces = []
                ops = ":="
            else:
                ops = ":"
        elif char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                return None
            current.append(escaped)
        else:
            current.append(char)
    pieces.append("".join(current))
    add()
    return args, kwargs


def _url(table: _Table, name: str, *, external: bool) -> str:
    """
    An external (https) or internal (http or https) base URL, normalised:
    lowercase scheme and host, default port elided, path ending in C{/}.
    """
    value = table.string(name)
    if any(char.isspace() or not char.isprintable() for char in value):
        table.fail(name, "must not contain whitespace or control characters")
    if not value.isascii():
        table.fail(
            name,
            "must contain only ASCII characters (write international host names"
            " in their xn-- form and percent-encode paths)",
        )
    try:
        parts = urlsplit(value)
    except ValueError:
        table.fail(name, "is not a valid URL")
    if "@" in parts.netloc:
        # Not echoed: it may hold a password.
        table.fail(name, "must not contain a user name or password")
    shown = _quote(value)
    schemes: tuple[str, ...] = ("https",) if external else ("http", "https")
    if parts.scheme not in schemes:
        kind = "an https" if external else "an http or https"
        table.fail(name, f"{shown} is not {kind} URL")
    if "?" in value:
        table.fail(name, f"{shown} must not have a query ('?...')")
    if "#" in value:
        table.fail(name, f"{shown} must not have a fragment ('#...')")
    if not parts.netloc:
        table.fail(name, f"{shown} has no host name")

    if parts.netloc.startswith("["):
        host_text, _, port_part = parts.netloc[1:].partition("]")
        try:
            if "%" in host_text:
                raise ValueError("scoped address")
            host = f"[{ipaddress.IPv6Address(host_text).compressed}]"
        except ValueError:
            table.fail(name, f"{shown} has an invalid IPv6 address")
    else:
        host_text, colon, port_text = parts.netloc.partition(":")
        port_part = colon + port_text
        host = host_text.lower()
        if not host:
            table.fail(name, f"{shown} has no host name")
        if not _URL_HOST.fullmatch(host):
            table.fail(name, f"{shown} has an invalid host name")
    port: int | None = None
    if port_part:
        port_text = port_part[1:]
        if (
            not port_part.startswith(":")
            or not re.fullmatch("[0-9]{1,5}", port_text)
            or not 1 <= int(port_text) <= 65535
        ):
            table.fail(name, f"{shown} has an invalid port (must be from 1 to 65535)")
        port = int(port_text)

    path = parts.path or "/"
    if not path.endswith("/"):
        table.fail(name, f"{shown} must end with '/' (its path is a prefix)")
    if any(segment in (".", "..") for segment in path.split("/")):
        table.fail(name, f"{shown} must not contain '.' or '..' path segments")

    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        host += f":{port}"
    return f"{parts.scheme}://{host}{path}"


def _is_dns_name(value: str) -> bool:
    return len(value) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in value.split("."))


def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_ipv6_address(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return "%" not in value


def _dns_name(table: _Table, name: str) -> str:
    value = table.string(name)
    if _is_ip_address(value) or _is_ip_address(value.strip("[]")):
        table.fail(
            name,
            f"must be a DNS name, not an IP address ({_quote(value)}): the service's"
            " certificate name is verified; put the address in service_address",
        )
    lowered = value.lower()
    if not lowered.isascii() or not _is_dns_name(lowered):
        table.fail(
            name,
            f"{_quote(value)} is not a valid DNS name (letters, digits, '-' and '.';"
            " labels of 1 to 63 characters)",
        )
    return lowered


def _address(table: _Table, name: str, default: str) -> str:
    """A host name or an IP address (brackets around IPv6 optional)."""
    value = table.optional_string(name)
    if value is None:
        return default
    unbracketed = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return ipaddress.ip_address(unbracketed).compressed
    except ValueError:
        pass
    lowered = value.lower()
    if not lowered.isascii() or not _is_dns_name(lowered):
        table.fail(name, f"{_quote(value)} is not a valid host name or IP address")
    return lowered


# Formatting


def _type_name(value: object) -> str:
    """The TOML name of a value's type."""
    names: tuple[tuple[type, str], ...] = (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (datetime.datetime, "datetime"),
        (datetime.date, "date"),
        (datetime.time, "time"),
    )
    for kind, kind_name in names:
        if isinstance(value, kind):
            return kind_name
    return type(value).__name__


def _quote(value: str) -> str:
    """A value shown in a message: quoted, escaped, and cut if very long."""
    if len(value) > _MAX_SHOWN:
        return repr(value[:_MAX_SHOWN]) + "..."
    return repr(value)


def _number(value: float) -> str:
    """A number shown in a message (Python refuses to print huge integers)."""
    if isinstance(value, int) and abs(value) >= 10**15:
        return "a very large number"
    return repr(value)


def _or(choices: Iterable[str]) -> str:
    quoted = [f"'{choice}'" for choice in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _format_key(name: str) -> str:
    """A key as written in TOML: bare if possible, else a quoted basic string."""
    if _BARE_KEY.fullmatch(name):
        return name
    out = ['"']
    for char in name:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(f"\\U{ord(char):08X}")
    out.append('"')
    return "".join(out)


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _strerror(error: OSError) -> str:
    return error.strerror or str(error)


def _backend_timeout(table: _Table) -> float:
    """
    C{backend_timeout}: "default" (85 s), "long" (180 s), or a number of
    seconds from 1 to 3600 for apps that need something else.
    """
    value = table.get("backend_timeout")
    if isinstance(value, str):
        return BACKEND_TIMEOUTS[table.choice("backend_timeout", tuple(BACKEND_TIMEOUTS), "default")]
    if value is _MISSING:
        return BACKEND_TIMEOUTS["default"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        table.fail(
            "backend_timeout",
            f'must be "default", "long" or a number of seconds, not {_type_name(value)}',
        )
    return table.number("backend_timeout", BACKEND_TIMEOUTS["default"], 3600)
