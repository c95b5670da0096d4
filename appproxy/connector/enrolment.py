"""
The connector's HTTP client of the service's enrolment API
(L{appproxy.tunnel.enrolment}): HTTP/1.1 over TLS to the tunnel listener,
ALPN C{http/1.1}.

The first call, C{GET /v1/ca}, is made without verifying the service (the
caller checks the CA's fingerprint against the one the administrator gave);
every other call trusts that CA only, with the service's host name checked,
and, after registration, presents the connector's certificate.  A service
whose tunnel listener has a publicly trusted certificate may instead be
verified against the system trust store, for every call, the first one
included (C{verified_tls(host, None)}).
"""

from __future__ import annotations

import io
from typing import Any, TypeVar

import attrs
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.ssl import (
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.web._newclient import _WrapperException
from twisted.web.client import (
    URI,
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from appproxy.daemon.tls import service_trust_root
from appproxy.daemon.tls_failures import CA_HINT, describe_tls_failure
from appproxy.tunnel.enrolment import (
    CA_PATH,
    ENROLMENT_ALPN,
    MAX_BODY,
    ApiError,
    CaAnswer,
    Message,
    MessageError,
    decode,
    encode,
)

__all__ = [
    "ApiFailure",
    "EnrolmentClient",
    "ServiceAddress",
    "UnreachableService",
    "failure_reason",
    "fetch_ca",
    "unverified_tls",
    "verified_tls",
]

K = TypeVar("K")

#: Seconds one API call may take, connecting included.
CALL_TIMEOUT = 30.0


class ApiFailure(Exception):
    """The service answered an error: its status and, if it sent one, its L{ApiError}."""

    def __init__(self, status: int, error: ApiError | None, what: str) -> None:
        self.status = status
        self.error = error
        message = error.message if error is not None else f"HTTP status {status}"
        super().__init__(f"{what}: {message}")


class UnreachableService(Exception):
    """
    The service could not be reached, or its answer not read; the text says
    why.  C{detail} is the why alone (without the call), C{cause} the
    exception behind it (a TLS failure, a refused connection) and
    C{connection} the call's TLS connection, if it got one (for the
    certificate verification's result).
    """

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        cause: BaseException | None = None,
        connection: SSL.Connection | None = None,
    ) -> None:
        super().__init__(message)
        self.detail = detail if detail is not None else message
        self.cause = cause
        self.connection = connection


@attrs.frozen
class ServiceAddress:
    """The service's tunnel listener: its host name (checked in its
    certificate), its port and the address actually dialled."""

    host: str
    port: int = 8444
    address: str | None = None

    @property
    def dial(self) -> str:
        return self.address or self.host

    def __str__(self) -> str:
        via = f" (via {self.address})" if self.address and self.address != self.host else ""
        return f"{self.host}:{self.port}{via}"


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """TLS that checks nothing (the CA's fingerprint is checked after); SNI sent."""

    def __init__(self, host: str) -> None:
        self._host = host.encode("idna")
        options = CertificateOptions(
            verify=False,
            acceptableProtocols=[ENROLMENT_ALPN],
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
        self._context = options.getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self._host)
        # Twisted sets ALPN per connection, not on the context: so here too.
        connection.set_alpn_protos([ENROLMENT_ALPN])
        connection.set_connect_state()
        return connection


def unverified_tls(host: str) -> IOpenSSLClientConnectionCreator:
    return _Unverified(host)


def verified_tls(
    host: str, ca_pem: bytes | None, cert_pem: bytes | None = None, key_pem: bytes | None = None
) -> IOpenSSLClientConnectionCreator:
    """
    TLS that trusts C{ca_pem} only (L{None}: the system trust store, for a
    publicly trusted certificate) and checks that the service's certificate
    names C{host}; with C{cert_pem} and C{key_pem}, mutual TLS.
    """
    client = None
    if cert_pem is not None and key_pem is not None:
        if not cert_pem.endswith(b"\n"):
            cert_pem += b"\n"
        client = PrivateCertificate.loadPEM(cert_pem + key_pem)
    return optionsForClientTLS(
        host,
        trustRoot=service_trust_root(ca_pem),
        clientCertificate=client,
        acceptableProtocols=[ENROLMENT_ALPN],
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
    )


@implementer(IOpenSSLClientConnectionCreator)
@attrs.define(eq=False)
class _Kept:
    """C{tls}, keeping the last TLS connection it made (to say why it failed)."""

    tls: IOpenSSLClientConnectionCreator
    connection: SSL.Connection | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        self.connection = self.tls.clientConnectionForTLS(tlsProtocol)
        return self.connection


@implementer(IAgentEndpointFactory)
@attrs.frozen
class _Endpoints:
    reactor: Any
    service: ServiceAddress
    tls: IOpenSSLClientConnectionCreator

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        tcp = HostnameEndpoint(self.reactor, self.service.dial, self.service.port, timeout=10)
        return wrapClientTLS(self.tls, tcp)


class _QuietClientFactory(_HTTP11ClientFactory):
    # "Starting factory _HTTP11ClientFactory(<function ... at 0x...>, ...)"
    # at every call says nothing to an operator.
    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory


def _cause(failure: BaseException) -> BaseException:
    """What is behind a failed call: its TLS failure, if any, else its first reason."""
    if isinstance(failure, _WrapperException):
        reasons = [r.value for r in failure.reasons]
        for reason in reasons:
            if isinstance(reason, SSL.Error | VerificationError):
                return reason
        if reasons:
            return _cause(reasons[0])
    return failure


def _describe(failure: BaseException, host: str) -> str:
    if isinstance(failure, _WrapperException):
        reasons = [r.value for r in failure.reasons]
        return "; ".join(_describe(r, host) for r in reasons) or "the answer broke off"
    if isinstance(failure, VerificationError):
        return f"the service's certificate is not valid for {host} (name mismatch)"
    if isinstance(failure, SSL.Error):
        details = [str(e[2]) for e in failure.args[0] if isinstance(e, tuple) and len(e) > 2]
        return "TLS failed: " + (", ".join(details) or str(failure))
    if isinstance(failure, ierror.ConnectError):
        return str(failure).strip() or type(failure).__name__
    if isinstance(failure, CancelledError | ierror.TimeoutError):
        return f"no answer within {CALL_TIMEOUT:g} s"
    return str(failure) or type(failure).__name__


@attrs.define(eq=False)
class EnrolmentClient:
    """Calls to the enrolment API over one TLS configuration."""

    reactor: Any
    service: ServiceAddress
    tls: IOpenSSLClientConnectionCreator

    def get(self, path: bytes, kind: type[K]) -> Deferred[K]:
        return Deferred.fromCoroutine(self._call(b"GET", path, None, kind))

    def post(self, path: bytes, message: Message, kind: type[K]) -> Deferred[K]:
        return Deferred.fromCoroutine(self._call(b"POST", path, encode(message), kind))

    async def _call(self, method: bytes, path: bytes, body: bytes | None, kind: type[K]) -> K:
        tls = _Kept(self.tls)
        agent = Agent.usingEndpointFactory(
            self.reactor,
            _Endpoints(self.reactor, self.service, tls),
            pool=_QuietPool(self.reactor, persistent=False),
        )
        url = f"https://{self.service.host}:{self.service.port}".encode("idna") + path
        headers = Headers({b"accept": [b"application/json"]})
        producer = None
        if body is not None:
            headers.setRawHeaders(b"content-type", [b"application/json"])
            producer = FileBodyProducer(io.BytesIO(body))
        what = f"{method.decode()} {path.decode()} at {self.service}"
        call = agent.request(method, url, headers, producer)
        call.addTimeout(CALL_TIMEOUT, self.reactor)
        try:
            response = await call
            length = response.length
            if isinstance(length, int) and length > MAX_BODY:
                detail = f"the answer is over {MAX_BODY} bytes"
                raise UnreachableService(f"{what}: {detail}", detail=detail)
            reading = readBody(response)
            reading.addTimeout(CALL_TIMEOUT, self.reactor)
            answer = await reading
        except (UnreachableService, ApiFailure):
            raise
        except Exception as e:
            detail = _describe(e, self.service.host)
            raise UnreachableService(
                f"{what}: {detail}", detail=detail, cause=_cause(e), connection=tls.connection
            ) from None
        if response.code >= 300:
            try:
                error: ApiError | None = decode(ApiError, answer)
            except MessageError:
                error = None
            raise ApiFailure(response.code, error, what)
        try:
            result: K = decode(kind, answer)
        except MessageError as e:
            detail = f"the service's answer is not understood: {e}"
            raise UnreachableService(f"{what}: {detail}", detail=detail) from None
        return result


def failure_reason(failure: Exception, host: str, ca_hint: str = CA_HINT) -> str:
    """
    Why a call to the service failed, for the operator, without naming the
    call: TLS failures in the tunnel's own words (L{describe_tls_failure};
    C{ca_hint} says where to look when the service is not trusted).
    """
    if isinstance(failure, ApiFailure):
        if failure.error is not None:
            error = failure.error
            return f"the service answered {failure.status} {error.error}: {error.message}"
        return f"the service answered HTTP status {failure.status}"
    if isinstance(failure, UnreachableService):
        cause = failure.cause
        if cause is not None:
            tls = describe_tls_failure(cause, failure.connection, host, ca_hint)
            if tls is not None:
                return tls
            if isinstance(cause, ierror.ConnectError):
                return f"cannot connect: {str(cause).strip().rstrip('.')}"
        return failure.detail
    return str(failure) or type(failure).__name__


def fetch_ca(
    reactor: Any, service: ServiceAddress, tls: IOpenSSLClientConnectionCreator | None = None
) -> Deferred[CaAnswer]:
    """
    C{GET /v1/ca}: without C{tls}, not verifying the service (check what it
    gives before trusting it); with the system trust store's L{verified_tls},
    verified as every later call is.
    """
    tls = tls if tls is not None else unverified_tls(service.host)
    return EnrolmentClient(reactor, service, tls).get(CA_PATH, CaAnswer)
