"""
The configuration as the daemons use it: frozen attrs classes, and
L{ConfigError}, the one-line complaint about a file.

The schema is documented in C{docs/configuration.md}; the classes are built by
L{appproxy.config.service} and L{appproxy.config.connector}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import SplitResult, urlsplit

import attrs

from appproxy.access.policy import Assignment, MfaRule, NamedLocation, Policy
from appproxy.config._messages import one_line
from appproxy.config.admin_model import AdminConfig, EventsConfig

#: Seconds to wait for an internal app's response headers, by C{backend_timeout}.
BACKEND_TIMEOUTS: Final[Mapping[str, float]] = {"default": 85.0, "long": 180.0}

#: The port a URL of each scheme means when it names none.
DEFAULT_PORTS: Final[Mapping[str, int]] = {"http": 80, "https": 443}

#: Values of C{log_format}.
LOG_FORMATS: Final = ("text", "json")


@attrs.define(auto_exc=True)
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

    def __str__(self) -> str:
        parts = [self.file, self.key, self.problem] if self.key else [self.file, self.problem]
        return ": ".join(one_line(part) for part in parts)


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
    #: Whether WebSocket handshakes are passed to the app.
    websocket: bool = True
    #: Origins besides the app's external one whose pages may open its
    #: WebSockets (C{scheme://host[:port]}, lowercase, default port elided).
    websocket_origins: tuple[str, ...] = ()
    #: Seconds an open WebSocket may carry no byte either way (pings count).
    websocket_idle_timeout: float = 900.0
    #: WebSockets open to the app at once (per service process).
    max_websockets: int = 1000
    # The URLs split once, at construction (and by attrs.evolve), not on
    # every access to the properties below: the request path reads them.
    _external: SplitResult = attrs.field(init=False, eq=False, repr=False)
    _internal: SplitResult = attrs.field(init=False, eq=False, repr=False)

    @_external.default
    def _split_external(self) -> SplitResult:
        return urlsplit(self.external_url)

    @_internal.default
    def _split_internal(self) -> SplitResult:
        return urlsplit(self.internal_url)

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
        return self._external.netloc

    @property
    def external_origin(self) -> str:
        """C{https://host[:port]}: the app's pages' origin, as browsers send it in C{Origin}."""
        parts = self._external
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def external_path(self) -> str:
        """The external URL's path, ending in C{/}."""
        return self._external.path

    @property
    def internal_scheme(self) -> str:
        """C{"http"} or C{"https"}."""
        return self._internal.scheme

    @property
    def internal_netloc(self) -> str:
        """C{host} or C{host:port} (default port elided; IPv6 literal bracketed)."""
        return self._internal.netloc

    @property
    def internal_host(self) -> str:
        """The internal host name or IP address, without brackets."""
        return self._internal.hostname or ""

    @property
    def internal_port(self) -> int:
        """The internal port, defaulted from the scheme."""
        parts = self._internal
        return parts.port or DEFAULT_PORTS[parts.scheme]

    @property
    def internal_path(self) -> str:
        """The internal URL's path, ending in C{/}."""
        return self._internal.path


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
class ClientLimits:
    """
    How long a public client may take to send its request (C{[service]}
    C{client_*}); enforced by L{appproxy.frontend.deadlines}.
    """

    header_timeout: float = 30.0
    """Seconds from a request's first byte (a connection's first request:
    from the connection) to the end of its header block."""
    body_min_rate: int = 512
    """Bytes per second a request body must average after an allowance of
    C{header_timeout} seconds (0: no minimum)."""
    header_connections_per_address: int = 256
    """Connections one client address may have reading a header block at once."""
    websockets_per_user: int = 50
    """WebSockets one signed-in user may have open at once (per service process)."""
    h2_empty_data_burst: int = 100
    """Empty DATA frames (not ending their stream) an HTTP/2 connection may send at once."""
    h2_empty_data_rate: float = 10.0
    """... and per second after that."""
    h2_reset_burst: int = 1000
    """Streams an HTTP/2 client may reset at once (Rapid Reset, CVE-2023-44487)."""
    h2_reset_rate: float = 33.0
    """... and per second after that."""


@attrs.frozen(kw_only=True)
class LimitsConfig:
    """
    The abuse limits of C{[limits]} (the data-path ones are L{ClientLimits});
    enforced by L{appproxy.frontend.limits} and L{appproxy.daemon.plain_http}.
    A rate of 0 turns its budget off.
    """

    anonymous_rate: float = 50.0
    anonymous_burst: int = 500
    signin_rate: float = 5.0
    signin_burst: int = 100
    signed_in_rate: float = 200.0
    signed_in_burst: int = 2000
    tracked_addresses: int = 100_000
    """Addresses whose buckets are kept, per budget (L{appproxy.http.ratelimit.TokenBuckets})."""
    connections_per_address: int = 512
    connections_total: int = 10_000
    queued_per_group: int = 10_000


@attrs.frozen(kw_only=True)
class ConnectorsConfig:
    """Connector registration, certificates and inventory (C{[connectors]})."""

    device_client_id: str | None = None
    """The client id ID tokens from the device flow are issued to (their
    audience); L{None}: registration with an administrator's sign-in is off."""
    admin_claim: str = "roles"
    admin_value: str = "Application Administrator"
    """The claim that must contain this value (a string or a list of strings)."""
    certificate_days: int = 365
    renew_after_days: int = 180
    inactive_after_days: int = 10
    config_interval: float = 120.0
    """Seconds between two configuration pulls of a connector."""
    connections: int | None = None
    """Tunnel connections each connector keeps; L{None}: the connector's own."""


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """The Prometheus metrics listener (C{[metrics]})."""

    listen: str | None = None
    """A server endpoint string (plain HTTP, C{/metrics} only); L{None}: off."""


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
    #: The connector CA's key: without it, registration and renewal are off.
    connector_ca_key: Path | None = None
    connector_ca_key_pem: bytes | None = attrs.field(default=None, repr=False)
    connectors: ConnectorsConfig = attrs.field(factory=ConnectorsConfig)
    apps: tuple[AppConfig, ...]
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    oidc: OidcConfig | None = None
    builtin_provider: BuiltinProviderConfig | None = None
    risk: RiskConfig = attrs.field(factory=RiskConfig)
    locations: tuple[NamedLocation, ...] = ()
    policies: tuple[Policy, ...] = ()
    client_limits: ClientLimits = attrs.field(factory=ClientLimits)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)
    admin: AdminConfig = attrs.field(factory=AdminConfig)
    events: EventsConfig = attrs.field(factory=EventsConfig)
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)

    @property
    def login_hosts(self) -> frozenset[str]:
        """Hosts the service answers itself: the callback and built-in provider."""
        hosts = set()
        if self.oidc is not None:
            hosts.add(self.oidc.callback_host)
        if self.builtin_provider is not None:
            hosts.add(self.builtin_provider.host)
        return frozenset(hosts)


#: How the connector trusts the service (C{connector.toml} C{service_trust}).
SERVICE_TRUSTS = ("ca", "system")


@attrs.frozen(kw_only=True)
class ConnectorConfig:
    """The connector's configuration (C{connector.toml})."""

    path: Path
    service_host: str
    service_port: int = 8444
    service_address: str
    connections: int = 4
    capacity: int = 100
    websocket_capacity: int = 250
    service_trust: str = "ca"
    """C{ca}: the service's certificate must chain to C{ca}; C{system}: to the
    system trust store (a publicly trusted certificate)."""
    ca: Path | None
    """The connector CA (L{None}: not given, allowed with C{service_trust = "system"})."""
    ca_pem: bytes | None = attrs.field(repr=False)
    cert: CertificateFiles
    ping_interval: float = 15.0
    log_format: str = "text"

    @property
    def service_ca_pem(self) -> bytes | None:
        """The CA the service's certificate must chain to; L{None}: the system trust store."""
        return None if self.service_trust == "system" else self.ca_pem
