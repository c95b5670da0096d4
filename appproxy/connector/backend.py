"""
The connector's HTTP client for internal applications.

One L{twisted.web.client.Agent} per application, each with its own persistent
connection pool and TLS policy (the app's CA bundle, the system trust store,
or, only when an administrator said C{verify_backend_tls = false}, none).
Redirects are never followed: they go back to the user, translated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from weakref import WeakKeyDictionary

import attrs
from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import Certificate, CertificateOptions, trustRootFromCertificates
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol, ParseError
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
    _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from appproxy.http.redact import redact_query
from appproxy.tunnel.outbound import hold_writes, release_writes

#: Idle persistent connections kept per internal host.
MAX_PERSISTENT_PER_HOST = 64
#: Seconds an idle persistent connection is kept.
IDLE_CONNECTION_TIMEOUT = 60
#: Seconds to establish a TCP connection to the internal app.
CONNECT_TIMEOUT = 10


@attrs.frozen
class BackendApp:
    """
    What the service told this connector about one application.
    """

    name: str
    verify_tls: bool = True
    ca_pem: str | None = None
    timeout: float = 85.0


def parse_settings(document: Any) -> dict[str, BackendApp]:
    """
    Parse the settings the service pushes (see
    L{appproxy.tunnel.service.connector_settings}).

    @raise ValueError: the document is not what the service sends.
    """
    if not isinstance(document, dict) or not isinstance(document.get("apps"), dict):
        raise ValueError("settings must be an object with an 'apps' object")
    apps: dict[str, BackendApp] = {}
    for name, item in document["apps"].items():
        if not isinstance(item, dict):
            raise ValueError(f"settings for app {name!r} must be an object")
        verify = item.get("verify_tls", True)
        ca_pem = item.get("ca_pem")
        timeout = item.get("timeout", 85.0)
        if not isinstance(verify, bool):
            raise ValueError(f"apps.{name}.verify_tls must be a boolean")
        if ca_pem is not None and not isinstance(ca_pem, str):
            raise ValueError(f"apps.{name}.ca_pem must be a string")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"apps.{name}.timeout must be a positive number")
        apps[name] = BackendApp(name, verify, ca_pem, float(timeout))
    return apps


@implementer(IOpenSSLClientConnectionCreator)
@attrs.define(eq=False)
class _UnverifiedTLS:
    """
    TLS to an internal app whose certificate is deliberately not checked
    (C{verify_backend_tls = false}).  SNI is still sent.
    """

    _hostname: bytes
    _context: SSL.Context = attrs.field(
        init=False, factory=lambda: CertificateOptions(verify=False).getContext()
    )

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self._hostname)
        connection.set_connect_state()
        return connection


@implementer(IPolicyForHTTPS)
class _UnverifiedPolicy:
    def creatorForNetloc(self, hostname: bytes, port: int) -> _UnverifiedTLS:
        return _UnverifiedTLS(hostname)


def _split_pem(bundle: str) -> list[bytes]:
    marker = "-----END CERTIFICATE-----"
    parts = [p + marker for p in bundle.split(marker) if "-----BEGIN CERTIFICATE-----" in p]
    return [p.strip().encode("ascii") for p in parts]


def tls_policy(app: BackendApp) -> IPolicyForHTTPS:
    if not app.verify_tls:
        return _UnverifiedPolicy()
    if app.ca_pem:
        certificates = [Certificate.loadPEM(pem) for pem in _split_pem(app.ca_pem)]
        return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(certificates))
    return BrowserLikePolicyForHTTPS()


@implementer(IAgentEndpointFactory)
@attrs.define(eq=False)
class _CachedEndpoints:
    """
    One endpoint per internal host, made once: the Agent would otherwise
    build a new endpoint (and IDNA-encode the host name) for every request,
    even those served from the connection pool.
    """

    reactor: Any
    policy: IPolicyForHTTPS
    _endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = attrs.field(
        init=False, factory=dict
    )

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            host = uri.host.decode("ascii")
            endpoint = HostnameEndpoint(self.reactor, host, uri.port, timeout=CONNECT_TIMEOUT)
            if uri.scheme == b"https":
                creator = self.policy.creatorForNetloc(uri.host, uri.port)
                endpoint = wrapClientTLS(creator, endpoint)
            elif uri.scheme != b"http":
                raise SchemeNotSupported(f"unsupported scheme {uri.scheme!r}")
            self._endpoints[key] = endpoint
        return endpoint


#: The Connection header's tokens of each backend response (see
#: L{connection_tokens}).  The values must not refer to their keys, or the
#: entries would never go: a parser refers to its request and response.
_TOKENS: WeakKeyDictionary[Any, frozenset[bytes]] = WeakKeyDictionary()


def _tokens(conn_headers: object) -> frozenset[bytes]:
    if not isinstance(conn_headers, Headers):
        return frozenset()
    return frozenset(
        token.strip().lower()
        for value in conn_headers.getRawHeaders(b"connection", [])
        for token in value.split(b",")
        if token.strip()
    )


class _ParserKeepingProtocol(HTTP11ClientProtocol):
    """
    Twisted's HTTP/1.1 client, noting the tokens of each response's
    C{Connection} header: its parser keeps that header (with Keep-Alive,
    Transfer-Encoding, ...) in its C{connHeaders}, out of C{response.headers}.
    """

    def dataReceived(self, data: bytes) -> None:
        # What the backend sent goes down the tunnel in as few frames and
        # writes as it can: a small response's head, body and end in one
        # write, its body and END_STREAM in one DATA frame.
        hold_writes()
        try:
            super().dataReceived(data)
        finally:
            release_writes()

    def request(self, request: Any) -> Deferred[IResponse]:
        finished: Deferred[IResponse] = super().request(request)
        parser = getattr(self, "_parser", None)
        if parser is not None:
            finished.addCallback(_note_tokens, parser)
        return finished


def _note_tokens(response: IResponse, parser: object) -> IResponse:
    if tokens := _tokens(getattr(parser, "connHeaders", None)):
        _TOKENS[response] = tokens
    return response


def connection_tokens(response: IResponse) -> frozenset[bytes]:
    """
    The lowercased tokens of a backend response's C{Connection} header: the
    headers it names are hop-by-hop (RFC 9110 7.6.1) and must not reach the
    user.  Twisted's client does not put C{Connection} in
    C{response.headers}; L{_ParserKeepingProtocol} notes them.
    """
    return _TOKENS.get(response, frozenset())


class _QuietClientFactory(_HTTP11ClientFactory):
    # "Starting factory _HTTP11ClientFactory(<function ... at 0x...>, ...)"
    # per connection says nothing to an operator.
    noisy = False

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _ParserKeepingProtocol(self._quiescentCallback)


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory


class BackendError(Exception):
    """
    Why an internal app could not be reached.

    @ivar status: 502 or 504.
    @ivar kind: a short code for the service (C{backend-refused}, ...): the
        service's error page says what happened, in the user's terms, from it.
    @ivar detail: a sentence for the logs of the connector and the service;
        it names the internal URL, so it is never shown to the user.
    """

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


def classify_failure(failure: Failure, url: str, timeout: float) -> BackendError:
    """
    Turn a failed backend request into an error for the service: a kind the
    user is told about, and the detail for the logs (the URL's query
    values hidden: they may be secrets).
    """
    url = redact_query(url)
    exc = failure.value
    if isinstance(exc, DeferredTimeoutError | CancelledError | ierror.TimeoutError):
        return BackendError(504, "timeout", f"{url} did not answer within {timeout:g} seconds.")
    if isinstance(exc, ierror.ConnectionRefusedError):
        return BackendError(502, "backend-refused", f"{url} refused the connection.")
    if isinstance(exc, ierror.DNSLookupError):
        return BackendError(502, "backend-refused", f"The host name of {url} does not resolve.")
    if isinstance(exc, ierror.ConnectError):
        return BackendError(502, "backend-refused", f"Could not connect to {url}.")
    reasons: list[Failure] = list(getattr(exc, "reasons", []) or [])
    if any(r.check(CancelledError, DeferredTimeoutError) for r in reasons):
        # The Agent reports its cancellation (by our timeout) wrapped.
        return BackendError(504, "timeout", f"{url} did not answer within {timeout:g} seconds.")
    for reason in reasons:
        if reason.check(SSL.Error):
            return BackendError(
                502, "backend-tls", f"The TLS certificate of {url} could not be verified."
            )
    for reason in reasons:
        if reason.check(ValueError, ParseError):
            # Twisted's HTTP client refused the response's head (a
            # malformed status line, a malformed or conflicting
            # Content-Length, ...).
            return BackendError(
                502, "backend-error", f"{url} sent a malformed response: {reason.value}"
            )
    if isinstance(exc, ResponseFailed) or reasons:
        return BackendError(
            502, "backend-reset", f"{url} closed or reset the connection before answering."
        )
    if isinstance(exc, SSL.Error):
        return BackendError(502, "backend-tls", f"TLS with {url} failed.")
    return BackendError(502, "backend-error", f"The request to {url} failed.")


@attrs.define(eq=False)
class BackendClient:
    """
    Makes requests to internal applications for the tunnel streams.
    """

    reactor: Any
    apps: dict[str, BackendApp] = attrs.field(init=False, factory=dict)
    """The settings the service pushed, by app name."""
    _agents: dict[BackendApp, tuple[Agent, HTTPConnectionPool]] = attrs.field(
        init=False, factory=dict
    )
    _retired: list[HTTPConnectionPool] = attrs.field(init=False, factory=list)
    """Pools of apps no longer configured: requests in flight still return
    their connections to them, which L{close} closes too."""

    def configure(self, apps: Mapping[str, BackendApp]) -> None:
        """
        Adopt the settings pushed by the service.  Agents of apps whose
        settings did not change are kept, with their pooled connections.
        """
        self.apps = dict(apps)
        current = set(self.apps.values())
        for app in [a for a in self._agents if a not in current]:
            _agent, pool = self._agents.pop(app)
            pool.closeCachedConnections()
            self._retired.append(pool)

    def _agent_for(self, app: BackendApp) -> Agent:
        entry = self._agents.get(app)
        if entry is None:
            pool = _QuietPool(self.reactor, persistent=True)
            pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
            pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
            agent = Agent.usingEndpointFactory(
                self.reactor, _CachedEndpoints(self.reactor, tls_policy(app)), pool=pool
            )
            entry = self._agents[app] = (agent, pool)
        return entry[0]

    def request(
        self,
        app: BackendApp,
        method: bytes,
        url: bytes,
        headers: Headers,
        body: IBodyProducer | None,
        clock: IReactorTime,
        timed: bool = True,
    ) -> Deferred[IResponse]:
        """
        Send a request to C{app}.  With C{timed}, it fails with a timeout if
        the response headers take over C{app.timeout} seconds; without it,
        the caller times it (from the end of the request body).
        """
        d = self._agent_for(app).request(method, url, headers, body)
        if timed:
            d.addTimeout(app.timeout, clock)
        return d

    def close(self) -> Deferred[Any]:
        from twisted.internet.defer import gatherResults

        pools = [pool for _agent, pool in self._agents.values()] + self._retired
        self._agents.clear()
        self._retired = []
        return gatherResults([pool.closeCachedConnections() for pool in pools])
