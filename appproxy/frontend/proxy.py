"""
The service's public HTTP front end: a streaming L{twisted.web.http.Request}.

twisted.web's own C{Request} buffers the whole request body (in memory, then a
temporary file) before the application sees the request.  L{ProxyRequest}
starts as soon as the headers are in (C{gotLength}, called by both the HTTP/1.1
and the HTTP/2 channel once the header block is complete), queues the request
for a connector, and streams the body into the tunnel with back pressure.
twisted.web still does the parsing and refuses malformed requests (conflicting
lengths, bad chunking, oversized or bad headers) with a 400.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web._http2 import H2Stream
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from appproxy.access.policy import client_address
from appproxy.config.loader import AppConfig
from appproxy.frontend.errorpage import ROBOTS_TXT, ErrorPage, render_error, render_not_found
from appproxy.frontend.routing import Router, has_dot_segments, internal_path
from appproxy.gate.flow import (
    HAND_OFF_PATH,
    SIGN_IN_PATH,
    SIGN_OUT_PATH,
    Admit,
    Reply,
    SignIn,
    parse_cookies,
)
from appproxy.http.headers import new_request_id, prepare_request_headers
from appproxy.http.translate import UrlMapping, translate_response_headers
from appproxy.identity.headers import (
    drop_appproxy_set_cookies,
    normalise_header_name,
    strip_appproxy_cookies,
    strip_spoofed_headers,
)
from appproxy.tunnel.queue import ConnectorGroups, ExchangeStream, NoCapacity, ProxyJob

#: Request body buffered before the tunnel is ready, before reading pauses.
BODY_BUFFER_LIMIT = 1 << 16
#: Response bytes queued for an HTTP/2 client above which the tunnel stream is
#: held; it is released below half of it.
H2_QUEUE_LIMIT = 2 << 20
#: How often a held stream checks whether the HTTP/2 client caught up (only
#: while held: Twisted's HTTP/2 server says nothing when its queue drains).
H2_QUEUE_POLL = 0.002
#: Methods the proxy refuses outright.
REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})
#: Largest request body the service reads for itself (sign-in forms).
LOCAL_BODY_LIMIT = 1 << 16
#: Where every app host publishes the keys of the signed identity assertion.
JWKS_PATH = b"/.well-known/appproxy/jwks.json"

log = Logger()


def _timestamp(clock: IReactorTime) -> str:
    return datetime.fromtimestamp(clock.seconds(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FrontEnd:
    """
    What every request of the public listener shares: the routing table, the
    connector groups and the clock.
    """

    def __init__(
        self, apps: Sequence[AppConfig], groups: ConnectorGroups, clock: IReactorTime
    ) -> None:
        self.groups = groups
        self.clock = clock
        self.requests_served = 0
        self.sign_in: SignIn | None = None
        self.login_hosts: Mapping[bytes, IResource | None] = {}
        self.callback_path = b""
        self.trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self.jwks = b'{"keys":[]}'
        self.set_apps(apps)

    def set_apps(self, apps: Sequence[AppConfig]) -> None:
        """
        Publish C{apps} (at start, and on reload): requests already under way
        keep the app they started with.
        """
        self.apps = apps
        self.router: Router[AppConfig] = Router(apps)
        self.mappings = {
            app.name: UrlMapping(internal=app.internal_url, external=app.external_url)
            for app in apps
        }
        # Identity header names of every app are removed from every request,
        # passthrough apps included: a client must never choose them.
        self.protected_headers = frozenset(
            normalise_header_name(header) for app in apps for header, _ in app.headers
        )

    def set_auth(
        self,
        *,
        sign_in: SignIn | None,
        login_hosts: Mapping[str, IResource | None],
        callback_path: str,
        trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
        jwks: bytes,
    ) -> None:
        """
        Sign-in: the machinery, the hosts the service answers itself (each
        with the resource that serves what is not the relying party's own,
        such as the built-in identity provider), proxies whose
        C{X-Forwarded-For} is believed, and the assertion keys.
        """
        self.sign_in = sign_in
        self.login_hosts = {host.encode("ascii"): res for host, res in login_hosts.items()}
        self.callback_path = callback_path.encode("ascii")
        self.trusted_proxies = trusted_proxies
        self.jwks = jwks


@implementer(INonQueuedRequestFactory)
class ProxyRequestFactory:
    """
    Builds L{ProxyRequest}s bound to a L{FrontEnd}; given to the HTTP channels.
    """

    def __init__(self, frontend: FrontEnd) -> None:
        self.frontend = frontend

    def __call__(self, channel: Any, queued: object = None) -> ProxyRequest:
        return ProxyRequest(channel, self.frontend)


class ProxyRequest(http.Request):
    """
    One user request, streamed through the tunnel.
    """

    def __init__(self, channel: Any, frontend: FrontEnd) -> None:
        super().__init__(channel)
        self.frontend = frontend
        self.content = None
        self.request_id = ""
        self.app: AppConfig | None = None
        self._is_h2 = isinstance(channel, H2Stream)
        self._job: ProxyJob | None = None
        self._stream: ExchangeStream | None = None
        self._body: deque[bytes] = deque()
        self._body_size = 0
        self._body_complete = False
        self._body_flowing = False
        self._input_paused = False
        self._responding = False
        self._done = False
        self._h2_check: Any = None
        self._started_at = 0.0
        self._local: IResource | None = None
        self._client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    # -- parsing hooks (called by the channel) -----------------------------

    def gotLength(self, length: int | None) -> None:
        """
        The header block is complete: start the request now, without waiting
        for (or buffering) the body.
        """
        self.length = length
        self._body_complete = length == 0
        self._started_at = time.monotonic()
        try:
            self._begin(length)
        except Exception:
            log.failure("Unexpected error starting request")
            self._respond_error_soon(500, "Internal error", "The service failed unexpectedly.")

    def handleContentChunk(self, data: bytes) -> None:
        if self._done:
            return
        if self._local is not None:
            assert self.content is not None
            if self.content.tell() + len(data) > LOCAL_BODY_LIMIT:
                self._local = None
                self._respond_error(413, "Request too large", "The form is too large.")
                return
            self.content.write(data)
            return
        if self._body_flowing and not self._body and self._stream is not None:
            if not self._stream.write_body(data):
                self._pause_input()
            return
        self._body.append(data)
        self._body_size += len(data)
        if self._body_size > BODY_BUFFER_LIMIT or self._body_flowing:
            self._pause_input()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Called by the channel once the whole body is in: end the stream.
        """
        self._body_complete = True
        if self._done:
            return
        if self._local is not None:
            # The service's own pages: parse the query and form, then render.
            http.Request.requestReceived(self, command, path, version)
            return
        if self._body_flowing and not self._body and self._stream is not None:
            self._stream.end_body()

    def connectionLost(self, reason: Failure) -> None:
        already_done = self._done
        self._done = True
        self._stop_h2_check()
        super().connectionLost(reason)
        if not already_done:
            self._abandon()

    # -- starting ------------------------------------------------------------

    def _begin(self, length: int | None) -> None:
        channel: Any = self.channel
        if self._is_h2:
            method, uri, version = channel.command, channel.path, b"HTTP/2"
        else:
            method, uri, version = channel._command, channel._path, channel._version
        self.method, self.uri, self.clientproto = method, uri, version
        self.path = uri.split(b"?", 1)[0]
        self.request_id = new_request_id()
        host_values = self.requestHeaders.getRawHeaders(b"host")
        host = host_values[0] if host_values and len(host_values) == 1 else None

        if not uri.startswith(b"/"):
            self._respond_error_soon(400, "Bad request", "The request target must be a path.")
            return
        if has_dot_segments(self.path.decode("latin-1")):
            # '..' could climb out of the published internal path.
            self._respond_error_soon(400, "Bad request", "The path contains '.' or '..' segments.")
            return
        if host is not None and host.lower() in self.frontend.login_hosts:
            self._begin_login(host.lower())
            return
        app = self.frontend.router.route(host, self.path) if host is not None else None
        if app is None:
            shown = host.decode("latin-1") if host else ""
            self._respond_soon(
                404, *render_not_found(shown, self.request_id, self._now(), self._accept())
            )
            return
        self.app = app
        if self.path == b"/robots.txt":
            self._respond_soon(200, b"text/plain; charset=utf-8", ROBOTS_TXT)
            return
        if method in REFUSED_METHODS:
            self._respond_error_soon(
                405, "Method not allowed", f"{method.decode('latin-1')} is not supported."
            )
            return

        if self.path == JWKS_PATH:
            self._respond_soon(200, b"application/jwk-set+json", self.frontend.jwks)
            return
        sign_in = self.frontend.sign_in
        if not app.signs_in or sign_in is None:
            self._forward(app, ())
            return
        client_ip = self._resolved_client_ip()
        if self.path == HAND_OFF_PATH and method in (b"GET", b"HEAD"):
            self._reply_when_ready(
                sign_in.hand_off(
                    app,
                    self._query_args(),
                    client_ip=str(client_ip),
                    request_id=self.request_id,
                    accept=self._accept(),
                )
            )
            return
        cookies = parse_cookies(self.requestHeaders.getRawHeaders(b"cookie"))
        if self.path == SIGN_OUT_PATH:
            self._reply_when_ready(
                sign_in.sign_out(
                    app,
                    cookies,
                    client_ip=str(client_ip),
                    request_id=self.request_id,
                    accept=self._accept(),
                )
            )
            return
        decided = sign_in.admit(
            app,
            method=method,
            uri=uri,
            cookies=cookies,
            client_ip=client_ip,
            request_id=self.request_id,
            accept=self._accept(),
        )
        if isinstance(decided, defer.Deferred):
            decided.addCallback(self._admitted, app, soon=False).addErrback(self._internal_error)
        else:
            self._admitted(decided, app, soon=True)

    def _admitted(self, decided: Admit | Reply, app: AppConfig, *, soon: bool) -> None:
        if self._done:
            return
        if isinstance(decided, Reply):
            if soon:
                self.frontend.clock.callLater(0, self._reply, decided)
            else:
                self._reply(decided)
            return
        self._forward(app, decided.headers)

    def _forward(self, app: AppConfig, identity: Sequence[tuple[bytes, bytes]]) -> None:
        """Queue the request for a connector of C{app}'s group."""
        host = self.requestHeaders.getRawHeaders(b"host", [b""])[0]
        raw = [
            (name, value)
            for name, values in self.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        raw = strip_appproxy_cookies(strip_spoofed_headers(raw, self.frontend.protected_headers))
        headers = prepare_request_headers(
            raw,
            client_address=str(self._resolved_client_ip()),
            external_host=host.decode("latin-1"),
            request_id=self.request_id,
            internal_netloc=app.internal_netloc,
        )
        headers.extend(identity)
        uri = self.uri
        method = self.method
        length = self.length
        target = internal_path(app.external_path, app.internal_path, uri.decode("latin-1"))
        self._job = ProxyJob(
            app=app,
            method=method,
            path=target.encode("latin-1"),
            headers=headers,
            request_id=self.request_id,
            has_body=length != 0,
            exchange=self,
        )
        self._enqueue(self._job)

    # -- the service's own answers: sign-in, hand-off, the identity provider ----

    def _begin_login(self, host: bytes) -> None:
        """A request to a login host: the relying party's paths or a resource."""
        sign_in = self.frontend.sign_in
        method = self.method
        if sign_in is not None and self.path in (
            SIGN_IN_PATH.encode(),
            self.frontend.callback_path,
        ):
            if method not in (b"GET", b"HEAD"):
                self._respond_error_soon(405, "Method not allowed", "Use GET.")
                return
            accept = self._accept()
            client_ip = self._resolved_client_ip()
            if self.path == self.frontend.callback_path:
                cookies = parse_cookies(self.requestHeaders.getRawHeaders(b"cookie"))
                self._reply_when_ready(
                    sign_in.callback(
                        self._query_args(),
                        cookies,
                        client_ip=client_ip,
                        request_id=self.request_id,
                        accept=accept,
                    )
                )
            else:
                self._reply_when_ready(
                    sign_in.start(
                        self._query_args(),
                        client_ip=str(client_ip),
                        request_id=self.request_id,
                        accept=accept,
                    )
                )
            return
        resource = self.frontend.login_hosts.get(host)
        if self.path == b"/robots.txt":
            self._respond_soon(200, b"text/plain; charset=utf-8", ROBOTS_TXT)
            return
        if resource is None:
            self._respond_soon(
                404,
                *render_not_found(
                    host.decode("latin-1"), self.request_id, self._now(), self._accept()
                ),
            )
            return
        # Read the (small) body; the channel then calls requestReceived,
        # which parses the form and calls process().
        self._local = resource
        self.content = BytesIO()

    def process(self) -> None:
        """Render the service's own resource for a login-host request."""
        resource = self._local
        if resource is None or self._done:
            return
        self.prepath: list[bytes] = []
        self.postpath: list[bytes] = self.path[1:].split(b"/")
        if not self.received_cookies:
            self.parseCookies()
        try:
            body = getChildForRequest(resource, self).render(self)
        except Exception:
            log.failure("Unexpected error in the service's own page")
            self._respond_error(500, "Internal error", "The service failed unexpectedly.")
            return
        if body is NOT_DONE_YET:
            return
        if not isinstance(body, bytes):
            self._respond_error(500, "Internal error", "The service failed unexpectedly.")
            return
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def _query_args(self) -> dict[str, str]:
        """The query's parameters (the first of each name), decoded."""
        _, _, query = self.uri.partition(b"?")
        args: dict[str, str] = {}
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            args.setdefault(name, value)
        return args

    def _reply_when_ready(self, reply: defer.Deferred[Reply]) -> None:
        # Never answer from inside the channel's header parsing.
        def later(result: Reply) -> None:
            self.frontend.clock.callLater(0, self._reply, result)

        reply.addCallback(later).addErrback(self._internal_error)

    def _internal_error(self, failure: Failure) -> None:
        log.failure("Unexpected error during sign-in", failure)
        self._respond_error(500, "Internal error", "The service failed unexpectedly.")

    def _reply(self, reply: Reply) -> None:
        if self._done:
            return
        for name, value in reply.headers:
            self.responseHeaders.addRawHeader(name, value)
        if reply.status in (301, 302, 303, 307, 308):
            self._respond(reply.status, b"text/plain; charset=utf-8", b"")
        else:
            self._respond(reply.status, reply.content_type, reply.body)

    def _resolved_client_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The client's address: the TCP peer, unless it is a trusted proxy."""
        if self._client_ip is None:
            try:
                self._client_ip = client_address(
                    self._client_address(),
                    self.requestHeaders.getRawHeaders(b"x-forwarded-for") or [],
                    self.frontend.trusted_proxies,
                )
            except ValueError:
                # A peer without an IP address (a unix: listener) counts as
                # 0.0.0.0 for policy and in X-Forwarded-For.
                self._client_ip = ipaddress.IPv4Address("0.0.0.0")
        return self._client_ip

    def _enqueue(self, job: ProxyJob) -> None:
        assert self.app is not None
        try:
            self.frontend.groups[self.app.connector_group].put(job, self._queue_timed_out)
        except NoCapacity:
            self._respond_error_soon(
                503,
                "Service busy",
                f"Too many requests are waiting for the connectors of {self.app.name}.",
                source="appproxy service",
            )

    def _queue_timed_out(self, job: ProxyJob) -> None:
        job.cancelled = True
        assert self.app is not None
        self._respond_error(
            503,
            "No connector available",
            f"No connector available for {self.app.name}: no connector of the group "
            f"'{self.app.connector_group}' took the request within "
            f"{self.frontend.groups.timeout:g} seconds.",
            source="connector",
        )

    # -- Exchange: called by the tunnel ----------------------------------------

    def stream_opened(self, stream: ExchangeStream) -> None:
        self._stream = stream
        if self._done:
            stream.cancel()

    def body_wanted(self, stream: ExchangeStream) -> None:
        self._body_flowing = True
        self._flush_body()

    def body_drained(self) -> None:
        self._flush_body()

    def _flush_body(self) -> None:
        stream = self._stream
        if stream is None or self._done:
            return
        while self._body:
            chunk = self._body.popleft()
            self._body_size -= len(chunk)
            if not stream.write_body(chunk):
                return
        if self._body_complete:
            stream.end_body()
        else:
            self._resume_input()

    def response_started(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self._done or self.app is None:
            return
        self._responding = True
        headers = drop_appproxy_set_cookies(headers)
        if self.app.translate_urls_in_headers:
            headers = translate_response_headers(headers, self.frontend.mappings[self.app.name])
        self.setResponseCode(status)
        raw = self.responseHeaders
        for name, value in headers:
            raw.addRawHeader(name, value)
        assert self._stream is not None
        self.registerProducer(self._stream, True)

    def response_data(self, data: bytes) -> None:
        if self._done:
            return
        self.write(data)
        if self._is_h2 and self._h2_check is None and self._h2_queued() > H2_QUEUE_LIMIT:
            # Twisted's HTTP/2 server queues response data up to the client's
            # flow-control window, which a client may make huge and then not
            # read: hold the tunnel stream until the queue drains.
            assert self._stream is not None
            self._stream.hold()
            self._h2_check = self.frontend.clock.callLater(H2_QUEUE_POLL, self._h2_release)

    def _h2_queued(self) -> int:
        channel: Any = self.channel
        if channel is None:
            return 0
        queue = channel._conn._outboundStreamQueues.get(channel.streamID, ())
        return sum(len(chunk) for chunk in queue if isinstance(chunk, bytes))

    def _h2_release(self) -> None:
        self._h2_check = None
        if self._done or self._stream is None:
            return
        if self._h2_queued() > H2_QUEUE_LIMIT // 2:
            self._h2_check = self.frontend.clock.callLater(H2_QUEUE_POLL, self._h2_release)
            return
        self._stream.release()

    def _stop_h2_check(self) -> None:
        if self._h2_check is not None and self._h2_check.active():
            self._h2_check.cancel()
        self._h2_check = None

    def response_ended(self) -> None:
        if self._done:
            return
        self.unregisterProducer()
        if not self.startedWriting:
            self.write(b"")
        self._finish()

    def upstream_error(self, status: int, kind: str, detail: str) -> None:
        if self._done:
            return
        titles = {
            "backend-refused": "Internal application unreachable",
            "backend-reset": "Internal application closed the connection",
            "backend-tls": "Internal application TLS failure",
            "timeout": "Internal application timed out",
            "backend-error": "Internal application error",
            "bad-request": "Bad request",
        }
        self._respond_error(
            status,
            titles.get(kind, "Bad gateway"),
            detail or "The internal application could not be reached.",
            source="internal application" if kind != "bad-request" else "appproxy service",
        )

    def stream_lost(self, job: ProxyJob, reason: str) -> None:
        self._stream = None
        if self._done:
            return
        if self._responding:
            log.info("Response to {rid} cut short: {reason}", rid=self.request_id, reason=reason)
            self._done = True
            self._stop_h2_check()
            self.unregisterProducer()
            self._abort_client()
            return
        if job.retryable():
            log.info(
                "Retrying {rid} on another connection: {reason}", rid=self.request_id, reason=reason
            )
            self._enqueue(job)
            return
        self._respond_error(
            502,
            "Connector connection lost",
            f"The connection to the connector was lost before the internal application "
            f"answered ({reason}).",
            source="connector",
        )

    # -- user side helpers ---------------------------------------------------

    def _abandon(self) -> None:
        """
        The user went away: stop waiting and release the tunnel stream.
        """
        job = self._job
        if job is not None:
            job.cancelled = True
            if self.app is not None:
                self.frontend.groups[self.app.connector_group].withdraw(job)
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.cancel()

    def _input(self) -> Any:
        """
        What to pause to stop reading the body: the HTTP/2 stream (which then
        stops opening its window), or the HTTP/1.1 connection's transport.
        """
        return self.channel if self._is_h2 else self.transport

    def _pause_input(self) -> None:
        if self._input_paused or self.channel is None:
            return
        self._input_paused = True
        self._input().pauseProducing()

    def _resume_input(self) -> None:
        if not self._input_paused or self.channel is None:
            return
        self._input_paused = False
        self._input().resumeProducing()

    def _abort_client(self) -> None:
        if self.channel is not None:
            # An HTTP/2 stream is reset; an HTTP/1.1 connection is dropped.
            self._input().abortConnection()

    def _client_address(self) -> str:
        """The TCP peer's address."""
        address: IAddress = http.Request.getClientAddress(self)
        return str(getattr(address, "host", "unknown"))

    def getClientAddress(self) -> IAddress:
        """
        The client's address as the service's own pages (the built-in
        provider's lockout, the sign-in log) see it: the TCP peer, unless that
        is a trusted proxy, whose X-Forwarded-For is then believed.
        """
        address: IAddress = http.Request.getClientAddress(self)
        if not self.frontend.trusted_proxies or not hasattr(address, "host"):
            return address
        ip = self._resolved_client_ip()
        kind = IPv6Address if ip.version == 6 else IPv4Address
        return kind("TCP", str(ip), getattr(address, "port", 0))

    def _accept(self) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(b"accept")
        return b", ".join(values) if values else None

    def _now(self) -> str:
        return _timestamp(self.frontend.clock)

    def _respond_soon(self, status: int, content_type: bytes, body: bytes) -> None:
        # Never finish from inside the channel's header parsing: the HTTP/1.1
        # channel still has work to do on this request after gotLength returns.
        self.frontend.clock.callLater(0, self._respond, status, content_type, body)

    def _respond_error_soon(
        self, status: int, title: str, detail: str, source: str = "appproxy service"
    ) -> None:
        self.frontend.clock.callLater(0, self._respond_error, status, title, detail, source)

    def _respond_error(
        self, status: int, title: str, detail: str, source: str = "appproxy service"
    ) -> None:
        if self._done:
            return
        log.warn(
            "{status} for request {rid} ({app}): {detail} [source: {source}]",
            status=status,
            rid=self.request_id,
            app=self.app.name if self.app else "-",
            detail=detail,
            source=source,
        )
        page = ErrorPage(
            status=status,
            title=title,
            detail=detail,
            source=source,
            request_id=self.request_id,
            timestamp=self._now(),
        )
        self._respond(status, *render_error(page, self._accept()))

    def _respond(self, status: int, content_type: bytes, body: bytes) -> None:
        if self._done:
            return
        if self.producer is not None:
            self.unregisterProducer()
        self.setResponseCode(status)
        headers = self.responseHeaders
        headers.setRawHeaders(b"content-type", [content_type])
        headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
        headers.setRawHeaders(b"cache-control", [b"no-store"])
        headers.setRawHeaders(b"x-request-id", [self.request_id.encode("ascii")])
        if self._job is not None:
            self._job.cancelled = True
        self.write(body)
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._stop_h2_check()
        if not self._body_complete and not self._is_h2 and self.channel is not None:
            # The body is still arriving: this connection cannot carry another
            # request, and what is left of the body must not be parsed as one.
            channel: Any = self.channel
            channel.persistent = False
            channel.dataReceived = lambda data: None
        self.finish()


class ProxyHTTPFactory(http.HTTPFactory):
    """
    The public listener's factory: HTTP/1.1 and HTTP/2 (by ALPN) channels
    whose requests are L{ProxyRequest}s, with limits tightened for a proxy.
    """

    #: Idle connections are closed after this many seconds.
    timeOut = 120
    noisy = False

    def __init__(self, frontend: FrontEnd, clock: IReactorTime) -> None:
        super().__init__(reactor=clock)
        self.frontend = frontend
        self.request_factory = ProxyRequestFactory(frontend)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol: Any = super().buildProtocol(addr)
        protocol.requestFactory = self.request_factory
        channel = protocol._channel
        channel.maxHeaders = 100
        channel.totalHeadersSize = 16384
        # A single over-long line gets the same 400 as too many header bytes
        # (LineReceiver would otherwise just drop the connection).
        channel.lineLengthExceeded = lambda line: channel._respondToBadRequestAndDisconnect()
        return protocol

    def log(self, request: Any) -> None:
        """
        Access log: one structured event per finished request.
        """
        self.frontend.requests_served += 1
        started = getattr(request, "_started_at", 0.0)
        log.info(
            "{method} {host}{path} {status} {duration_ms:.1f}ms {rid}",
            method=request.method.decode("latin-1") if request.method else "-",
            host=(request.getHeader(b"host") or b"-").decode("latin-1"),
            path=(request.path or b"").decode("latin-1"),
            status=request.code,
            duration_ms=(time.monotonic() - started) * 1000 if started else 0.0,
            rid=getattr(request, "request_id", ""),
            log_system="access",
        )
