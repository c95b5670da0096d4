"""
What the tunnel's stream machines share, without I/O: the base of their
state and input enums, the timer actions, the invalid-input action, and the
machine base that dispatches inputs by a transition table and keeps the
stream's one timer.

The machines are L{appproxy.tunnel.machine} and
L{appproxy.tunnel.upgrade_machine} (the service's end), and
L{appproxy.tunnel.connector_stream} and
L{appproxy.tunnel.connector_upgrade} (the connector's).  Each has a
C{TRANSITIONS} table, (state, input) -> (next state, handler name or
C{None}); L{dispatch} looks its handlers up once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import attrs


class MachineEnum(enum.Enum):
    """A machine's states, or its inputs."""

    # Members are singletons: identity hashing (C level) finds them in the
    # transition table without Enum's Python-level __hash__ on every input.
    __hash__ = object.__hash__


@attrs.frozen
class SetTimer:
    """Arm the stream's one timer to fire at C{at} (replacing any armed one)."""

    at: float


@attrs.frozen
class CancelTimer:
    """Disarm the stream's timer."""


@attrs.frozen
class ResetStream:
    """Reset the stream (C{CANCEL} for a timeout, C{INTERNAL_ERROR} for a fault)."""

    code: str


StateT = TypeVar("StateT", bound=enum.Enum)
InputT = TypeVar("InputT", bound=enum.Enum)
ActionT = TypeVar("ActionT")


@attrs.frozen
class Invalid(Generic[StateT, InputT]):
    """An input the state does not allow: log it; the actions after it end the stream."""

    state: StateT
    input: InputT


#: Frozen and without fields: made once.
_CANCEL_TIMER = CancelTimer()

#: A machine's handler: C{(machine, now)} -> the actions.
Handler = Callable[[Any, float], list[Any]]
#: (state, input) -> (next state, handler or C{None}).
Dispatch = Mapping[tuple[Any, Any], tuple[Any, Handler | None]]


def dispatch(
    transitions: Mapping[tuple[StateT, InputT], tuple[StateT, str | None]], machine: type
) -> Dispatch:
    """C{transitions} with its handlers, methods of C{machine}, looked up once."""
    return {
        pair: (state, None if name is None else getattr(machine, name))
        for pair, (state, name) in transitions.items()
    }


@attrs.define(eq=False)
class TimerMachine(Generic[StateT, InputT, ActionT]):
    """
    One stream's state and its one timer.  A subclass sets L{DISPATCH} (its
    transitions, see L{dispatch}), L{ENDED}, L{RESET} and C{state}'s first
    value, and says how an input out of order ends the stream (L{_abandon}).

    C{ActionT} is the machine's union of actions; it holds L{SetTimer},
    L{CancelTimer} and L{Invalid}, which the return types here name beside
    it.
    """

    state: StateT = attrs.field(init=False)
    armed: float | None = attrs.field(init=False, default=None)
    """When the armed timer fires, if one is."""

    DISPATCH: ClassVar[Dispatch] = {}
    #: The states of an ended stream.
    ENDED: ClassVar[frozenset[Any]] = frozenset()
    #: The state of a stream ended early (an input out of order ends there).
    RESET: ClassVar[Any]

    @property
    def ended(self) -> bool:
        return self.state in self.ENDED

    def feed(
        self, event: InputT, now: float
    ) -> list[ActionT | Invalid[StateT, InputT] | CancelTimer]:
        """Take one input at time C{now}; return what the shell must do."""
        entry = self.DISPATCH.get((self.state, event))
        if entry is None:
            return self._invalid(event)
        self.state, handler = entry
        if handler is None:
            return []
        actions: list[ActionT | Invalid[StateT, InputT] | CancelTimer] = handler(self, now)
        return actions

    def _invalid(self, event: InputT) -> list[ActionT | Invalid[StateT, InputT] | CancelTimer]:
        """
        C{event} is not allowed in the current state: log it (L{Invalid}),
        disarm the timer, and end the stream (L{_abandon}).
        """
        state = self.state
        self.state = self.RESET
        actions: list[ActionT | Invalid[StateT, InputT] | CancelTimer] = [Invalid(state, event)]
        actions += self._stop(0.0)
        actions += self._abandon(state, f"{event.value} is not allowed in {state.value}")
        return actions

    def _abandon(self, state: StateT, reason: str) -> list[ActionT]:
        """End the stream, found in C{state} (L{RESET} now), for C{reason}."""
        raise NotImplementedError

    def _stop(self, now: float) -> list[ActionT | CancelTimer]:
        if self.armed is None:
            return []
        self.armed = None
        return [_CANCEL_TIMER]

    def _arm(self, at: float) -> list[ActionT | SetTimer]:
        self.armed = at
        return [SetTimer(at)]


@attrs.define(eq=False)
class IdleTimerMachine(TimerMachine[StateT, InputT, ActionT]):
    """
    A machine that times idleness with a lazy timer: moving bytes only note
    the time (C{last}); when the one armed timer fires, the machine either
    ends the stream (L{_timed_out}) or asks for the timer again at the new
    deadline (L{due}).  Moving bytes costs no timer call.
    """

    last: float = attrs.field(init=False, default=0.0)
    """When the current wait began, or bytes last moved."""

    def due(self) -> float | None:
        """When the current wait runs out, or C{None} while it is stopped."""
        raise NotImplementedError

    def _timed_out(self) -> list[ActionT | SetTimer]:
        """The wait ran out: end the stream."""
        raise NotImplementedError

    def _restart(self, now: float) -> list[ActionT | SetTimer]:
        # A new wait begins.
        self.last = now
        return self._rearm()

    def _moved(self, now: float) -> list[ActionT]:
        self.last = now
        return []

    def _timer_fired(self, now: float) -> list[ActionT | SetTimer]:
        self.armed = None
        due = self.due()
        if due is None:
            # Held back: the clock is stopped; moving again arms it.
            return []
        if now + 1e-6 < due:
            return self._arm(due)
        return self._timed_out()

    def _rearm(self) -> list[ActionT | SetTimer]:
        due = self.due()
        if due is None or (self.armed is not None and self.armed <= due):
            # Stopped, or the armed timer fires first and will look again.
            return []
        return self._arm(due)
