"""
One upgraded tunnel stream (a WebSocket) as the service's end sees it, as a
state machine without I/O, in the manner of L{appproxy.tunnel.machine} (the
request streams').  The shell is L{appproxy.tunnel.service_upgrade}.

    opening --accepted--> open --both ends' END_STREAM--> done
       |  \\--refused--> responding --response ended--> done
       |                     (an ordinary response: the app said no)
       \\--error answer--> done
    any live state --reset, cancel, failure, timeout--> reset

Timing, lazily as in L{appproxy.tunnel.machine} (bytes moving only note the
time; the one armed timer looks again when it fires):

 - opening: the connector's answer within C{answer_limit} seconds (the
   app's backend timeout and a grace), else a 504 for the user;
 - open: idle for C{idle_limit} seconds (the app's WebSocket idle timeout):
   no byte either way.  Bytes in either direction restart the clock, pings
   included (they are bytes).  The clock is stopped while a direction is
   held back with bytes waiting: the client side not reading (paused), or
   the connector's window shut on the client's bytes.  Such a WebSocket is
   busy, not idle; the windows bound what it holds;
 - responding: as a request's response body, C{answer_limit} without a
   byte while the user side takes it.

Each direction ends on its own (half-closed): the app's END_STREAM
(L{UpgradeInput.REMOTE_ENDED}) and the client's (L{UpgradeInput.LOCAL_ENDED});
the stream is done once both have.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from appproxy.tunnel.machine import AnswerError
from appproxy.tunnel.machine_base import (
    CancelTimer,
    IdleTimerMachine,
    Invalid,
    MachineEnum,
    ResetStream,
    SetTimer,
    dispatch,
)


class UpgradeState(MachineEnum):
    """Where an upgraded stream is in its life."""

    OPENING = "opening"
    """The CONNECT went out; the connector's answer is awaited."""
    OPEN = "open"
    """The app accepted: bytes flow both ways (each way until its END_STREAM)."""
    RESPONDING = "responding"
    """The app refused the upgrade: its answer is relayed as a response."""
    DONE = "done"
    """Ended normally: both directions ended, the refusal relayed, or an error answer."""
    RESET = "reset"
    """Ended early: reset, cancelled, failed or timed out."""


class UpgradeInput(MachineEnum):
    """What can happen to an upgraded stream."""

    ACCEPTED = "accepted"
    """The connector's answer: the app switched protocols."""
    REFUSED = "refused"
    """The connector's answer: an ordinary response (the app said no)."""
    ERROR_ANSWERED = "error-answered"
    """The connector answered with an error of its own."""
    DATA_RECEIVED = "data-received"
    """Bytes from the app (or of the refusal's body) arrived."""
    DATA_SENT = "data-sent"
    """Bytes from the client went into the stream."""
    SEND_BLOCKED = "send-blocked"
    """The connector's window is shut: the client's bytes are buffered."""
    SEND_UNBLOCKED = "send-unblocked"
    """The buffered bytes went out."""
    PAUSED = "paused"
    """The client side holds the app's bytes back."""
    RESUMED = "resumed"
    """The client side takes the app's bytes again."""
    REMOTE_ENDED = "remote-ended"
    """END_STREAM from the connector: the app's side ended."""
    LOCAL_ENDED = "local-ended"
    """END_STREAM went out: the client's side ended."""
    PEER_RESET = "peer-reset"
    """The connector reset the stream, or the connection went."""
    CANCELLED = "cancelled"
    """The user side ended it (client gone, session ended, a cap)."""
    FAILED = "failed"
    """Handling the stream raised (see the error boundary)."""
    TIMER_FIRED = "timer-fired"
    """The stream's timer, armed by L{SetTimer}, fired."""


@attrs.frozen
class Lost:
    """The answer went to the user already: end the exchange with C{reason}."""

    reason: str


@attrs.frozen
class Finished:
    """The stream ended normally: free it (h2 counts it closed, or reset it)."""


Action = (
    SetTimer
    | CancelTimer
    | ResetStream
    | AnswerError
    | Lost
    | Finished
    | Invalid[UpgradeState, UpgradeInput]
)

U = UpgradeState
I = UpgradeInput  # noqa: E741

_LIVE = (U.OPENING, U.OPEN, U.RESPONDING)
_ENDED = (U.DONE, U.RESET)
#: What the user side may do at any time while the stream lives, and its handler.
_USER_SIDE = {
    I.PAUSED: "_paused",
    I.RESUMED: "_resumed",
    I.SEND_BLOCKED: "_send_blocked",
    I.SEND_UNBLOCKED: "_send_unblocked",
    I.DATA_SENT: "_data_sent",
    I.LOCAL_ENDED: "_local_ended",
}

#: (state, input) -> (next state, handler or C{None}); a pair not here is invalid.
TRANSITIONS: Mapping[tuple[UpgradeState, UpgradeInput], tuple[UpgradeState, str | None]] = {
    (U.OPENING, I.ACCEPTED): (U.OPEN, "_restart"),
    (U.OPENING, I.REFUSED): (U.RESPONDING, "_restart"),
    (U.OPENING, I.ERROR_ANSWERED): (U.DONE, "_finish"),
    **{(s, i): (s, handler) for s in _LIVE for i, handler in _USER_SIDE.items()},
    (U.OPEN, I.DATA_RECEIVED): (U.OPEN, "_moved"),
    (U.OPEN, I.REMOTE_ENDED): (U.OPEN, "_remote_ended"),
    (U.RESPONDING, I.DATA_RECEIVED): (U.RESPONDING, "_moved"),
    (U.RESPONDING, I.REMOTE_ENDED): (U.DONE, "_finish"),
    **{(s, I.TIMER_FIRED): (s, "_timer_fired") for s in _LIVE},
    **{(s, i): (U.RESET, "_stop") for s in _LIVE for i in (I.PEER_RESET, I.CANCELLED, I.FAILED)},
    # An ended stream ignores everything: what arrives late is moot.
    **{(s, i): (s, None) for s in _ENDED for i in UpgradeInput},
}


@attrs.define(eq=False)
class UpgradeMachine(IdleTimerMachine[UpgradeState, UpgradeInput, Action]):
    """
    One upgraded stream's state and timing: C{answer_limit} seconds for
    the connector's answer (and between bytes of a refusal's body),
    C{idle_limit} seconds without a byte once open.
    """

    answer_limit: float
    idle_limit: float
    now: float
    """When the CONNECT went out."""
    state: UpgradeState = attrs.field(init=False, default=U.OPENING)
    send_blocked: bool = attrs.field(init=False, default=False)
    paused: bool = attrs.field(init=False, default=False)
    remote_ended: bool = attrs.field(init=False, default=False)
    local_ended: bool = attrs.field(init=False, default=False)

    ENDED = frozenset(_ENDED)
    RESET = U.RESET

    def __attrs_post_init__(self) -> None:
        self.last = self.now

    def start(self) -> list[Action]:
        """The CONNECT went out: arm the wait for the answer."""
        return self._arm(self.last + self.answer_limit)

    @property
    def limit(self) -> float:
        return self.idle_limit if self.state is U.OPEN else self.answer_limit

    # -- handlers (and the base's _restart, _moved, _stop, _timer_fired) ----
    # The user side's inputs, and the app's end, in any live state.

    def _data_sent(self, now: float) -> list[Action]:
        if self.state is U.OPEN:
            self.last = now
        return []

    def _send_blocked(self, now: float) -> list[Action]:
        self.send_blocked = True
        return []

    def _paused(self, now: float) -> list[Action]:
        self.paused = True
        return []

    def _send_unblocked(self, now: float) -> list[Action]:
        self.send_blocked = False
        return self._flowing(now)

    def _resumed(self, now: float) -> list[Action]:
        self.paused = False
        return self._flowing(now)

    def _remote_ended(self, now: float) -> list[Action]:
        self.remote_ended = True
        return self._flowing(now)

    def _local_ended(self, now: float) -> list[Action]:
        self.local_ended = True
        return self._flowing(now)

    def _flowing(self, now: float) -> list[Action]:
        """A direction moves again, or ended: done once both ended."""
        if self.state is U.OPEN and self.remote_ended and self.local_ended:
            return self._finish(now)
        if self.state is U.OPENING:
            # The answer's deadline runs on, whatever the user side does.
            return []
        return self._restart(now)

    def _finish(self, now: float) -> list[Action]:
        self.state = U.DONE
        return [*self._stop(now), Finished()]

    # -- timing ------------------------------------------------------------

    def due(self) -> float | None:
        """When the current wait runs out, or C{None} while it is stopped."""
        if self.state is U.OPEN and (self.send_blocked or self.paused):
            return None
        if self.state is U.RESPONDING and self.paused:
            return None
        return self.last + self.limit

    def _timed_out(self) -> list[Action]:
        state = self.state
        self.state = U.RESET
        if state is U.OPEN:
            return [ResetStream("CANCEL"), Lost(f"idle for {self.idle_limit:g} seconds")]
        limit = f"{self.answer_limit:g}"
        if state is U.RESPONDING:
            return [ResetStream("CANCEL"), Lost(f"the response stalled for {limit} seconds")]
        detail = f"The connector did not answer within {limit} seconds."
        return [ResetStream("CANCEL"), AnswerError(504, "timeout", detail)]

    def _abandon(self, state: UpgradeState, reason: str) -> list[Action]:
        if state is U.OPENING:
            return [ResetStream("INTERNAL_ERROR"), AnswerError(502, "tunnel-error", reason)]
        return [ResetStream("INTERNAL_ERROR"), Lost(reason)]


UpgradeMachine.DISPATCH = dispatch(TRANSITIONS, UpgradeMachine)
