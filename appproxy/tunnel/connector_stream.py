"""
One request stream as the connector's end sees it, as a state machine
without I/O (the service's view is L{appproxy.tunnel.machine}; its states
do not fit here: the connector talks to the backend, not to the user).

    headers-received --request-sent--> backend-requesting --upload-started--> uploading
           |                 (no body) |                                          |
           |                           v                      body-delivered      |
           |                 awaiting-backend-response <---------------------------/
           |                           | response-started
           v                           v
        done (error answered)      responding --response-ended--> done
                   any live state: peer-reset, failed --> reset

The machine times the backend, by idleness, per direction (one lazy timer;
moving bytes only note the time):

 - from the request to the backend until it takes the body, and from the
   end of the body to the response headers: C{limit} seconds;
 - while the body flows: the backend took no byte for C{limit} seconds
   while we had bytes for it.  Time with nothing to give is not counted
   (the user is slow: the service times that), so a slow steady upload is
   not a slow backend, and a backend that never reads is.

A timeout is L{TimedOut}: the shell answers 504 and cancels the backend
request.  The response body is timed by the service (it sees the stall
first-hand, and resets the stream).  An input a state does not allow is a
defined error (L{Invalid}, then L{Abort}), never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from appproxy.tunnel.machine_base import (
    CancelTimer,
    IdleTimerMachine,
    Invalid,
    MachineEnum,
    SetTimer,
    dispatch,
)


class ConnectorStreamState(MachineEnum):
    HEADERS_RECEIVED = "headers-received"
    """The request headers are in; no backend request yet."""
    BACKEND_REQUESTING = "backend-requesting"
    """The backend request is made; its connection has not asked for the body yet."""
    UPLOADING = "uploading"
    """The backend connection takes the request body."""
    AWAITING_BACKEND_RESPONSE = "awaiting-backend-response"
    """The request is complete at the backend; its response headers are awaited."""
    RESPONDING = "responding"
    """The response headers went to the service; the body follows."""
    DONE = "done"
    """Answered: the whole response, or an error answer."""
    RESET = "reset"
    """Ended early: reset by the service, the tunnel lost, or failed."""


class ConnectorStreamInput(MachineEnum):
    REQUEST_SENT = "request-sent"
    """The backend request was made (C{has_body} says whether a body follows)."""
    UPLOAD_STARTED = "upload-started"
    """The backend connection asked for the body."""
    BODY_QUEUED = "body-queued"
    """Request body bytes wait for the backend."""
    BODY_TAKEN = "body-taken"
    """The backend took all the bytes we had."""
    BODY_DELIVERED = "body-delivered"
    """The backend took the whole body."""
    RESPONSE_STARTED = "response-started"
    ERROR_ANSWERED = "error-answered"
    """The shell answered the service with an error of its own (no response yet)."""
    RESPONSE_ENDED = "response-ended"
    PEER_RESET = "peer-reset"
    """The service reset the stream, or the tunnel went."""
    FAILED = "failed"
    """Handling the stream raised, or the response body broke off."""
    TIMER_FIRED = "timer-fired"


@attrs.frozen
class TimedOut:
    """Answer 504 (kind C{timeout}) and cancel the backend request."""

    detail: str


@attrs.frozen
class Abort:
    """Stop the stream: a 502 if nothing was answered yet, else a reset."""

    reason: str


Action = (
    SetTimer | CancelTimer | TimedOut | Abort | Invalid[ConnectorStreamState, ConnectorStreamInput]
)

S = ConnectorStreamState
I = ConnectorStreamInput  # noqa: E741

_TIMED = (S.BACKEND_REQUESTING, S.UPLOADING, S.AWAITING_BACKEND_RESPONSE)
_LIVE = (S.HEADERS_RECEIVED, *_TIMED, S.RESPONDING)
_ENDED = (S.DONE, S.RESET)
#: The states of an ended stream.
ENDED = frozenset(_ENDED)

#: (state, input) -> (next state, handler or C{None}).  A pair that is not
#: here is an invalid input: the stream is aborted.
TRANSITIONS: Mapping[
    tuple[ConnectorStreamState, ConnectorStreamInput], tuple[ConnectorStreamState, str | None]
] = {
    (S.HEADERS_RECEIVED, I.REQUEST_SENT): (S.BACKEND_REQUESTING, "_sent"),
    (S.HEADERS_RECEIVED, I.BODY_QUEUED): (S.HEADERS_RECEIVED, None),
    (S.HEADERS_RECEIVED, I.ERROR_ANSWERED): (S.DONE, None),
    # The backend's connection is being made: the clock runs from the request.
    (S.BACKEND_REQUESTING, I.UPLOAD_STARTED): (S.UPLOADING, "_upload_started"),
    (S.BACKEND_REQUESTING, I.BODY_QUEUED): (S.BACKEND_REQUESTING, None),
    (S.BACKEND_REQUESTING, I.BODY_DELIVERED): (S.AWAITING_BACKEND_RESPONSE, "_restart"),
    # The body flows: the clock runs only while bytes wait for the backend.
    (S.UPLOADING, I.BODY_QUEUED): (S.UPLOADING, "_queued"),
    (S.UPLOADING, I.BODY_TAKEN): (S.UPLOADING, "_taken"),
    (S.UPLOADING, I.BODY_DELIVERED): (S.AWAITING_BACKEND_RESPONSE, "_restart"),
    **{(s, I.RESPONSE_STARTED): (S.RESPONDING, "_stop") for s in _TIMED},
    **{(s, I.ERROR_ANSWERED): (S.DONE, "_stop") for s in _TIMED},
    **{(s, I.TIMER_FIRED): (s, "_timer_fired") for s in _TIMED},
    # An app may answer before it read the whole body; body moves on.
    (S.RESPONDING, I.BODY_QUEUED): (S.RESPONDING, None),
    (S.RESPONDING, I.BODY_TAKEN): (S.RESPONDING, None),
    (S.RESPONDING, I.BODY_DELIVERED): (S.RESPONDING, None),
    (S.RESPONDING, I.TIMER_FIRED): (S.RESPONDING, None),
    (S.RESPONDING, I.RESPONSE_ENDED): (S.DONE, None),
    **{(s, I.PEER_RESET): (S.RESET, "_stop") for s in _LIVE},
    **{(s, I.FAILED): (S.RESET, "_stop") for s in _LIVE},
    # An ended stream ignores everything: what arrives late is moot.
    **{(s, i): (s, None) for s in _ENDED for i in ConnectorStreamInput},
}


@attrs.define(eq=False)
class ConnectorStreamMachine(IdleTimerMachine[ConnectorStreamState, ConnectorStreamInput, Action]):
    """
    One request stream's state and the backend's timing.  C{limit} is the
    app's backend timeout; C{has_body} says whether a request body follows.
    C{last} is when the current wait began, or the backend last took bytes.
    """

    limit: float = 0.0
    has_body: bool = False
    state: ConnectorStreamState = attrs.field(init=False, default=S.HEADERS_RECEIVED)
    waiting: bool = attrs.field(init=False, default=False)
    """Request body bytes wait for the backend."""

    ENDED = frozenset(_ENDED)
    RESET = S.RESET

    @property
    def responded(self) -> bool:
        """The service has an answer (response headers, or an error)."""
        return self.state is S.RESPONDING or self.state is S.DONE

    # -- handlers (and the base's _restart, _stop, _timer_fired) ------------

    def _sent(self, now: float) -> list[Action]:
        if not self.has_body:
            self.state = S.AWAITING_BACKEND_RESPONSE
        self.last = now
        return self._arm(now + self.limit)

    def _upload_started(self, now: float) -> list[Action]:
        # Bytes that arrived before count from now: the backend was not asked yet.
        self.last = now
        return []

    def _queued(self, now: float) -> list[Action]:
        if not self.waiting:
            self.waiting = True
            return self._restart(now)
        return []

    def _taken(self, now: float) -> list[Action]:
        self.waiting = False
        self.last = now
        return []

    # -- timing ------------------------------------------------------------

    def due(self) -> float | None:
        """When the current wait runs out, or C{None} while it is stopped."""
        if self.state is S.UPLOADING and not self.waiting:
            return None  # nothing to give: a new byte arms it again
        return self.last + self.limit

    def _timed_out(self) -> list[Action]:
        state = self.state
        self.state = S.DONE
        limit = f"{self.limit:g}"
        if state is S.UPLOADING:
            detail = f"did not read the request body for {limit} seconds."
        else:
            detail = f"did not answer within {limit} seconds."
        return [TimedOut(detail)]

    def _abandon(self, state: ConnectorStreamState, reason: str) -> list[Action]:
        return [Abort(reason)]


ConnectorStreamMachine.DISPATCH = dispatch(TRANSITIONS, ConnectorStreamMachine)
