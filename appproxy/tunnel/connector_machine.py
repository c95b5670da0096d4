"""
One tunnel connection as the connector's end sees it, as a state machine
without I/O (the service's end is L{appproxy.tunnel.connection_machine}; a
request stream at the connector is L{appproxy.tunnel.connector_stream}).

    awaiting-settings --settings-applied--> ready
            \\                                 |
             \\------ drain, GOAWAY ------> draining --idle--> (GOAWAY, close)
                                                     lost --> closed

The service opens the streams: the machine decides whether each is taken.
Two kinds share our C{SETTINGS_MAX_CONCURRENT_STREAMS} (C{capacity +
upgrade_capacity}): a request stream is taken (L{AcceptRequest}) only while
C{active < capacity}, an upgraded (WebSocket) stream (L{AcceptUpgrade}) only
while C{upgrades < upgrade_capacity}, and neither while draining; else it is
refused (L{Refuse}, C{REFUSED_STREAM}: the service may retry it elsewhere).
So idle WebSockets cannot take the room of requests, nor requests theirs.
A WebSocket cannot be drained (it never ends on its own): a drain we start
ends every upgraded stream at once (L{EndUpgrades}), so it waits only for
the requests in flight.
The settings push comes on a control stream (L{AcceptSettings}); a refused
push (a 400) leaves the connection waiting for a good one (the service
drains it).  Draining advertises capacity 0 (L{Advertise}) and closes once
no stream of either kind is active: the connection closes right after
its GOAWAY (h2 treated it as closed for both ends at once).  Requests are
taken before the first settings too: the backend's apps are the
connector's, shared by its connections.  An input a state does not allow is
a defined error (L{Invalid}, logged by the shell), never an exception.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

import attrs


class ConnectorState(enum.Enum):
    # Members are singletons: hash by identity, not by name (a Python call).
    __hash__ = object.__hash__

    AWAITING_SETTINGS = "awaiting-settings"
    """Connected; the service's settings were not applied on this connection yet."""
    READY = "ready"
    """Settings applied: requests are taken while there is room."""
    DRAINING = "draining"
    """Capacity 0: no new request; GOAWAY and close once idle."""
    CLOSED = "closed"
    """The connection is gone."""


class ConnectorInput(enum.Enum):
    # Members are singletons: hash by identity, not by name (a Python call).
    __hash__ = object.__hash__

    REQUEST_OPENED = "request-opened"
    """The service opened a stream for a user request."""
    UPGRADE_OPENED = "upgrade-opened"
    """The service opened an upgraded stream (extended CONNECT, C{:protocol websocket})."""
    CONTROL_OPENED = "control-opened"
    """The service opened its settings stream."""
    UNKNOWN_CONTROL = "unknown-control"
    """A control stream of a kind we do not know."""
    SETTINGS_APPLIED = "settings-applied"
    SETTINGS_REFUSED = "settings-refused"
    REQUEST_FINISHED = "request-finished"
    """A request stream taken earlier ended (answered, reset or failed)."""
    UPGRADE_FINISHED = "upgrade-finished"
    """An upgraded stream taken earlier ended."""
    DRAIN_REQUESTED = "drain-requested"
    """Stopping, or our certificate expires."""
    GOAWAY_RECEIVED = "goaway-received"
    CONNECTION_LOST = "connection-lost"


@attrs.frozen
class AcceptRequest:
    """Handle the request stream (its room is taken)."""


@attrs.frozen
class AcceptUpgrade:
    """Handle the upgraded stream (its room is taken)."""


@attrs.frozen
class AcceptSettings:
    """Read the settings document on the control stream."""


@attrs.frozen
class Refuse:
    """Reset the stream just opened with C{REFUSED_STREAM}."""


@attrs.frozen
class EndUpgrades:
    """End every upgraded stream now (their apps' connections closed, the streams reset)."""


@attrs.frozen
class Advertise:
    """Send C{SETTINGS_MAX_CONCURRENT_STREAMS = capacity}."""

    capacity: int


@attrs.frozen
class Close:
    """Say GOAWAY (unless C{goaway} is false: the peer said it) and close."""

    goaway: bool


@attrs.frozen
class Invalid:
    """An input the state does not allow: log it."""

    state: ConnectorState
    input: ConnectorInput


Action = (
    AcceptRequest
    | AcceptUpgrade
    | AcceptSettings
    | Refuse
    | Advertise
    | EndUpgrades
    | Close
    | Invalid
)

#: The action of every request taken (frozen, without fields: made once).
_ACCEPT_REQUEST = AcceptRequest()
_ACCEPT_UPGRADE = AcceptUpgrade()
_END_UPGRADES = EndUpgrades()

C = ConnectorState
N = ConnectorInput
_OPEN = (C.AWAITING_SETTINGS, C.READY, C.DRAINING)
_TAKING = (C.AWAITING_SETTINGS, C.READY)

#: (state, input) -> (next state, handler): as L{appproxy.tunnel.machine}.
TRANSITIONS: Mapping[tuple[ConnectorState, ConnectorInput], tuple[ConnectorState, str]] = {
    **{(s, N.REQUEST_OPENED): (s, "_request") for s in _TAKING},
    (C.DRAINING, N.REQUEST_OPENED): (C.DRAINING, "_refuse"),
    **{(s, N.UPGRADE_OPENED): (s, "_upgrade") for s in _TAKING},
    (C.DRAINING, N.UPGRADE_OPENED): (C.DRAINING, "_refuse"),
    **{(s, N.CONTROL_OPENED): (s, "_control") for s in _TAKING},
    (C.DRAINING, N.CONTROL_OPENED): (C.DRAINING, "_refuse"),
    **{(s, N.UNKNOWN_CONTROL): (s, "_refuse") for s in _OPEN},
    **{(s, N.SETTINGS_APPLIED): (C.READY, "_nothing") for s in _TAKING},
    **{(s, N.SETTINGS_REFUSED): (s, "_nothing") for s in _TAKING},
    # A push answered after the drain began: moot.
    (C.DRAINING, N.SETTINGS_APPLIED): (C.DRAINING, "_nothing"),
    (C.DRAINING, N.SETTINGS_REFUSED): (C.DRAINING, "_nothing"),
    **{(s, N.REQUEST_FINISHED): (s, "_finished") for s in _OPEN},
    **{(s, N.UPGRADE_FINISHED): (s, "_upgrade_finished") for s in _OPEN},
    **{(s, N.DRAIN_REQUESTED): (C.DRAINING, "_drain") for s in _TAKING},
    (C.DRAINING, N.DRAIN_REQUESTED): (C.DRAINING, "_nothing"),
    **{(s, N.GOAWAY_RECEIVED): (C.DRAINING, "_goaway") for s in _OPEN},
    **{(s, N.CONNECTION_LOST): (C.CLOSED, "_lost") for s in _OPEN},
    # Closed: what arrives late is moot.
    **{(C.CLOSED, i): (C.CLOSED, "_nothing") for i in ConnectorInput},
}


@attrs.define(eq=False)
class ConnectorMachine:
    """
    One connection's state at the connector: C{capacity} request streams
    and C{upgrade_capacity} upgraded streams is what we offer.
    """

    capacity: int
    upgrade_capacity: int = 0
    state: ConnectorState = attrs.field(init=False, default=C.AWAITING_SETTINGS)
    active: int = attrs.field(init=False, default=0)
    """Request streams taken and not finished."""
    upgrades: int = attrs.field(init=False, default=0)
    """Upgraded streams taken and not finished."""
    goaway_received: bool = attrs.field(init=False, default=False)
    closing: bool = attrs.field(init=False, default=False)
    """L{Close} was asked for."""

    def feed(self, event: ConnectorInput) -> list[Action]:
        """Take one input; return what the shell must do."""
        entry = _DISPATCH.get((self.state, event))
        if entry is None:
            return [Invalid(self.state, event)]
        self.state, handler = entry
        return handler(self)

    @property
    def advertised(self) -> int:
        """The C{SETTINGS_MAX_CONCURRENT_STREAMS} we offer now."""
        if self.state in (C.DRAINING, C.CLOSED):
            return 0
        return self.capacity + self.upgrade_capacity

    # -- handlers ----------------------------------------------------------

    def _nothing(self) -> list[Action]:
        return []

    def _request(self) -> list[Action]:
        if self.active >= self.capacity:
            # h2 enforces our limit; a stream past it is refused all the same.
            return [Refuse()]
        self.active += 1
        return [_ACCEPT_REQUEST]

    def _upgrade(self) -> list[Action]:
        if self.upgrades >= self.upgrade_capacity:
            return [Refuse()]
        self.upgrades += 1
        return [_ACCEPT_UPGRADE]

    def _control(self) -> list[Action]:
        return [AcceptSettings()]

    def _refuse(self) -> list[Action]:
        return [Refuse()]

    def _finished(self) -> list[Action]:
        if self.active <= 0:
            return [Invalid(self.state, N.REQUEST_FINISHED)]
        self.active -= 1
        return self._close_if_idle()

    def _upgrade_finished(self) -> list[Action]:
        if self.upgrades <= 0:
            return [Invalid(self.state, N.UPGRADE_FINISHED)]
        self.upgrades -= 1
        return self._close_if_idle()

    def _drain(self) -> list[Action]:
        # The upgraded streams end at once (each then finishes): the close
        # comes with the last request's end, or the last upgrade's.
        ending: list[Action] = [_END_UPGRADES] if self.upgrades else []
        return [Advertise(0), *ending, *self._close_if_idle()]

    def _goaway(self) -> list[Action]:
        self.goaway_received = True
        return self._close_if_idle()

    def _close_if_idle(self) -> list[Action]:
        if self.state is not C.DRAINING or self.active or self.upgrades or self.closing:
            return []
        self.closing = True
        return [Close(goaway=not self.goaway_received)]

    def _lost(self) -> list[Action]:
        self.active = 0
        self.upgrades = 0
        return []


#: L{TRANSITIONS} with the handlers looked up once, not by name per input.
_DISPATCH: Mapping[
    tuple[ConnectorState, ConnectorInput],
    tuple[ConnectorState, Callable[[ConnectorMachine], list[Action]]],
] = {pair: (state, getattr(ConnectorMachine, name)) for pair, (state, name) in TRANSITIONS.items()}
