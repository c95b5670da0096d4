"""
One tunnel stream's outbound state, shared by both ends' stream classes.
"""

from __future__ import annotations

from collections import deque

import attrs


@attrs.define(eq=False)
class TunnelStream:
    """
    One stream's outbound state.  Subclasses add what the stream is for.
    """

    stream_id: int
    """The HTTP/2 stream id."""
    outbound: deque[bytes] = attrs.field(init=False, factory=deque)
    """DATA waiting for flow-control window."""
    outbound_size: int = attrs.field(init=False, default=0)
    """How many bytes C{outbound} holds."""
    end_pending: bool = attrs.field(init=False, default=False)
    """C{end_stream} was asked for while data was buffered."""
    closed: bool = attrs.field(init=False, default=False)
    """The stream has ended or been reset; nothing more is sent."""
    data_held: bool = attrs.field(init=False, default=False)
    """C{outbound} holds DATA until the writes held are released (see
    L{appproxy.tunnel.outbound.hold_writes})."""
    local_closed: bool = attrs.field(init=False, default=False)
    """Our side has sent END_STREAM."""
    request_id: str = attrs.field(init=False, default="-")
    """The user request's id, for the logs (C{-} for control streams)."""

    def outbound_drained(self) -> None:
        """
        The outbound buffer emptied after having been blocked: resume whatever
        produces this stream's data.
        """

    def stream_aborted(self, reason: str) -> None:
        """
        The stream was reset by the peer or the connection went away.
        """
