"""
One tunnel stream as the service's end sees it, as a state machine without
I/O (as h2 models HTTP/2 in C{h2/connection.py}).

The machine owns the stream's state and its timing, and decides the ends
the shell cannot see coming: a timeout, an input out of order.  The shell
(L{appproxy.tunnel.service_stream.ServiceStream}) feeds it inputs with the
time (L{StreamMachine.feed}) and carries out the actions it returns; it
still sends the frames of the ordinary course of a stream itself.

Timing counts idleness, per direction, never the whole exchange:

 - before the connector acknowledges dispatch, and from the end of the
   request body to the response headers: at most C{limit} seconds;
 - while the request body flows: no byte for C{limit} seconds, not counting
   time during which the connector holds us back (its window shut);
 - while the response body flows: no byte for C{limit} seconds, not counting
   time during which the user side holds it back (paused).

So a slow but steady upload never times out, and a response body that
stalls after its headers does.  Time out before the response headers: a 504
for the user; after them: the stream is reset and the response cut short.

The timer is lazy: bytes moving only note the time; when the one armed
timer fires, the machine either ends the stream or asks for the timer again
at the new deadline.  Moving bytes costs no timer call.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from appproxy.tunnel.machine_base import (
    CancelTimer,
    IdleTimerMachine,
    Invalid,
    MachineEnum,
    ResetStream,
    SetTimer,
    dispatch,
)


class StreamState(MachineEnum):
    """Where a stream is in its life."""

    AWAITING_DISPATCH = "awaiting-dispatch"
    """Request headers sent; the body waits for the connector's acknowledgement."""
    UPLOADING = "uploading"
    """The request body flows to the connector."""
    AWAITING_RESPONSE = "awaiting-response"
    """The request is complete; the response headers are awaited."""
    RESPONDING = "responding"
    """Response headers in; the response body flows to the user."""
    DONE = "done"
    """Ended normally (the whole response, or an error answer of the connector)."""
    RESET = "reset"
    """Ended early: reset, cancelled, failed or timed out."""


class StreamInput(MachineEnum):
    """What can happen to a stream."""

    DISPATCHED = "dispatched"
    """The connector acknowledged dispatch (its informational 100)."""
    BODY_SENT = "body-sent"
    """Request body bytes went into the stream."""
    SEND_BLOCKED = "send-blocked"
    """The connector's window is shut: request body is buffered."""
    SEND_UNBLOCKED = "send-unblocked"
    """The buffered request body went out."""
    BODY_ENDED = "body-ended"
    """END_STREAM went out: the request is complete."""
    RESPONSE_STARTED = "response-started"
    """The response headers arrived and went to the user."""
    ERROR_ANSWERED = "error-answered"
    """The connector answered with an error of its own."""
    RESPONSE_DATA = "response-data"
    """Response body bytes arrived."""
    RESPONSE_PAUSED = "response-paused"
    """The user side holds the response back."""
    RESPONSE_RESUMED = "response-resumed"
    """The user side takes the response again."""
    RESPONSE_ENDED = "response-ended"
    """The response is complete."""
    PEER_RESET = "peer-reset"
    """The connector reset the stream, or the connection went."""
    CANCELLED = "cancelled"
    """The user went away."""
    FAILED = "failed"
    """Handling the stream raised (see the error boundary)."""
    TIMER_FIRED = "timer-fired"
    """The stream's timer, armed by L{SetTimer}, fired."""


@attrs.frozen
class AnswerError:
    """Answer the user with an error page: nothing was relayed yet."""

    status: int
    kind: str
    detail: str


@attrs.frozen
class CutResponse:
    """The response was started: end it short (the user's connection is cut)."""

    reason: str


Action = (
    SetTimer
    | CancelTimer
    | ResetStream
    | AnswerError
    | CutResponse
    | Invalid[StreamState, StreamInput]
)

S = StreamState
I = StreamInput  # noqa: E741

#: What ends a stream that was not answered yet (its input out of order).
_LIVE = (S.AWAITING_DISPATCH, S.UPLOADING, S.AWAITING_RESPONSE, S.RESPONDING)
_ENDED = (S.DONE, S.RESET)

#: (state, input) -> (next state, handler).  The handler (a method name, or
#: C{None}) returns the actions.  A pair that is not here is an invalid input:
#: the stream is reset (L{StreamMachine._invalid}).
TRANSITIONS: Mapping[tuple[StreamState, StreamInput], tuple[StreamState, str | None]] = {
    # Waiting for the connector to acknowledge dispatch.
    (S.AWAITING_DISPATCH, I.DISPATCHED): (S.UPLOADING, "_restart"),
    (S.AWAITING_DISPATCH, I.RESPONSE_STARTED): (S.RESPONDING, "_restart"),
    (S.AWAITING_DISPATCH, I.ERROR_ANSWERED): (S.DONE, "_stop"),
    # The request body flows.
    (S.UPLOADING, I.DISPATCHED): (S.UPLOADING, None),
    (S.UPLOADING, I.BODY_SENT): (S.UPLOADING, "_moved"),
    (S.UPLOADING, I.SEND_BLOCKED): (S.UPLOADING, "_send_blocked"),
    (S.UPLOADING, I.SEND_UNBLOCKED): (S.UPLOADING, "_send_unblocked"),
    (S.UPLOADING, I.BODY_ENDED): (S.AWAITING_RESPONSE, "_restart"),
    (S.UPLOADING, I.RESPONSE_STARTED): (S.RESPONDING, "_restart"),
    (S.UPLOADING, I.ERROR_ANSWERED): (S.DONE, "_stop"),
    # The request is complete: the response headers are awaited.
    (S.AWAITING_RESPONSE, I.DISPATCHED): (S.AWAITING_RESPONSE, None),
    (S.AWAITING_RESPONSE, I.SEND_BLOCKED): (S.AWAITING_RESPONSE, None),
    (S.AWAITING_RESPONSE, I.SEND_UNBLOCKED): (S.AWAITING_RESPONSE, None),
    (S.AWAITING_RESPONSE, I.BODY_ENDED): (S.AWAITING_RESPONSE, None),
    (S.AWAITING_RESPONSE, I.RESPONSE_STARTED): (S.RESPONDING, "_restart"),
    (S.AWAITING_RESPONSE, I.ERROR_ANSWERED): (S.DONE, "_stop"),
    # The response body flows (the request body may still be going: an app
    # may answer before reading all of it).
    (S.RESPONDING, I.BODY_SENT): (S.RESPONDING, None),
    (S.RESPONDING, I.SEND_BLOCKED): (S.RESPONDING, None),
    (S.RESPONDING, I.SEND_UNBLOCKED): (S.RESPONDING, None),
    (S.RESPONDING, I.BODY_ENDED): (S.RESPONDING, None),
    (S.RESPONDING, I.RESPONSE_DATA): (S.RESPONDING, "_moved"),
    (S.RESPONDING, I.RESPONSE_PAUSED): (S.RESPONDING, "_response_paused"),
    (S.RESPONDING, I.RESPONSE_RESUMED): (S.RESPONDING, "_response_resumed"),
    (S.RESPONDING, I.RESPONSE_ENDED): (S.DONE, "_stop"),
    # Whatever the live states share.
    **{(s, I.TIMER_FIRED): (s, "_timer_fired") for s in _LIVE},
    **{(s, I.RESPONSE_PAUSED): (s, "_response_paused") for s in _LIVE[:3]},
    **{(s, I.RESPONSE_RESUMED): (s, "_response_resumed") for s in _LIVE[:3]},
    **{(s, I.PEER_RESET): (S.RESET, "_stop") for s in _LIVE},
    **{(s, I.CANCELLED): (S.RESET, "_stop") for s in _LIVE},
    **{(s, I.FAILED): (S.RESET, "_stop") for s in _LIVE},
    # An ended stream ignores everything: what arrives late is moot.
    **{(s, i): (s, None) for s in _ENDED for i in StreamInput},
}


@attrs.define(eq=False)
class StreamMachine(IdleTimerMachine[StreamState, StreamInput, Action]):
    """
    One stream's state and timing.  C{limit} is the idle limit in seconds;
    C{has_body} says whether a request body follows the headers (it waits
    for the connector's acknowledgement of dispatch).
    """

    limit: float
    has_body: bool
    now: float
    """When the request headers went out."""
    send_blocked: bool = attrs.field(init=False, default=False)
    response_paused: bool = attrs.field(init=False, default=False)

    ENDED = frozenset(_ENDED)
    RESET = S.RESET

    def __attrs_post_init__(self) -> None:
        self.state = S.AWAITING_DISPATCH if self.has_body else S.AWAITING_RESPONSE
        self.last = self.now

    def start(self) -> list[Action]:
        """The request headers went out: arm the first wait."""
        return self._arm(self.last + self.limit)

    # -- handlers (and the base's _restart, _moved, _stop, _timer_fired) ----

    def _send_blocked(self, now: float) -> list[Action]:
        self.send_blocked = True
        return []

    def _send_unblocked(self, now: float) -> list[Action]:
        self.send_blocked = False
        return self._restart(now)

    def _response_paused(self, now: float) -> list[Action]:
        self.response_paused = True
        return []

    def _response_resumed(self, now: float) -> list[Action]:
        self.response_paused = False
        if self.state is S.RESPONDING:
            return self._restart(now)
        return []

    # -- timing ------------------------------------------------------------

    def due(self) -> float | None:
        """When the current wait runs out, or C{None} while it is stopped."""
        if self.state is S.UPLOADING and self.send_blocked:
            return None
        if self.state is S.RESPONDING and self.response_paused:
            return None
        return self.last + self.limit

    def _timed_out(self) -> list[Action]:
        state = self.state
        self.state = S.RESET
        limit = f"{self.limit:g}"
        if state is S.RESPONDING:
            return [
                ResetStream("CANCEL"),
                CutResponse(f"the response stalled for {limit} seconds"),
            ]
        if state is S.UPLOADING:
            detail = f"The request body stalled for {limit} seconds."
        else:
            detail = f"The connector did not answer within {limit} seconds."
        return [ResetStream("CANCEL"), AnswerError(504, "timeout", detail)]

    def _abandon(self, state: StreamState, reason: str) -> list[Action]:
        if state is S.RESPONDING:
            return [ResetStream("INTERNAL_ERROR"), CutResponse(reason)]
        return [ResetStream("INTERNAL_ERROR"), AnswerError(502, "tunnel-error", reason)]


StreamMachine.DISPATCH = dispatch(TRANSITIONS, StreamMachine)
