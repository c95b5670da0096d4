"""
The connector's HTTP client for internal applications.

One L{AppClient} per application (L{appproxy.connector.pool}), each with its
own TLS policy (the app's CA bundle, the system trust store, or, only when an
administrator said C{verify_backend_tls = false}, none) and its pools of
persistent HTTP/1.1 connections (L{appproxy.connector.http1}: llhttp, strict).
Redirects are never followed: they go back to the user, translated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.ssl import Certificate, CertificateOptions, trustRootFromCertificates
from twisted.python.failure import Failure
from twisted.web._newclient import ParseError
from twisted.web.client import BrowserLikePolicyForHTTPS, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from appproxy.connector.http1 import BackendResponse
from appproxy.connector.pool import (
    CONNECT_TIMEOUT,
    IDLE_CONNECTION_TIMEOUT,
    MAX_PERSISTENT_PER_HOST,
    AppClient,
)
from appproxy.http.redact import redact_query

__all__ = [
    "CONNECT_TIMEOUT",
    "IDLE_CONNECTION_TIMEOUT",
    "MAX_PERSISTENT_PER_HOST",
    "BackendApp",
    "BackendClient",
    "BackendError",
    "BackendResponse",
    "classify_failure",
    "connection_tokens",
    "parse_settings",
    "response_fields",
    "tls_policy",
]


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


def connection_tokens(response: Any) -> frozenset[bytes]:
    """
    The lowercased tokens of a backend response's C{Connection} header: the
    headers it names are hop-by-hop (RFC 9110 7.6.1) and must not reach the
    user.
    """
    tokens: frozenset[bytes] = getattr(response, "connection", frozenset())
    return tokens


def response_fields(response: Any) -> tuple[list[tuple[bytes, bytes]], frozenset[bytes]]:
    """
    The header fields (names lowercased) and C{Connection} tokens of a
    response from another client than L{AppClient} (twisted.web's).
    """
    fields = [
        (name.lower(), value)
        for name, values in response.headers.getAllRawHeaders()
        for value in values
    ]
    tokens = frozenset(
        token.strip().lower()
        for name, value in fields
        if name == b"connection"
        for token in value.split(b",")
    )
    return fields, tokens | connection_tokens(response)


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
        # A cancellation (by our timeout) reported wrapped.
        return BackendError(504, "timeout", f"{url} did not answer within {timeout:g} seconds.")
    for reason in reasons:
        if reason.check(SSL.Error):
            return BackendError(
                502, "backend-tls", f"The TLS certificate of {url} could not be verified."
            )
    for reason in reasons:
        if reason.check(ValueError, ParseError):
            # The client refused the response's head (a malformed status
            # line, a malformed or conflicting Content-Length, ...).
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
    _clients: dict[BackendApp, AppClient] = attrs.field(init=False, factory=dict)
    _retired: list[AppClient] = attrs.field(init=False, factory=list)
    """Clients of apps no longer configured: requests in flight still end
    on their connections, which are closed then, not pooled."""

    def configure(self, apps: Mapping[str, BackendApp]) -> None:
        """
        Adopt the settings pushed by the service.  Clients of apps whose
        settings did not change are kept, with their pooled connections.
        """
        self.apps = dict(apps)
        current = set(self.apps.values())
        for app in [a for a in self._clients if a not in current]:
            client = self._clients.pop(app)
            client.close()
            self._retired.append(client)

    def _agent_for(self, app: BackendApp) -> AppClient:
        client = self._clients.get(app)
        if client is None:
            client = self._clients[app] = AppClient(self.reactor, tls_policy(app))
        return client

    def request(
        self,
        app: BackendApp,
        method: bytes,
        url: bytes,
        headers: Headers | Sequence[tuple[bytes, bytes]],
        body: IBodyProducer | None,
        clock: IReactorTime,
        timed: bool = True,
    ) -> Deferred[BackendResponse]:
        """
        Send a request to C{app}.  With C{timed}, it fails with a timeout if
        the response headers take over C{app.timeout} seconds; without it,
        the caller times it (from the end of the request body).

        @raise ValueError: HTTP/1.1 cannot carry the request as it is.
        """
        d = self._agent_for(app).request(method, url, headers, body)
        if timed:
            d.addTimeout(app.timeout, clock)
        return d

    def close(self) -> Deferred[Any]:
        clients = [*self._clients.values(), *self._retired]
        self._clients.clear()
        self._retired = []
        return gatherResults([client.close() for client in clients])
