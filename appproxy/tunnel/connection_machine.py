"""
One tunnel connection as the service's end sees it, as a state machine
without I/O: the settings push, capacity, taking jobs and drain (the stream
level is L{appproxy.tunnel.machine}; liveness, PING, is the same at both
ends and stays in L{appproxy.tunnel.base}).

    connecting --handshake--> awaiting-settings --settings-acked--> ready
         \\                          |                                |
          \\------------- drain, GOAWAY, failed push ------> draining --idle--> (GOAWAY, close)
                                                                       lost --> closed

Capacity is the connector's C{SETTINGS_MAX_CONCURRENT_STREAMS} (capped)
less its upgrade capacity; C{open} counts the streams h2 counts open, the
control streams included, but not the upgraded ones.  The machine opens a
stream (L{PushSettings}, L{OpenStream}) only while C{open < capacity},
keeps at most one job wanted from the queue (L{WantJob}), and gives every
job the queue hands it exactly one answer: L{OpenStream}, or L{ReturnJob}
when it can no longer carry it.

Upgraded streams (WebSockets) have a budget of their own, so that idle
WebSockets cannot starve requests: the connector's upgrade capacity (the
C{appproxy-upgrade-capacity} field of its answer to the settings push, fed
with L{ConnectionInput.SETTINGS_ACKED}; 0 from a connector without it),
within its C{SETTINGS_MAX_CONCURRENT_STREAMS}.  C{upgrades} counts them;
the same rules hold with the upgrade queue: at most one upgrade wanted
(L{WantUpgrade}), every upgrade offered answered once (L{OpenUpgrade} or
L{ReturnUpgrade}).  Draining waits for both kinds to end.  An input a
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
    UPGRADE_OFFERED = "upgrade-offered"
    """The upgrade queue answered our wanted upgrade."""
    UPGRADE_CANCELLED = "upgrade-cancelled"
    """The upgrade queue answered with a job nobody wants any more."""
    UPGRADE_CLOSED = "upgrade-closed"
    """h2 counts one of our upgraded streams closed: its room is free."""
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
class WantUpgrade:
    """Ask the upgrade queue for one job."""


@attrs.frozen
class StopWantingUpgrade:
    """Withdraw the outstanding ask of the upgrade queue."""


@attrs.frozen
class OpenUpgrade:
    """Open an upgraded stream for the job just offered (its room is taken)."""


@attrs.frozen
class ReturnUpgrade:
    """The upgrade just offered cannot be carried here: hand it back."""


@attrs.frozen
class Close:
    """Say GOAWAY (unless C{goaway} is false: the peer said it) and close."""

    goaway: bool


@attrs.frozen
class Invalid:
    """An input the state does not allow: log it."""

    state: ConnectionState
    input: ConnectionInput


Action = (
    PushSettings
    | WantJob
    | StopWanting
    | OpenStream
    | ReturnJob
    | WantUpgrade
    | StopWantingUpgrade
    | OpenUpgrade
    | ReturnUpgrade
    | Close
    | Invalid
)

C = ConnectionState
N = ConnectionInput

#: The states of a connection not yet lost.
_OPEN = (C.CONNECTING, C.AWAITING_SETTINGS, C.READY, C.DRAINING)

#: (state, input) -> (next state, handler): as L{appproxy.tunnel.machine}.
TRANSITIONS: Mapping[tuple[ConnectionState, ConnectionInput], tuple[ConnectionState, str]] = {
    (C.CONNECTING, N.HANDSHAKE_DONE): (C.AWAITING_SETTINGS, "_push"),
    (C.AWAITING_SETTINGS, N.SETTINGS_ACKED): (C.READY, "_acked"),
    (C.READY, N.SETTINGS_ACKED): (C.READY, "_acked"),
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
    # Upgraded streams: opened only when ready, so closed only from then.
    **{(s, N.UPGRADE_OFFERED): (s, "_upgrade_offered") for s in ConnectionState},
    **{(s, N.UPGRADE_CANCELLED): (s, "_upgrade_cancelled") for s in _OPEN},
    **{(s, N.UPGRADE_CLOSED): (s, "_upgrade_closed") for s in (C.READY, C.DRAINING)},
    **{(s, N.CONNECTION_LOST): (C.CLOSED, "_lost") for s in _OPEN},
    # Closed: everything else is moot.
    **{
        (C.CLOSED, i): (C.CLOSED, "_nothing")
        for i in ConnectionInput
        if i not in (N.JOB_OFFERED, N.UPGRADE_OFFERED)
    },
}


@attrs.define(eq=False)
class ConnectionMachine:
    """
    One connection's state; C{max_capacity} caps what the peer offers for
    requests, C{max_upgrades} what it offers for upgraded streams.
    """

    max_capacity: int
    max_upgrades: int = 0
    state: ConnectionState = attrs.field(init=False, default=C.CONNECTING)
    capacity: int = attrs.field(init=False, default=0)
    """The connector's offer less its upgrade capacity, capped: how many
    request and control streams may be open at once."""
    open: int = attrs.field(init=False, default=0)
    """Streams open (user and control), as h2 counts them."""
    wanting: bool = attrs.field(init=False, default=False)
    """One job is asked of the queue."""
    advertised: int = attrs.field(init=False, default=0)
    """The connector's C{SETTINGS_MAX_CONCURRENT_STREAMS}."""
    upgrade_offer: int = attrs.field(init=False, default=0)
    """The connector's upgrade capacity, as its settings answer said."""
    upgrade_capacity: int = attrs.field(init=False, default=0)
    """How many upgraded streams may be open at once (within C{advertised})."""
    upgrades: int = attrs.field(init=False, default=0)
    """Upgraded streams open, as h2 counts them."""
    wanting_upgrade: bool = attrs.field(init=False, default=False)
    """One upgrade is asked of the upgrade queue."""
    push_pending: bool = attrs.field(init=False, default=False)
    """A settings push waits for room."""
    goaway_received: bool = attrs.field(init=False, default=False)
    closing: bool = attrs.field(init=False, default=False)
    """L{Close} was asked for."""

    def feed(self, event: ConnectionInput, value: int = 0) -> list[Action]:
        """
        Take one input (C{value}: the new capacity, for
        L{ConnectionInput.CAPACITY_CHANGED}; the connector's upgrade
        capacity, for L{ConnectionInput.SETTINGS_ACKED}); return what the
        shell must do.
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

    @property
    def upgrade_room(self) -> int:
        # Within the upgrade capacity, and within what the connector
        # advertises for all streams: the first settings push is opened
        # before that limit is known, so requests alone do not bound it.
        total = self.advertised - self.open - self.upgrades
        return max(0, min(self.upgrade_capacity - self.upgrades, total))

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

    def _acked(self, value: int) -> list[Action]:
        if value != self.upgrade_offer:
            self.upgrade_offer = max(0, value)
            return self._capacity(self.advertised)
        return [*self._fill(0), *self._fill_upgrade()]

    def _offered(self, value: int) -> list[Action]:
        self.wanting = False
        if self.state is not C.READY or self.open >= self.capacity:
            return [ReturnJob(), *self._close_if_idle()]
        self.open += 1
        return [OpenStream(), *self._fill(0)]

    def _capacity(self, value: int) -> list[Action]:
        self.advertised = max(0, value)
        upgrades = min(self.upgrade_offer, self.advertised)
        self.capacity = min(self.advertised - upgrades, self.max_capacity)
        self.upgrade_capacity = min(upgrades, self.max_upgrades)
        actions = self._stop_wanting() if self.open >= self.capacity else self._fill(0)
        if self.upgrades >= self.upgrade_capacity:
            return [*actions, *self._stop_wanting_upgrade()]
        return [*actions, *self._fill_upgrade()]

    def _stream_closed(self, value: int) -> list[Action]:
        if self.open <= 0:
            return [Invalid(self.state, N.STREAM_CLOSED)]
        self.open -= 1
        if self.state is C.DRAINING:
            return self._close_if_idle()
        if self.push_pending and self.room:
            return [*self._push(0), *self._fill_upgrade()]
        return [*self._fill(0), *self._fill_upgrade()]

    def _drain(self, value: int) -> list[Action]:
        self.push_pending = False
        return [*self._stop_wanting(), *self._stop_wanting_upgrade(), *self._close_if_idle()]

    def _goaway(self, value: int) -> list[Action]:
        self.goaway_received = True
        return self._drain(value)

    def _close_if_idle(self) -> list[Action]:
        if self.state is not C.DRAINING or self.open or self.upgrades or self.closing:
            return []
        self.closing = True
        return [Close(goaway=not self.goaway_received)]

    def _cancelled(self, value: int) -> list[Action]:
        self.wanting = False
        return self._fill(0)

    def _lost(self, value: int) -> list[Action]:
        self.open = 0
        self.upgrades = 0
        return [*self._stop_wanting(), *self._stop_wanting_upgrade()]

    # -- upgraded streams --------------------------------------------------

    def _fill_upgrade(self) -> list[Action]:
        if self.state is not C.READY or self.wanting_upgrade or not self.upgrade_room:
            return []
        self.wanting_upgrade = True
        return [WantUpgrade()]

    def _stop_wanting_upgrade(self) -> list[Action]:
        if not self.wanting_upgrade:
            return []
        self.wanting_upgrade = False
        return [StopWantingUpgrade()]

    def _upgrade_offered(self, value: int) -> list[Action]:
        self.wanting_upgrade = False
        if self.state is not C.READY or not self.upgrade_room:
            return [ReturnUpgrade(), *self._close_if_idle()]
        self.upgrades += 1
        return [OpenUpgrade(), *self._fill_upgrade()]

    def _upgrade_cancelled(self, value: int) -> list[Action]:
        self.wanting_upgrade = False
        return self._fill_upgrade()

    def _upgrade_closed(self, value: int) -> list[Action]:
        if self.upgrades <= 0:
            return [Invalid(self.state, N.UPGRADE_CLOSED)]
        self.upgrades -= 1
        if self.state is C.DRAINING:
            return self._close_if_idle()
        return self._fill_upgrade()
