"""
One upgraded (WebSocket) stream as the connector's end sees it, as a state
machine without I/O (a request stream is L{appproxy.tunnel.connector_stream};
the wire format is in C{docs/architecture.md}).

    handshake-sent --accepted (101)--> open --app-eof / service-ended--> half-closed
          |    \\                                                            |
          |     \\--refused (other status)--> responding --end-sent--> done  |
          |--error-answered, timer--> done           done <--the other end--/
                any live state: peer-reset, failed --> reset
      handshake-sent, open, half-closed: going-away --> reset

The connector made the HTTP/1.1 handshake to the internal app; the app's
C{backend_timeout} bounds the wait for its answer (one timer, from
L{UpgradeMachine.start}).  Once open, bytes flow both ways without the
machine (the service times idleness), and each direction ends on its own:

 - I{down} (app to service): the app's connection ended (C{app-eof}): send
   END_STREAM (L{EndStream}) after what is buffered; C{end-sent} when it
   went out;
 - I{up} (service to app): the service's END_STREAM (C{service-ended}):
   close the app's connection once what we wrote to it is flushed
   (L{CloseApp} C{at_once=False}).

The stream is done when both have ended.  A reset by the service, the
tunnel lost, or a fault closes the app's connection at once
(L{CloseApp} C{at_once=True}).  The connector's drain (C{going-away}): a
WebSocket cannot be drained, so the app's connection is closed at once and
the stream reset (L{ResetStream} C{CANCEL}): the service closes the client
(with a 1001 close frame); a handshake not answered yet is retried by the
service elsewhere.  A refusal being relayed finishes as a request would.
A non-101 answer is relayed as an ordinary
response; done once its END_STREAM went out, the app's connection closed.
An input a state does not allow is a defined error (L{Invalid}, then
L{Abort}), never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from appproxy.tunnel.machine_base import (
    CancelTimer,
    Invalid,
    MachineEnum,
    ResetStream,
    SetTimer,
    TimerMachine,
    dispatch,
)


class UpgradeState(MachineEnum):
    HANDSHAKE_SENT = "handshake-sent"
    """The handshake is on its way to the app (connecting, or sent); no answer yet."""
    OPEN = "open"
    """The app answered 101: bytes flow both ways."""
    HALF_CLOSED = "half-closed"
    """One direction has ended, the other flows."""
    RESPONDING = "responding"
    """The app refused the upgrade: its response goes to the service."""
    DONE = "done"
    """Both directions ended, or the answer (an error, a refusal) is complete."""
    RESET = "reset"
    """Ended early: reset by the service, the tunnel lost, or failed."""


class UpgradeInput(MachineEnum):
    ACCEPTED = "accepted"
    """The app answered 101; C{:status 200} went to the service."""
    REFUSED = "refused"
    """The app answered another status; its head went to the service."""
    ERROR_ANSWERED = "error-answered"
    """The shell answered the service with an error (unreachable, malformed answer)."""
    APP_EOF = "app-eof"
    """The app's connection ended."""
    END_SENT = "end-sent"
    """Our END_STREAM went out."""
    SERVICE_ENDED = "service-ended"
    """The service's END_STREAM arrived."""
    PEER_RESET = "peer-reset"
    """The service reset the stream, or the tunnel went."""
    FAILED = "failed"
    """Handling the stream raised."""
    GOING_AWAY = "going-away"
    """The connector drains: WebSockets end now."""
    TIMER_FIRED = "timer-fired"


@attrs.frozen
class TimedOut:
    """Answer 504 (kind C{timeout}); a L{CloseApp} follows."""

    detail: str


@attrs.frozen
class EndStream:
    """Send END_STREAM to the service once the buffered bytes went."""


@attrs.frozen
class CloseApp:
    """Close the app's connection: at once, or once our writes are flushed."""

    at_once: bool


@attrs.frozen
class Abort:
    """Stop the stream: a 502 if nothing was answered yet, else a reset."""

    reason: str


Action = (
    SetTimer
    | CancelTimer
    | TimedOut
    | EndStream
    | CloseApp
    | ResetStream
    | Abort
    | Invalid[UpgradeState, UpgradeInput]
)

S = UpgradeState
I = UpgradeInput  # noqa: E741

_FLOWING = (S.OPEN, S.HALF_CLOSED)
_LIVE = (S.HANDSHAKE_SENT, *_FLOWING, S.RESPONDING)
_ENDED = (S.DONE, S.RESET)
#: The states of an ended stream.
ENDED = frozenset(_ENDED)

#: (state, input) -> (next state, handler or C{None}).  A pair that is not
#: here is an invalid input: the stream is aborted.  Handlers may move the
#: flowing states on (half-closed, done) by what has ended.
TRANSITIONS: Mapping[tuple[UpgradeState, UpgradeInput], tuple[UpgradeState, str | None]] = {
    (S.HANDSHAKE_SENT, I.ACCEPTED): (S.OPEN, "_accepted"),
    (S.HANDSHAKE_SENT, I.REFUSED): (S.RESPONDING, "_stop_timer"),
    (S.HANDSHAKE_SENT, I.ERROR_ANSWERED): (S.DONE, "_drop"),
    (S.HANDSHAKE_SENT, I.TIMER_FIRED): (S.DONE, "_timed_out"),
    # The service ended its side before the answer: the app's connection
    # closes as soon as the upgrade is done.
    (S.HANDSHAKE_SENT, I.SERVICE_ENDED): (S.HANDSHAKE_SENT, "_early_end"),
    **{(s, I.APP_EOF): (s, "_app_eof") for s in _FLOWING},
    **{(s, I.END_SENT): (s, "_end_sent") for s in _FLOWING},
    **{(s, I.SERVICE_ENDED): (s, "_service_ended") for s in _FLOWING},
    **{(s, I.TIMER_FIRED): (s, None) for s in (*_FLOWING, S.RESPONDING)},
    # The response's body ends by h11's framing, not by the connection.
    (S.RESPONDING, I.APP_EOF): (S.RESPONDING, None),
    (S.RESPONDING, I.SERVICE_ENDED): (S.RESPONDING, None),
    (S.RESPONDING, I.END_SENT): (S.DONE, "_responded"),
    **{(s, I.PEER_RESET): (S.RESET, "_drop") for s in _LIVE},
    **{(s, I.FAILED): (S.RESET, "_drop") for s in _LIVE},
    **{(s, I.GOING_AWAY): (S.RESET, "_going_away") for s in (S.HANDSHAKE_SENT, *_FLOWING)},
    (S.RESPONDING, I.GOING_AWAY): (S.RESPONDING, None),
    # An ended stream ignores everything: what arrives late is moot.
    **{(s, i): (s, None) for s in _ENDED for i in UpgradeInput},
}


@attrs.define(eq=False)
class UpgradeMachine(TimerMachine[UpgradeState, UpgradeInput, Action]):
    """
    One upgraded stream's state.  C{limit} is the app's backend timeout,
    for the handshake's answer.
    """

    limit: float = 0.0
    state: UpgradeState = attrs.field(init=False, default=S.HANDSHAKE_SENT)
    answered: bool = attrs.field(init=False, default=False)
    """The service has an answer (the 200, a refusal's head, or an error)."""
    app_ended: bool = attrs.field(init=False, default=False)
    """The app's connection ended (END_STREAM asked for)."""
    down_ended: bool = attrs.field(init=False, default=False)
    """Our END_STREAM went out."""
    up_ended: bool = attrs.field(init=False, default=False)
    """The service's END_STREAM arrived."""

    ENDED = frozenset(_ENDED)
    RESET = S.RESET

    def start(self, now: float) -> list[Action]:
        """The handshake is on its way (at C{now}): time the answer."""
        return self._arm(now + self.limit)

    # -- handlers ----------------------------------------------------------

    def _stop_timer(self, now: float) -> list[Action]:
        self.answered = True
        return self._stop(now)

    def _accepted(self, now: float) -> list[Action]:
        actions = self._stop_timer(now)
        if self.up_ended:
            self.state = S.HALF_CLOSED
            actions.append(CloseApp(at_once=False))
        return actions

    def _early_end(self, now: float) -> list[Action]:
        self.up_ended = True
        return []

    def _drop(self, now: float) -> list[Action]:
        return [*self._stop_timer(now), CloseApp(at_once=True)]

    def _going_away(self, now: float) -> list[Action]:
        return [*self._drop(now), ResetStream("CANCEL")]

    def _timed_out(self, now: float) -> list[Action]:
        if self.armed is not None and now + 1e-6 < self.armed:
            # A timer from before (the shell cancels on CancelTimer): not yet.
            self.state = S.HANDSHAKE_SENT
            return self._arm(self.armed)
        self.armed = None
        self.answered = True
        detail = f"did not answer the WebSocket handshake within {self.limit:g} seconds."
        return [TimedOut(detail), CloseApp(at_once=True)]

    def _app_eof(self, now: float) -> list[Action]:
        if self.app_ended:
            return []
        self.app_ended = True
        self.state = S.HALF_CLOSED
        return [EndStream()]

    def _end_sent(self, now: float) -> list[Action]:
        if not self.app_ended or self.down_ended:
            return self._invalid(I.END_SENT)
        self.down_ended = True
        self._settle()
        return []

    def _service_ended(self, now: float) -> list[Action]:
        if self.up_ended:
            return []
        self.up_ended = True
        self._settle()
        return [CloseApp(at_once=False)]

    def _responded(self, now: float) -> list[Action]:
        return [CloseApp(at_once=False)]

    def _settle(self) -> None:
        self.state = S.DONE if self.up_ended and self.down_ended else S.HALF_CLOSED

    def _abandon(self, state: UpgradeState, reason: str) -> list[Action]:
        return [CloseApp(at_once=True), Abort(reason)]


UpgradeMachine.DISPATCH = dispatch(TRANSITIONS, UpgradeMachine)
