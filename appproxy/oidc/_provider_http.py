"""
The HTTP client the relying party talks to its provider with: https only, TLS
verified against the configured trust roots, C{provider_address} honoured, no
cookies; and the body reader that refuses responses past a size.
"""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy
from typing import Any, cast
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from appproxy.oidc.settings import RelyingPartySettings, parse_provider_address


class ResponseTooLarge(Exception):
    """A provider's response exceeded the size allowed (see L{read_body})."""


@attrs.define(eq=False)
class _CappedBody(Protocol):
    """
    Collect a response body, giving up (and closing the connection) past a size.

    @ivar _limit: the most bytes accepted.
    @ivar finished: fires with the body, or fails with L{ResponseTooLarge}.
    """

    _limit: int
    _size: int = attrs.field(default=0, init=False)
    _chunks: list[bytes] = attrs.field(factory=list, init=False)
    finished: Deferred[bytes] = attrs.field(init=False)

    @finished.default
    def _new_finished(self) -> Deferred[bytes]:
        return Deferred(self._stop)

    def _stop(self, finished: Deferred[bytes]) -> None:
        if self.transport is not None:
            cast(Any, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._chunks = []
            if self.transport is not None:
                cast(Any, self.transport).stopProducing()
            self.finished.errback(ResponseTooLarge())
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)


def read_body(response: IResponse, limit: int) -> Deferred[bytes]:
    """
    Read C{response}'s body.

    @return: fires with the body; fails with L{ResponseTooLarge} past
        C{limit} bytes (at once if the declared length is over it).
    """
    length = response.length
    # A declared length over the limit fails at the first byte.
    body = _CappedBody(-1 if isinstance(length, int) and length > limit else limit)
    response.deliverBody(body)
    return body.finished


@implementer(IAgentEndpointFactory)
@attrs.frozen
class _ProviderEndpoints:
    """
    Endpoints for the provider's URLs: https only, TLS verified against the
    URL's host name with the configured trust roots, and for the issuer's
    host, connected to C{provider_address} if one is configured.
    """

    _reactor: Any
    _settings: RelyingPartySettings
    _trust: Any

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme != b"https":
            raise SchemeNotSupported(f"the provider is reached by https only, not {uri.scheme!r}")
        host = uri.host.decode("ascii").lower()
        connect_host, connect_port = host, uri.port
        issuer = urlsplit(self._settings.issuer)
        address = self._settings.provider_address
        if address is not None and host == (issuer.hostname or "").lower():
            address_host, address_port = parse_provider_address(address)
            connect_host = address_host
            if address_port is not None and uri.port == (issuer.port or 443):
                connect_port = address_port
        tls = optionsForClientTLS(
            host,
            trustRoot=self._trust,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )
        return wrapClientTLS(
            tls,
            HostnameEndpoint(
                self._reactor, connect_host, connect_port, timeout=self._settings.timeout
            ),
        )


def _trust_root(ca_pem: bytes | None) -> Any:
    if ca_pem is None:
        return platformTrust()
    certificates = [
        Certificate.loadPEM(certificate.public_bytes(Encoding.PEM))
        for certificate in x509.load_pem_x509_certificates(ca_pem)
    ]
    return trustRootFromCertificates(certificates)


class _QuietClientFactory(_HTTP11ClientFactory):
    # "Starting factory _HTTP11ClientFactory(<function ... at 0x...>, ...)"
    # per connection says nothing to an operator.
    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory


def provider_http_client(
    reactor: Any, settings: RelyingPartySettings
) -> tuple[HTTPClient, HTTPConnectionPool]:
    """
    A treq client for the provider C{settings} name, and its connection pool
    (close its cached connections when done).  It keeps no cookies: a
    provider's cookies have no business in a back channel.
    """
    pool = _QuietPool(reactor, persistent=True)
    agent = Agent.usingEndpointFactory(
        reactor, _ProviderEndpoints(reactor, settings, _trust_root(settings.ca_pem)), pool=pool
    )
    no_cookies = IndexableCookieJar(DefaultCookiePolicy(allowed_domains=[]))
    return HTTPClient(agent, cookiejar=no_cookies), pool
