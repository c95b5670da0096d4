"""
The response relay: the internal application's answer, as it comes out of the
tunnel, passed on to the user: status, headers (translated), body with back
pressure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web import http

from appproxy.frontend.answers import reason_phrase
from appproxy.http.translate import UrlMapping, translate_response_headers
from appproxy.identity.headers import drop_appproxy_set_cookies
from appproxy.tunnel.queue import ExchangeStream

__all__ = ["H2_QUEUE_LIMIT", "H2_QUEUE_POLL", "ResponseRelay", "relayed_headers"]

#: Response bytes queued for an HTTP/2 client above which the tunnel stream is
#: held; it is released below half of it.  With the tunnel's stream window
#: behind it, what one download may hold in the service (512 KiB: a 100 MiB
#: download over HTTP/2 as fast as with 2 MiB, 2 MiB less at its peak).
H2_QUEUE_LIMIT = 512 << 10
#: How often a held stream checks whether the HTTP/2 client caught up, on a
#: connection that cannot say so itself (the public listener's can:
#: L{appproxy.frontend.h2_guard.GuardedH2Connection.watch_drain}).
H2_QUEUE_POLL = 0.002


def relayed_headers(
    headers: Sequence[tuple[bytes, bytes]], mapping: UrlMapping | None
) -> list[tuple[bytes, bytes]]:
    """
    The response headers the user gets: without cookies that would set
    appproxy's own, and with internal URLs translated by C{mapping}, if given
    (the app asks for it).
    """
    relayed = drop_appproxy_set_cookies(headers)
    if mapping is not None:
        relayed = translate_response_headers(relayed, mapping)
    return relayed


@attrs.define(eq=False)
class ResponseRelay:
    """
    Writes one response from a tunnel stream to the user's request.

    Back pressure: the tunnel stream is the request's producer, so the
    client's transport pauses it.  Twisted's HTTP/2 server, though, queues
    response data up to the client's flow-control window, which a client may
    make huge and then not read: above L{H2_QUEUE_LIMIT} queued bytes the
    stream is also held until the queue drains.
    """

    request: http.Request
    """The user's request."""
    stream: ExchangeStream
    """The tunnel stream the response comes from."""
    clock: IReactorTime
    http2: bool
    """The user's request came over HTTP/2."""
    _check: IDelayedCall | None = attrs.field(init=False, default=None)
    """While the stream is held, without a drain watch: the next look at the
    client's queue."""
    _held: bool = attrs.field(init=False, default=False)
    """The stream is held until the client's queue drains."""

    def start(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Send the status and C{headers} (as they are); take the body from the stream."""
        self.request.setResponseCode(status, reason_phrase(status))
        raw = self.request.responseHeaders
        for name, value in headers:
            raw.addRawHeader(name, value)
        self.request.registerProducer(self.stream, True)

    def data(self, data: bytes) -> None:
        """Pass on a piece of the body."""
        if not data and self.request.startedWriting:
            # Nothing to pass on (the empty DATA frame that ends a stream):
            # for an HTTP/2 client twisted.web would still queue it and
            # turn its sending loop once more for it.
            return
        if self.http2 and not self.request.startedWriting:
            connection = self._h2_connection()
            if hasattr(connection, "write_first"):
                # The header block and the first data in one write.
                connection.write_first(self.request, data)
            else:
                self.request.write(data)
        else:
            self.request.write(data)
        if self.http2 and not self._held and self._h2_queued() > H2_QUEUE_LIMIT:
            self.stream.hold()
            self._held = True
            connection = self._h2_connection()
            if hasattr(connection, "watch_drain"):
                # Released as soon as the sending loop drains the queue.
                connection.watch_drain(self._stream_id(), H2_QUEUE_LIMIT // 2, self._drained)
            else:
                self._check = self.clock.callLater(H2_QUEUE_POLL, self._release)

    def last(self, data: bytes) -> None:
        """
        Pass on the last piece of the body (maybe empty): the caller then
        finishes the request.  For an HTTP/2 client of the public listener
        the data carries the stream's end when it goes at once
        (L{appproxy.frontend.h2_guard.GuardedH2Connection.write_last}).
        """
        request = self.request
        request.unregisterProducer()
        if self.http2:
            connection = self._h2_connection()
            if hasattr(connection, "write_last"):
                connection.write_last(request, data)
                return
        if data or not request.startedWriting:
            request.write(data)

    def stop(self) -> None:
        """The exchange is over: stop watching the client's queue."""
        if self._check is not None and self._check.active():
            self._check.cancel()
        self._check = None
        if self._held:
            connection = self._h2_connection()
            if hasattr(connection, "unwatch_drain"):
                connection.unwatch_drain(self._stream_id())

    def _h2_connection(self) -> Any:
        channel: Any = self.request.channel
        return None if channel is None else channel._conn

    def _stream_id(self) -> int:
        channel: Any = self.request.channel
        return int(channel.streamID)

    def _h2_queued(self) -> int:
        """Response bytes Twisted's HTTP/2 server queued for this stream."""
        channel: Any = self.request.channel
        if channel is None:
            return 0
        queue = channel._conn._outboundStreamQueues.get(channel.streamID)
        if not queue:
            return 0  # the usual case: the data went at once
        return sum(len(chunk) for chunk in queue if isinstance(chunk, bytes))

    def _drained(self) -> None:
        self._held = False
        self.stream.release()

    def _release(self) -> None:
        """The poll, for an HTTP/2 connection that cannot say when it drained."""
        self._check = None
        if self._h2_queued() > H2_QUEUE_LIMIT // 2:
            self._check = self.clock.callLater(H2_QUEUE_POLL, self._release)
            return
        self._held = False
        self.stream.release()
