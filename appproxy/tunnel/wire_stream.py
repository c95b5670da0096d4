"""
One HTTP/2 stream's state, as the tunnel's connection keeps it: a small
slotted object (its state, both flow-control windows, what has been
received), and the receive-window strategy h2 uses (L{Window}).

A stream lives in the connection's C{streams} while it is open or
half-closed; once closed it is removed at once and only how it closed is
remembered (L{ENDED}, L{SENT_RESET}, L{RECEIVED_RESET}), for the frames a
peer may still have in flight (RFC 9113 section 5.1).
"""

from __future__ import annotations

from h2.exceptions import FlowControlError
from h2.stream import StreamState

from appproxy.tunnel.wire import MAX_WINDOW

OPEN = StreamState.OPEN
HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
CLOSED = StreamState.CLOSED

#: How a closed stream closed: END_STREAM both ways.
ENDED = 1
#: We sent RST_STREAM.
SENT_RESET = 2
#: The peer sent RST_STREAM.
RECEIVED_RESET = 3


class Window:
    """
    A receive window and when to reopen it: h2's C{WindowManager}
    algorithm (a WINDOW_UPDATE once half the window has been processed,
    or once 1024 octets have while it is exhausted).
    """

    __slots__ = ("current", "maximum", "processed")

    def __init__(self, size: int) -> None:
        self.current = size
        self.maximum = size
        self.processed = 0

    def consume(self, size: int) -> None:
        """The peer sent C{size} flow-controlled octets."""
        self.current -= size
        if self.current < 0:
            raise FlowControlError("Flow control window shrunk below 0")

    def opened(self, size: int) -> None:
        """We opened the window by C{size} (may be negative: a settings change)."""
        self.current += size
        if self.current > MAX_WINDOW:
            raise FlowControlError(f"Flow control window mustn't exceed {MAX_WINDOW}")
        if self.current > self.maximum:
            self.maximum = self.current

    def process(self, size: int) -> int:
        """C{size} received octets were consumed: the increment to send, or 0."""
        processed = self.processed + size
        if not processed:
            return 0
        current = self.current
        if processed >= self.maximum // 2 or (
            current == 0 and processed > min(1024, self.maximum // 4)
        ):
            increment = min(processed, self.maximum - current)
            self.processed = 0
            self.current = current + increment
            return increment
        self.processed = processed
        return 0


class WireStream:
    """
    An open or half-closed stream.

    @ivar outbound_window: what we may still send on it.
    @ivar inbound: its receive window.
    @ivar final_headers: its (request or final response) header block has
        been received: a further block is trailers.
    @ivar sent_headers: we sent our (request or final response) block.
    @ivar head: we sent a HEAD request on it (its response has no body).
    @ivar expected_length: the received block's content-length, or -1.
    """

    __slots__ = (
        "expected_length",
        "final_headers",
        "head",
        "inbound",
        "outbound_window",
        "received_length",
        "sent_headers",
        "state",
        "stream_id",
    )

    def __init__(
        self, stream_id: int, state: StreamState, outbound_window: int, inbound_window: int
    ) -> None:
        self.stream_id = stream_id
        self.state = state
        self.outbound_window = outbound_window
        self.inbound = Window(inbound_window)
        self.final_headers = False
        self.sent_headers = False
        self.head = False
        self.expected_length = -1
        self.received_length = 0

    @property
    def state_machine(self) -> WireStream:
        """For code written against h2's streams: C{stream.state_machine.state}."""
        return self

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    @property
    def open(self) -> bool:
        return self.state is not CLOSED

    def __repr__(self) -> str:
        return f"<WireStream {self.stream_id} {self.state.name}>"
