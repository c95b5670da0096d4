"""
One tunnel connection as the service's end sees it, as a state machine
without I/O: the settings push, capacity, taking jobs and drain (the stream
level is L{appproxy.tunnel.machine}; liveness, PING, is the same at both
ends and stays in L{appproxy.tunnel.base}).

    connecting --handshake--> awaiting-settings --settings-acked--> ready
         \\                          |                                |
          \\------------- drain, GOAWAY, failed push ------> draining --idle--> (GOAWAY, close)
                                                                       lost --> closed

Capacity is the connector's C{SETTINGS_MAX_CONCURRENT_STREAMS} (capped);
C{open} counts the streams h2 counts open, the control streams included.
The machine opens a stream (L{PushSettings}, L{OpenStream}) only while
C{open < capacity}, keeps at most one job wanted from the queue
(L{WantJob}), and gives every job the queue hands it exactly one answer:
L{OpenStream}, or L{ReturnJob} when it can no longer carry it.  An input a
state does not allow is a defined error (L{Invalid}, logged by the shell),
never an exception; once closed, it asks for nothing more.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs


class ConnectionState(enum.Enum):
    # Members are singletons: identity hashing (C level) finds them in the
    # transition table without Enum's Python-level __hash__ on every input.
    __hash__ = object.__hash__
    CONNECTING = "connecting"
    """The transport is up; the connector's identity is not known yet."""
    AWAITING_SETTINGS = "awaiting-settings"
    """The settings were pushed; no job is taken until the connector acknowledges."""
    READY = "ready"
    """Jobs are taken while there is room."""
    DRAINING = "draining"
    """No new job; GOAWAY and close once the streams in flight have ended."""
    CLOSED = "closed"
    """The connection is gone."""


class ConnectionInput(enum.Enum):
    # Members are singletons: identity hashing (C level) finds them in the
    # transition table without Enum's Python-level __hash__ on every input.
    __hash__ = object.__hash__
    HANDSHAKE_DONE = "handshake-done"
    SETTINGS_ACKED = "settings-acked"
    SETTINGS_FAILED = "settings-failed"
    SETTINGS_CHANGED = "settings-changed"
    """New apps (a reload): push the settings again."""
    CAPACITY_CHANGED = "capacity-changed"
    """The connector's C{SETTINGS_MAX_CONCURRENT_STREAMS} changed."""
    JOB_OFFERED = "job-offered"
    """The queue answered our wanted job."""
    JOB_CANCELLED = "job-cancelled"
    """The queue answered with a job nobody wants any more."""
    STREAM_CLOSED = "stream-closed"
    """h2 counts one of our streams closed: its room is free."""
    DRAIN_REQUESTED = "drain-requested"
    GOAWAY_RECEIVED = "goaway-received"
    CONNECTION_LOST = "connection-lost"


@attrs.frozen
class PushSettings:
    """Open a control stream and push the settings (its room is taken)."""


@attrs.frozen
class WantJob:
    """Ask the queue for one job."""


@attrs.frozen
class StopWanting:
    """Withdraw the outstanding ask."""


@attrs.frozen
class OpenStream:
    """Open a stream for the job just offered (its room is taken)."""


@attrs.frozen
class ReturnJob:
    """The job just offered cannot be carried here: hand it back (it is retried)."""


@attrs.frozen
class Close:
    """Say GOAWAY (unless C{goaway} is false: the peer said it) and close."""

    goaway: bool


@attrs.frozen
class Invalid:
    """An input the state does not allow: log it."""

    state: ConnectionState
    input: ConnectionInput


Action = PushSettings | WantJob | StopWanting | OpenStream | ReturnJob | Close | Invalid

C = ConnectionState
N = ConnectionInput

#: The states of a connection not yet lost.
_OPEN = (C.CONNECTING, C.AWAITING_SETTINGS, C.READY, C.DRAINING)

#: (state, input) -> (next state, handler): as L{appproxy.tunnel.machine}.
TRANSITIONS: Mapping[tuple[ConnectionState, ConnectionInput], tuple[ConnectionState, str]] = {
    (C.CONNECTING, N.HANDSHAKE_DONE): (C.AWAITING_SETTINGS, "_push"),
    (C.AWAITING_SETTINGS, N.SETTINGS_ACKED): (C.READY, "_fill"),
    (C.READY, N.SETTINGS_ACKED): (C.READY, "_fill"),
    (C.DRAINING, N.SETTINGS_ACKED): (C.DRAINING, "_nothing"),
    (C.AWAITING_SETTINGS, N.SETTINGS_FAILED): (C.DRAINING, "_drain"),
    (C.READY, N.SETTINGS_FAILED): (C.DRAINING, "_drain"),
    (C.DRAINING, N.SETTINGS_FAILED): (C.DRAINING, "_nothing"),
    (C.CONNECTING, N.SETTINGS_CHANGED): (C.CONNECTING, "_nothing"),
    (C.AWAITING_SETTINGS, N.SETTINGS_CHANGED): (C.AWAITING_SETTINGS, "_push"),
    (C.READY, N.SETTINGS_CHANGED): (C.READY, "_push"),
    (C.DRAINING, N.SETTINGS_CHANGED): (C.DRAINING, "_nothing"),
    # A job offered is always answered: opened, or handed back.
    **{(s, N.JOB_OFFERED): (s, "_offered") for s in ConnectionState},
    (C.READY, N.DRAIN_REQUESTED): (C.DRAINING, "_drain"),
    (C.AWAITING_SETTINGS, N.DRAIN_REQUESTED): (C.DRAINING, "_drain"),
    (C.CONNECTING, N.DRAIN_REQUESTED): (C.DRAINING, "_drain"),
    (C.DRAINING, N.DRAIN_REQUESTED): (C.DRAINING, "_nothing"),
    **{(s, N.CAPACITY_CHANGED): (s, "_capacity") for s in _OPEN},
    **{(s, N.STREAM_CLOSED): (s, "_stream_closed") for s in (C.AWAITING_SETTINGS, C.READY)},
    (C.DRAINING, N.STREAM_CLOSED): (C.DRAINING, "_stream_closed"),
    **{(s, N.GOAWAY_RECEIVED): (C.DRAINING, "_goaway") for s in _OPEN},
    **{(s, N.JOB_CANCELLED): (s, "_cancelled") for s in _OPEN},
    **{(s, N.CONNECTION_LOST): (C.CLOSED, "_lost") for s in _OPEN},
    # Closed: everything else is moot.
    **{(C.CLOSED, i): (C.CLOSED, "_nothing") for i in ConnectionInput if i is not N.JOB_OFFERED},
}


@attrs.define(eq=False)
class ConnectionMachine:
    """One connection's state; C{max_capacity} caps what the peer offers."""

    max_capacity: int
    state: ConnectionState = attrs.field(init=False, default=C.CONNECTING)
    capacity: int = attrs.field(init=False, default=0)
    """The connector's offer, capped: how many streams may be open at once."""
    open: int = attrs.field(init=False, default=0)
    """Streams open (user and control), as h2 counts them."""
    wanting: bool = attrs.field(init=False, default=False)
    """One job is asked of the queue."""
    push_pending: bool = attrs.field(init=False, default=False)
    """A settings push waits for room."""
    goaway_received: bool = attrs.field(init=False, default=False)
    closing: bool = attrs.field(init=False, default=False)
    """L{Close} was asked for."""

    def feed(self, event: ConnectionInput, value: int = 0) -> list[Action]:
        """
        Take one input (C{value}: the new capacity, for
        L{ConnectionInput.CAPACITY_CHANGED}); return what the shell must do.
        """
        entry = TRANSITIONS.get((self.state, event))
        if entry is None:
            return [Invalid(self.state, event)]
        self.state, handler = entry
        actions: list[Action] = getattr(self, handler)(value)
        return actions

    @property
    def room(self) -> int:
        return max(0, self.capacity - self.open)

    # -- handlers ----------------------------------------------------------

    def _nothing(self, value: int) -> list[Action]:
        return []

    def _push(self, value: int) -> list[Action]:
        if self.state is C.READY and not self.room:
            self.push_pending = True
            return []
        # Before the first acknowledgement, h2 enforces the peer's limit on
        # its own (the first push precedes any capacity we know of).
        self.push_pending = False
        self.open += 1
        return [PushSettings()]

    def _fill(self, value: int) -> list[Action]:
        if self.state is not C.READY or self.wanting or self.open >= self.capacity:
            return []
        self.wanting = True
        return [WantJob()]

    def _stop_wanting(self) -> list[Action]:
        if not self.wanting:
            return []
        self.wanting = False
        return [StopWanting()]

    def _offered(self, value: int) -> list[Action]:
        self.wanting = False
        if self.state is not C.READY or self.open >= self.capacity:
            return [ReturnJob(), *self._close_if_idle()]
        self.open += 1
        return [OpenStream(), *self._fill(0)]

    def _capacity(self, value: int) -> list[Action]:
        self.capacity = max(0, min(value, self.max_capacity))
        if self.open >= self.capacity:
            return self._stop_wanting()
        return self._fill(0)

    def _stream_closed(self, value: int) -> list[Action]:
        if self.open <= 0:
            return [Invalid(self.state, N.STREAM_CLOSED)]
        self.open -= 1
        if self.state is C.DRAINING:
            return self._close_if_idle()
        if self.push_pending and self.room:
            return self._push(0)
        return self._fill(0)

    def _drain(self, value: int) -> list[Action]:
        self.push_pending = False
        return [*self._stop_wanting(), *self._close_if_idle()]

    def _goaway(self, value: int) -> list[Action]:
        self.goaway_received = True
        return self._drain(value)

    def _close_if_idle(self) -> list[Action]:
        if self.state is not C.DRAINING or self.open or self.closing:
            return []
        self.closing = True
        return [Close(goaway=not self.goaway_received)]

    def _cancelled(self, value: int) -> list[Action]:
        self.wanting = False
        return self._fill(0)

    def _lost(self, value: int) -> list[Action]:
        self.open = 0
        return self._stop_wanting()
