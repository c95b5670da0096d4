"""
The enrolment API on the tunnel listener (ALPN C{http/1.1}): twisted.web's
HTTP/1.1 server with the five paths of L{appproxy.tunnel.enrolment} and
nothing else (404), JSON bodies of at most C{MAX_BODY} bytes (413 beyond,
the connection closed without reading the rest), a short idle timeout per
connection and a deadline per request: L{REQUEST_DEADLINE} seconds from its
first byte to its answer, however slowly its bytes come.
What each call does is L{appproxy.trust.enrol.Enrolment}'s.

Served by twisted.web's C{http} module alone: a request is answered as
twisted.web's site would answer it for this one leaf resource (the same
C{Server} and C{Date} fields, C{Content-Length}, HEAD without the body),
without C{twisted.web.server}, whose imports (about 3 MiB, 40 modules) the
service otherwise does without (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel, HTTPFactory
from twisted.web.resource import Resource

from appproxy.daemon.side_http import answer_as_site
from appproxy.daemon.tls import peer_certificate
from appproxy.http.render import NOT_DONE_YET
from appproxy.trust.enrol import Enrolment
from appproxy.trust.errors import Answer, Refused
from appproxy.tunnel.enrolment import (
    CA_PATH,
    CONFIG_PATH,
    MAX_BODY,
    REGISTER_PATH,
    REGISTRATION_PATH,
    RENEW_PATH,
    ApiError,
    encode,
)

__all__ = ["REQUEST_DEADLINE", "REQUEST_TIMEOUT", "enrolment_site"]

log = Logger()

#: Seconds an enrolment API connection may be idle (a request's bytes included).
REQUEST_TIMEOUT = 15.0
#: Seconds from a request's first byte to its answer, at most.
REQUEST_DEADLINE = 30.0

_ROUTES: dict[bytes, bytes] = {
    CA_PATH: b"GET",
    REGISTRATION_PATH: b"GET",
    REGISTER_PATH: b"POST",
    RENEW_PATH: b"POST",
    CONFIG_PATH: b"GET",
}


def _error(status: int, error: str, message: str) -> Answer:
    return status, ApiError(error=error, message=message)


class _Request(http.Request):
    """A request whose body may not exceed C{MAX_BODY} bytes."""

    channel: _Channel

    _received = 0
    _too_large = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._refuse_large()
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse_large()
            return
        super().handleContentChunk(data)

    def _refuse_large(self) -> None:
        if self._too_large:
            return
        self._too_large = True
        _, message = _error(413, "too_large", f"the request body is over {MAX_BODY} bytes")
        body = encode(message)
        transport: Any = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )
        self.channel.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._too_large:
            return
        super().requestReceived(command, path, version)

    def process(self) -> None:
        """Answer, as twisted.web's site answers for a leaf resource."""
        answer_as_site(self, self._render)

    def _render(self, request: http.Request) -> Any:
        api = self.channel.api
        try:
            return api.render(self)
        except Exception:
            return api._failed(Failure(), self)


class _Channel(HTTPChannel):
    """An HTTP/1.1 connection whose requests must be answered by their deadline."""

    requestFactory = _Request
    #: The API, set by L{_Site.buildProtocol}.
    api: _Api
    _deadline: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if data and self._deadline is None:
            self._deadline = self.callLater(REQUEST_DEADLINE, self._expired)
        super().dataReceived(data)

    def requestDone(self, request: Any) -> None:
        self._cancel()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._cancel()
        super().connectionLost(reason)

    def _cancel(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        peer = self.transport.getPeer() if self.transport is not None else None
        log.info(
            "Closed an enrolment API connection from {peer}: its request took over {seconds:.0f} s",
            peer=str(getattr(peer, "host", peer)),
            seconds=REQUEST_DEADLINE,
        )
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class _Api(Resource):
    isLeaf = True

    def __init__(self, enrolment: Enrolment) -> None:
        super().__init__()
        self.enrolment = enrolment

    def render(self, request: Any) -> Any:
        path = request.path
        method = _ROUTES.get(path)
        if method is None:
            return self._send(request, _error(404, "not_found", "no such path in this API"))
        if request.method != method and not (method == b"GET" and request.method == b"HEAD"):
            request.setHeader(b"allow", method)
            return self._send(
                request,
                _error(405, "method_not_allowed", f"use {method.decode()} for this path"),
            )
        address = _peer_host(request)
        enrolment = self.enrolment
        if path == CA_PATH:
            return self._send(request, enrolment.ca())
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        certificate = peer_certificate(request.channel.transport)
        call: Callable[[], Awaitable[Answer]]
        if path == CONFIG_PATH:
            call = lambda: enrolment.settings(certificate, address)  # noqa: E731
        elif path == REGISTRATION_PATH:
            call = enrolment.registration
        elif path == REGISTER_PATH:
            call = lambda: enrolment.register(body, address)  # noqa: E731
        else:
            call = lambda: enrolment.renew(body, certificate, address)  # noqa: E731
        d: Deferred[Answer] = Deferred.fromCoroutine(_answer(call))
        d.addCallback(lambda answer: self._send(request, answer, finish=True))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Any, request: Any) -> bytes:
        log.failure("The enrolment API failed on {path}", failure, path=request.path)
        return self._send(
            request, _error(500, "internal_error", "the service failed; see its log"), True
        )

    @staticmethod
    def _send(request: Any, answer: Answer, finish: bool = False) -> bytes:
        status, message = answer
        body = encode(message)
        if request._disconnected or request.finished:
            return b""
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if finish:
            request.write(body)
            request.finish()
        return body


async def _answer(call: Callable[[], Awaitable[Answer]]) -> Answer:
    try:
        return await call()
    except Refused as refused:
        return refused.answer()


def _peer_host(request: Any) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", peer))


class _Site(HTTPFactory):
    """The API's connections: HTTP/1.1 only (ALPN chose it), the idle timeout."""

    protocol = _Channel  # type: ignore[assignment]
    noisy = False  # no "Starting factory <..._Site object at 0x...>" in the log

    def __init__(self, api: _Api, reactor: Any = None) -> None:
        super().__init__(timeout=REQUEST_TIMEOUT, reactor=reactor)
        self.api = api

    def buildProtocol(self, addr: IAddress) -> _Channel:  # type: ignore[override]
        channel: _Channel = super().buildProtocol(addr)  # type: ignore[assignment]
        channel.api = self.api
        return channel


def enrolment_site(enrolment: Enrolment, reactor: Any = None) -> HTTPFactory:
    """The enrolment API's HTTP/1.1 server (a protocol factory)."""
    return _Site(_Api(enrolment), reactor)
