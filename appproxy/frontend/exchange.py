"""
The user's request as the tunnel sees it: a streaming L{twisted.web.http.Request}.

twisted.web's own C{Request} buffers the whole request body (in memory, then a
temporary file) before the application sees the request.  L{ExchangeRequest}
starts as soon as the header block is complete (L{_headers_complete}: at
C{gotLength} for HTTP/1.1, at C{parseCookies} for HTTP/2, whose stream calls
C{gotLength} in the middle of the block); once a
subclass has queued it for a connector, it streams the body into the tunnel
with back pressure and relays the response.  It is the user side of the
exchange (L{appproxy.tunnel.queue.Exchange}).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web._http2 import H2Stream

from appproxy.config import AppConfig
from appproxy.frontend.answers import (
    SERVICE,
    Answer,
    connection_lost_page,
    error_answer,
    no_connector_page,
    reason_phrase,
    upstream_error_page,
    withdrawn_app_page,
)
from appproxy.frontend.client_input import ClientInput
from appproxy.frontend.front_end import FrontEnd
from appproxy.frontend.relay import ResponseRelay, relayed_headers
from appproxy.http.redact import redact_query
from appproxy.tunnel.queue import ExchangeStream, NoCapacity, ProxyJob

__all__ = ["BODY_BUFFER_LIMIT", "ExchangeRequest"]

#: Request body buffered before the tunnel is ready, before reading pauses.
BODY_BUFFER_LIMIT = 1 << 16

log = Logger()


class ExchangeRequest(http.Request):
    """
    One user request, streamed through the tunnel once queued.

    Subclasses say what to do with the request in L{_begin}, called as soon
    as the header block is complete: answer it (L{_respond}), or queue a
    L{ProxyJob} for it (L{_enqueue}).
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
        self._input = ClientInput(self._is_h2)
        self._relay: ResponseRelay | None = None
        self._done = False
        self._started = False
        self._started_at = 0.0
        #: The request line: method, target and version.
        self._head = (b"", b"", b"")

    # -- parsing hooks (called by the channel) -----------------------------

    def gotLength(self, length: int | None) -> None:
        """
        The body's length is known.  The HTTP/1.1 channel calls this once,
        after the whole header block; the HTTP/2 stream for every
        C{content-length} I{while still adding headers} (and once at the end
        if none): its block is complete at L{parseCookies}, called next.
        """
        self.length = length
        if self._is_h2:
            return
        channel: Any = self.channel
        self._head = (channel._command, channel._path, channel._version)
        if length is None:
            # A chunked body: start at its first chunk (or at its end, if it
            # is empty), once the first chunk size has been read, so that a
            # request whose framing is broken from the start never reaches
            # the internal app.
            return
        self._headers_complete()

    def parseCookies(self) -> None:
        # Not twisted.web's parse: only the service's own pages read cookies.
        if self._is_h2 and not self._started:
            channel: Any = self.channel
            self._head = (channel.command, channel.path, b"HTTP/2")
            self._headers_complete()

    def _headers_complete(self) -> None:
        """The header block is complete: start the request now, once, not waiting for the body."""
        if self._started:
            return
        self._started = True
        length = self.length
        self._body_complete = length == 0
        self._started_at = time.monotonic()
        try:
            self._begin(length)
        except Exception:
            log.failure("Unexpected error starting request")
            self._respond_error_soon(500, "Internal error", "The service failed unexpectedly.")

    def _begin(self, length: int | None) -> None:
        """Decide what to do with the request: its headers are in."""
        raise NotImplementedError

    def handleContentChunk(self, data: bytes) -> None:
        self._headers_complete()
        if self._done or not data:
            # An empty chunk (an empty HTTP/2 DATA frame) carries nothing to
            # forward; L{appproxy.frontend.h2_guard} bounds how many come.
            return
        if self._body_flowing and not self._body and self._stream is not None:
            if not self._stream.write_body(data):
                self._input.pause(self)
            return
        self._body.append(data)
        self._body_size += len(data)
        if self._body_size > BODY_BUFFER_LIMIT or self._body_flowing:
            self._input.pause(self)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Called by the channel once the whole body is in: end the stream.
        """
        self._headers_complete()
        self._body_complete = True
        if not self._is_h2:
            # What the connection carries next is the next request's, which
            # the channel reads (and holds back) itself.
            self._input.resume(self)
        if self._done:
            return
        if self._body_flowing and not self._body and self._stream is not None:
            self._stream.end_body()

    def connectionLost(self, reason: Failure) -> None:
        already_done = self._done
        self._done = True
        self._stop_relay()
        super().connectionLost(reason)
        if not already_done:
            self._abandon()
        self._unlink()

    # -- the connector queue -------------------------------------------------

    def _enqueue(self, job: ProxyJob) -> None:
        assert self.app is not None
        try:
            self.frontend.queue_for(job).put(job, self._queue_timed_out)
        except NoCapacity:
            self._respond_error_soon(
                503,
                "Service busy",
                f"Too many requests are waiting for the connectors of {self.app.name}.",
                source=SERVICE,
            )

    def _queue_timed_out(self, job: ProxyJob) -> None:
        job.cancelled = True
        assert self.app is not None
        title, detail, source = no_connector_page(self.app)
        cause = self.frontend.groups[self.app.connector_group].unavailable_reason()
        self._respond_error(503, title, detail, source=source, cause=cause)

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
            self._input.resume(self)

    def response_started(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self._done or self.app is None:
            return
        assert self._stream is not None
        app = self.app
        mapping = self.frontend.mappings.get(app.name)
        if mapping is None:
            self._app_withdrawn(status)
            return
        self._relay = ResponseRelay(self, self._stream, self.frontend.clock, self._is_h2)
        self._relay.start(
            status, relayed_headers(headers, mapping if app.translate_urls_in_headers else None)
        )

    def _app_withdrawn(self, status: int) -> None:
        """
        A reload removed the app while its request was in flight: its answer
        is not passed on (the app is no longer published); the tunnel stream
        is reset (by L{_respond}) and the user gets a 502 page naming the app.
        """
        title, detail, source = withdrawn_app_page(self.app)
        cause = f"the app was removed by a reload; its {status} answer was dropped"
        self._respond_error(502, title, detail, source=source, cause=cause)

    def response_data(self, data: bytes, last: bool = False) -> None:
        if self._done:
            return
        assert self._relay is not None, "response data before the response started"
        if last:
            self._relay.last(data)
            self._finish()
        else:
            self._relay.data(data)

    def response_ended(self) -> None:
        self.response_data(b"", True)

    def upstream_error(self, status: int, kind: str, detail: str) -> None:
        if self._done:
            return
        title, page_detail, source = upstream_error_page(kind, self.app)
        cause = f"{kind}: {redact_query(detail)}"  # the URL's query may hold secrets
        self._respond_error(status, title, page_detail, source=source, cause=cause)

    def stream_lost(self, job: ProxyJob, reason: str) -> None:
        self._stream = None
        if self._done:
            return
        if self._relay is not None:
            log.info("Response to {rid} cut short: {reason}", rid=self.request_id, reason=reason)
            self._done = True
            self._stop_relay()
            self.unregisterProducer()
            self._input.abort(self)
            return
        if job.retryable():
            log.info(
                "Retrying {rid} on another connection: {reason}", rid=self.request_id, reason=reason
            )
            self._enqueue(job)
            return
        title, detail, source = connection_lost_page(self.app)
        self._respond_error(502, title, detail, source=source, cause=reason)

    # -- the user's side -------------------------------------------------------

    def _abandon(self) -> None:
        """The user went away: stop waiting and release the tunnel stream."""
        job = self._job
        if job is not None:
            job.cancelled = True
            if self.app is not None:
                self.frontend.queue_for(job).withdraw(job)
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.cancel()

    def _stop_relay(self) -> None:
        if self._relay is not None:
            self._relay.stop()

    # -- answering ---------------------------------------------------------------

    def _accept(self) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(b"accept")
        return b", ".join(values) if values else None

    def _refuse_malformed(self, detail: str) -> None:
        """
        Answer 400 to a malformed request.  An HTTP/1.1 connection is closed
        after it: what follows on it may not be framed as the client meant.
        """
        if not self._is_h2 and self.channel is not None:
            channel: Any = self.channel
            channel.persistent = False
            self.responseHeaders.setRawHeaders(b"connection", [b"close"])
        self._respond_error_soon(400, "Bad request", detail)

    def _respond_soon(self, answer: Answer) -> None:
        # Never finish from inside the channel's header parsing: the HTTP/1.1
        # channel still has work to do on this request after gotLength returns.
        self.frontend.clock.callLater(0, self._respond, answer)

    def _respond_error_soon(
        self, status: int, title: str, detail: str, source: str = SERVICE
    ) -> None:
        self.frontend.clock.callLater(0, self._respond_error, status, title, detail, source)

    def _respond_error(
        self, status: int, title: str, detail: str, source: str = SERVICE, cause: str = ""
    ) -> None:
        """
        Answer with an error page.  C{detail} is what the user reads;
        C{cause}, the technical reason (internal URLs, addresses), only goes
        to the log line, with the request id.
        """
        if self._done:
            return
        log.warn(
            "{status} for request {rid} ({app}): {cause} [source: {source}]",
            status=status,
            rid=self.request_id,
            app=self.app.name if self.app else "-",
            title=title,
            detail=detail,
            source=source,
            cause=cause or detail,
        )
        self._respond(
            error_answer(
                status,
                title,
                detail,
                source=source,
                request_id=self.request_id,
                now=self.frontend.clock.seconds(),
                accept=self._accept(),
            )
        )

    def _respond(self, answer: Answer) -> None:
        if self._done:
            return
        if self.producer is not None:
            self.unregisterProducer()
        self.setResponseCode(answer.status, reason_phrase(answer.status))
        headers = self.responseHeaders
        headers.setRawHeaders(b"content-type", [answer.content_type])
        headers.setRawHeaders(b"content-length", [b"%d" % len(answer.body)])
        headers.setRawHeaders(b"cache-control", [b"no-store"])
        headers.setRawHeaders(b"x-request-id", [self.request_id.encode("ascii")])
        if self._job is not None:
            self._job.cancelled = True
        if self._stream is not None:
            # The service answers instead of the app (a timed-out HTTP/2
            # body): the app's stream is no longer wanted.
            stream, self._stream = self._stream, None
            stream.cancel()
        self.write(answer.body)
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._stop_relay()
        if not self._body_complete and not self._is_h2 and self.channel is not None:
            # The body is still arriving: this connection cannot carry another
            # request, and what is left of the body must not be parsed as one.
            channel: Any = self.channel
            channel.persistent = False
            channel.dataReceived = lambda data: None
            self._input.resume(self)
        self.finish()
        self._unlink(keep_stream=not self._body_complete)

    def _unlink(self, keep_stream: bool = False) -> None:
        """
        Done: drop the job, relay and tunnel stream (kept while it sends the body), which refer
        back to this request, so that reference counting frees them, not the garbage collector
        (25 objects per request, a few percent of the service's CPU).  Later calls find C{_done}.
        """
        self._job = self._relay = None
        if not keep_stream:
            self._stream = None
