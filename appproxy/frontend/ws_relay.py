"""
L{WebSocketExchange}: the user side of a WebSocket through the tunnel (the
L{appproxy.tunnel.queue.Exchange} of an upgraded job).

Until the app answers, the handshake is an ordinary request: an error, a
lost stream (with its one retry) or an answer other than 101 (the app
refused the upgrade) go to the request and are relayed as for any request.
On a 101 the exchange writes the C{101 Switching Protocols} head to the
client itself and takes the HTTP/1.1 connection over from twisted.web
(L{appproxy.frontend.channels.StrictHTTPChannel.upgrade}): from then on it
carries raw bytes both ways.

  - client to app: every byte, those the channel had already read after the
    handshake first, into the tunnel stream; when the stream's window is
    full the client is no longer read until the tunnel drained
    (C{body_drained});
  - app to client: every byte to the transport; the tunnel stream is the
    connection's producer, so a client that does not read pauses it (and
    the tunnel's window stays shut: bounded memory);
  - the client's EOF ends the stream's client side; the app's EOF
    (C{response_ended}) closes the client's connection once what was
    written is flushed, and ends the stream's client side too: whichever
    side ends first, the tunnel stream is ended at both ends (or reset if
    that stalls), so its upgrade room is free at once at both ends of the
    tunnel;
  - a lost stream (the connector gone or draining, the stream reset, the
    tunnel's idle timeout) closes the client's connection at once, with a
    close frame (1001 "going away": "idle timeout", "the app's connector
    went away") if the app's bytes so far end at a frame boundary
    (L{appproxy.frontend.ws_frames}) and the app sent no close frame;
  - the session ending (the sweep of L{appproxy.frontend.ws_registry})
    sends a close frame (1008, "session ended") at the next frame boundary
    of the app's bytes, then closes the connection and resets the stream,
    so the app's side closes too; the service stopping does the same with
    1001 ("service stopping").

A client that does not read its side is cut (C{abortConnection}) at most
L{FRAME_WAIT} + L{CLOSE_GRACE} seconds after the service decided to close.
Each WebSocket ends with one access log line.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from appproxy.config import AppConfig
from appproxy.frontend.relay import relayed_headers
from appproxy.frontend.ws_frames import GOING_AWAY, FrameBoundaries, close_frame
from appproxy.frontend.ws_registry import OpenWebSocket, WebSocketRegistry
from appproxy.http.websocket import switching_protocols_head
from appproxy.observe.requests import app_metrics
from appproxy.tunnel.queue import ExchangeStream, ProxyJob

if TYPE_CHECKING:
    from appproxy.frontend.exchange import ExchangeRequest

__all__ = ["CLOSE_GRACE", "FRAME_WAIT", "WebSocketExchange"]

log = Logger()

#: Seconds a closing client connection has to take what was written to it
#: (then it is aborted); also how long an ended client side waits for the
#: app's end before the stream is reset.
CLOSE_GRACE = 1.5
#: Seconds the session's end waits for a frame boundary before closing
#: without a close frame.  With the sweep's second and L{CLOSE_GRACE}, a
#: client's connection ends within 4 s of its session's end, reading or not.
FRAME_WAIT = 1.5
#: The close frame's reason (1001) when the stream is lost after the 101.
IDLE_REASON = "idle timeout"
LOST_REASON = "the app's connector went away"


class WebSocketExchange:
    """One WebSocket handshake, then the WebSocket (see the module docstring)."""

    def __init__(
        self,
        request: ExchangeRequest,
        app: AppConfig,
        registry: WebSocketRegistry,
        entry: OpenWebSocket,
    ) -> None:
        self.request = request
        self.app = app
        self.registry = registry
        self.entry = entry
        self.clock = request.frontend.clock
        self._stream: ExchangeStream | None = None
        self._channel: Any = None
        self._transport: Any = None
        self._upgraded = False
        self._ended = False
        self._opened_at = 0.0
        self._to_app = 0
        self._to_client = 0
        self._frames = FrameBoundaries()
        self._client_frames = FrameBoundaries(from_client=True)
        #: Who sent the first close frame, and its code.
        self._first_close: tuple[str, int] | None = None
        #: The session ended; the close frame waits for a frame boundary.
        self._closing: str | None = None
        self._who_why = ("", "")
        #: The close frame the service sends when it closes (L{close}).
        self._close_frame = b""
        #: Closing: the frame boundary wait; the client's last chance to read.
        self._timer: IDelayedCall | None = None
        self._cut: IDelayedCall | None = None
        #: The client gone: the stream's reset unless the app closes first.
        self._reset: IDelayedCall | None = None
        request.notifyFinish().addBoth(self._request_over)

    # -- before the 101: the handshake is an ordinary request ------------------

    def _request_over(self, result: object) -> None:
        """The handshake's request is finished (refused, failed, client gone)."""
        if not self._upgraded:
            self.registry.release(self.entry)
        return None

    def stream_opened(self, stream: ExchangeStream) -> None:
        self._stream = stream
        self.request.stream_opened(stream)

    def body_wanted(self, stream: ExchangeStream) -> None:
        """Nothing to send before the 101: the client's bytes follow it."""

    def body_drained(self) -> None:
        if self._upgraded and not self._ended and self._channel is not None:
            self._channel.resume_input()

    def upstream_error(self, status: int, kind: str, detail: str) -> None:
        self.request.upstream_error(status, kind, detail)

    def response_started(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if status != 101 or self.request._done or self._stream is None:
            self.request.response_started(status, headers)
            return
        self._switch(headers)

    def response_data(self, data: bytes, last: bool = False) -> None:
        if not self._upgraded:
            self.request.response_data(data, last)
            return
        if last:  # (an upgraded stream's end comes on its own: whole, though)
            self.response_data(data)
            self.response_ended()
            return
        if self._ended or self._transport is None:
            return
        if self._closing is not None:
            taken = self._frames.feed(data, stop_at_boundary=True)
            self._send(data[:taken])
            if taken < len(data) or self._frames.at_boundary:
                self._close_frame_now()
            return
        self._frames.feed(data)
        self._close_seen("app", self._frames.close_code)
        self._send(data)

    def response_ended(self) -> None:
        if not self._upgraded:
            self.request.response_ended()
            return
        stream, self._stream = self._stream, None
        client_ended = self._reset is not None
        _stop(self._reset)
        self._reset = None
        self._end(*self._who_closed("app", "the app closed the connection"), flush=True)
        if stream is not None and not client_ended:
            # Our side ends too (what the client still sends goes nowhere), so
            # the stream is done at both ends now, not held open (with its
            # upgrade room) until its idle timeout; reset if that stalls.
            stream.end_body()
            self._reset = self.clock.callLater(CLOSE_GRACE, stream.cancel)

    def stream_lost(self, job: ProxyJob, reason: str) -> None:
        if not self._upgraded:
            self._stream = None
            self.request.stream_lost(job, reason)
            return
        self._stream = None
        _stop(self._reset)
        self._reset = None
        if self._ended:
            return
        if self._closing is not None:
            # No more of the app's bytes: the boundary awaited never comes.
            _stop(self._timer)
            self._close_without_frame()
            return
        # Going away: a close frame if the app's bytes end between frames.
        idle = reason.startswith("idle")
        self._who_why = ("idle-timeout" if idle else "connector-lost", reason)
        self._close_frame = close_frame(GOING_AWAY, IDLE_REASON if idle else LOST_REASON)
        if self._frames.at_boundary:
            self._close_frame_now()
        else:
            self._close_without_frame()

    # -- the switch ---------------------------------------------------------------

    def _switch(self, fields: list[tuple[bytes, bytes]]) -> None:
        request = self.request
        app = self.app
        mapping = request.frontend.mappings.get(app.name)
        if mapping is None:
            # Withdrawn by a reload while the handshake was on its way.
            request.response_started(101, fields)
            return
        channel: Any = request.channel
        fields = relayed_headers(fields, mapping if app.translate_urls_in_headers else None)
        # The request is over as twisted.web sees it: this exchange owns the
        # connection and the stream from now on.
        request._done = True
        request._stream = None
        request._job = None
        self._upgraded = True
        self._opened_at = time.monotonic()
        self._channel = channel
        self._transport = channel.transport
        self._transport.write(switching_protocols_head(fields))
        buffered = channel.upgrade(self)
        # The client's write buffer pauses the app's bytes (see pauseProducing).
        channel.registerProducer(self, True)
        if channel._waitingForTransport:
            self.pauseProducing()
        self.registry.opened(self.entry, self.close)
        log.info(
            "WebSocket {rid} to {app} open for {user}",
            rid=request.request_id,
            app=app.name,
            user=self.entry.user or "-",
        )
        if buffered:
            self.client_data(buffered)

    # -- the client's side (called by the channel) -------------------------------

    def pauseProducing(self) -> None:
        """The client's write buffer is full: stop taking the app's bytes."""
        if self._stream is not None:
            self._stream.pauseProducing()

    def resumeProducing(self) -> None:
        if self._stream is not None:
            self._stream.resumeProducing()

    def stopProducing(self) -> None:
        """The transport is going away: L{client_lost} follows, and ends the stream."""

    def client_data(self, data: bytes) -> None:
        """Bytes from the client: to the app."""
        stream = self._stream
        if self._ended or stream is None or self._closing is not None or not data:
            return
        self._to_app += len(data)
        self._client_frames.feed(data)
        self._close_seen("client", self._client_frames.close_code)
        if not stream.write_body(data):
            self._channel.pause_input()

    def client_lost(self, reason: Failure) -> None:
        """The client's connection is gone: end the stream's client side."""
        _stop(self._cut)
        self._cut = None
        self.registry.client_gone(self.entry)
        stream = self._stream
        if self._ended:
            return
        self._end(*self._who_closed("client", "the client closed the connection"), flush=False)
        if stream is not None:
            # The app gets what the client sent, then EOF; the stream is reset
            # if it does not close by itself soon.
            stream.end_body()
            stream.resumeProducing()
            self._reset = self.clock.callLater(CLOSE_GRACE, self._cancel_stream)

    # -- ending -------------------------------------------------------------------

    def _close_seen(self, side: str, code: int | None) -> None:
        if code is not None and self._first_close is None:
            self._first_close = (side, code)

    def _who_closed(self, side: str, what: str) -> tuple[str, str]:
        """Who ended the WebSocket: who sent the first close frame, else C{side}."""
        if self._first_close is None:
            return side, f"{what} without a close frame"
        who, code = self._first_close
        return who, f"{who} sent a close frame (code {code}); {what}"

    def close(self, who: str, why: str, code: int, reason: str) -> None:
        """
        End the WebSocket for the service's own reason (the session ended,
        the service stopping): a close frame (C{code}, C{reason}) at the next
        frame boundary, then the connection closed and the stream reset.
        """
        if self._ended or self._closing is not None:
            return
        self._closing = f"{who}: {why}"
        self._who_why = (who, why)
        self._close_frame = close_frame(code, reason)
        if self._frames.at_boundary:
            self._close_frame_now()
            return
        # Mid-frame: wait for its end, not for ever (the app may be slow, or
        # the client not reading: then it would not read the close frame either).
        self._timer = self.clock.callLater(FRAME_WAIT, self._close_without_frame)

    def _close_frame_now(self) -> None:
        who, why = self._who_why
        _stop(self._timer)
        self._timer = None
        # Never a second close frame after the app's own (RFC 6455 5.5.1).
        frames = self._frames
        if self._transport is not None and not frames.lost and frames.close_code is None:
            self._transport.write(self._close_frame)
        self._cancel_stream()
        self._end(who, why, flush=True)

    def _close_without_frame(self) -> None:
        self._timer = None
        if self._ended:
            return
        who, why = self._who_why
        self._cancel_stream()
        self._end(who, f"{why} (no frame boundary: closed without a close frame)", flush=True)

    def _cancel_stream(self) -> None:
        self._reset = None
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()

    def _send(self, data: bytes) -> None:
        if data:
            self._to_client += len(data)
            self._transport.write(data)

    def _end(self, who: str, why: str, *, flush: bool) -> None:
        """The WebSocket is over: close the client's side, log it, free its place."""
        if self._ended:
            return
        self._ended = True
        _stop(self._timer)
        self._timer = None
        channel = self._channel
        if channel is not None and channel._requestProducer is not None:
            channel.unregisterProducer()
        transport = self._transport
        if flush and transport is not None:
            # The channel's own close: it unregisters itself as the transport's
            # producer first, without which TLS would not begin its close.
            channel.loseConnection()
            # A client that does not read would hold the connection open.
            self._cut = self.clock.callLater(CLOSE_GRACE, transport.abortConnection)
        self.registry.release(self.entry)
        # Counted as a request (101) with its bytes; its lifetime is no latency.
        app_metrics(self.app.name).finished(101, None, self._to_app, self._to_client)
        log.info(
            "WebSocket {app} {user} {rid} {duration_s:.1f}s in={bytes_in} out={bytes_out}"
            " closed by {who}: {why}",
            app=self.app.name,
            user=self.entry.user or "-",
            rid=self.request.request_id,
            duration_s=time.monotonic() - self._opened_at,
            bytes_in=self._to_app,
            bytes_out=self._to_client,
            who=who,
            why=why,
            log_system="access",
        )


def _stop(timer: IDelayedCall | None) -> None:
    if timer is not None and timer.active():
        timer.cancel()
