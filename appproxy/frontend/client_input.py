"""
L{ClientInput}: how a streaming request stops and restarts reading its body
from the user, and how it drops the user.

Over HTTP/2 the request pauses its own stream (which then stops opening its
flow-control window).  Over HTTP/1.1 the body comes off the connection's
transport, whose reading the channel owns
(L{appproxy.frontend.channels.InputGate}): the request asks the channel to
hold it, so that neither the channel's own resume (its write buffer drained,
a response finished) nor the request's undoes the other's pause.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http

__all__ = ["ClientInput"]


class ClientInput:
    """Pausing and resuming the reading of one request's body."""

    def __init__(self, http2: bool) -> None:
        # No reference to the request, which holds this: no reference cycle,
        # so a finished request is freed at once, not by the collector.
        self._http2 = http2
        #: This request asked for reading to stop (and has not resumed it).
        self.paused = False

    def pause(self, request: http.Request) -> None:
        """Stop reading C{request}'s body from the user."""
        channel: Any = request.channel
        if self.paused or channel is None:
            return
        self.paused = True
        if self._http2:
            channel.pauseProducing()
        elif hasattr(channel, "pause_input"):
            channel.pause_input()
        else:
            request.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self, request: http.Request) -> None:
        """Read C{request}'s body from the user again."""
        channel: Any = request.channel
        if not self.paused or channel is None:
            return
        self.paused = False
        if self._http2:
            channel.resumeProducing()
        elif hasattr(channel, "resume_input"):
            channel.resume_input()
        else:
            request.transport.resumeProducing()  # type: ignore[union-attr]

    def abort(self, request: http.Request) -> None:
        """Reset C{request}'s HTTP/2 stream, or drop its HTTP/1.1 connection."""
        channel: Any = request.channel
        if channel is None:
            return
        if self._http2:
            channel.abortConnection()
        else:
            request.transport.abortConnection()  # type: ignore[union-attr]
