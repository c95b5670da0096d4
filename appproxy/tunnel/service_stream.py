"""
One user request travelling over the tunnel, as the service's end holds it: the
L{ExchangeStream} the web front end writes the request body to and pauses, and
the stream L{appproxy.tunnel.service.ServiceTunnelProtocol} feeds the response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
from h2.errors import ErrorCodes
from twisted.internet.interfaces import IDelayedCall

from appproxy.tunnel.base import TunnelStream
from appproxy.tunnel.machine import (
    Action,
    AnswerError,
    CancelTimer,
    CutResponse,
    Invalid,
    ResetStream,
    SetTimer,
    StreamInput,
    StreamMachine,
)
from appproxy.tunnel.queue import ProxyJob

if TYPE_CHECKING:
    from appproxy.tunnel.service import ServiceTunnelProtocol


@attrs.define(eq=False)
class ServiceStream(TunnelStream):
    """
    One user request travelling over the tunnel.
    """

    proto: ServiceTunnelProtocol
    job: ProxyJob
    paused: bool = attrs.field(init=False, default=False)
    """The user side asked for no more response data for now."""
    held: bool = attrs.field(init=False, default=False)
    """No window is reopened until C{release}, whatever C{paused} says."""
    unacked: int = attrs.field(init=False, default=0)
    """Response bytes received but not yet acknowledged to the connector."""
    responded: bool = attrs.field(init=False, default=False)
    finished: bool = attrs.field(init=False, default=False)
    timer: IDelayedCall | None = attrs.field(init=False, default=None)
    """The machine's timer (L{SetTimer}): gives up on a stream gone idle."""
    machine: StreamMachine | None = attrs.field(init=False, default=None)
    """The stream's state and timing, once its request headers went out."""

    def __attrs_post_init__(self) -> None:
        self.request_id = self.job.request_id

    # ExchangeStream: called by the user side

    def write_body(self, data: bytes) -> bool:
        self.job.body_sent = True
        self.feed(StreamInput.BODY_SENT)
        if self.proto.send_data(self, data):
            return True
        self.feed(StreamInput.SEND_BLOCKED)
        return False

    def end_body(self) -> None:
        self.proto.end_stream(self)

    def cancel(self) -> None:
        if self.finished:
            return
        self.feed(StreamInput.CANCELLED)
        self._done(ErrorCodes.CANCEL)

    def pauseProducing(self) -> None:
        self.paused = True
        self.feed(StreamInput.RESPONSE_PAUSED)

    def resumeProducing(self) -> None:
        self.paused = False
        self._ack_pending()
        if not self.held:
            self.feed(StreamInput.RESPONSE_RESUMED)

    def hold(self) -> None:
        """
        Stop reopening the window, whatever the consumer says (see
        L{appproxy.frontend.exchange.ExchangeRequest.response_data}).
        """
        self.held = True
        self.feed(StreamInput.RESPONSE_PAUSED)

    def release(self) -> None:
        self.held = False
        self._ack_pending()
        if not self.paused:
            self.feed(StreamInput.RESPONSE_RESUMED)

    def _ack_pending(self) -> None:
        if self.unacked and not self.paused and not self.held:
            unacked, self.unacked = self.unacked, 0
            self.proto.acknowledge(self.stream_id, unacked)

    def stopProducing(self) -> None:
        self.cancel()

    # TunnelStream

    def outbound_drained(self) -> None:
        self.feed(StreamInput.SEND_UNBLOCKED)
        self.job.exchange.body_drained()

    def stream_aborted(self, reason: str) -> None:
        if self.finished:
            return
        self.feed(StreamInput.PEER_RESET)
        self._done()
        self.job.exchange.stream_lost(self.job, reason)

    # the machine

    def start(self, limit: float) -> None:
        """The request headers went out: the machine takes over the timing."""
        self.machine = StreamMachine(limit, self.job.has_body, self.proto.clock.seconds())
        self._act(self.machine.start())

    def feed(self, event: StreamInput) -> None:
        """Give the machine an input; carry out what it says."""
        machine = self.machine
        if machine is not None:
            actions = machine.feed(event, self.proto.clock.seconds())
            if actions:
                self._act(actions)

    def _timer_fired(self) -> None:
        self.timer = None
        self.feed(StreamInput.TIMER_FIRED)

    def _act(self, actions: list[Action]) -> None:
        # Whatever ended the stream before these actions answered it already.
        answered = self.finished
        # An input out of order may come from inside the user side's own
        # call (write_body): answer it from the reactor, not from there.
        later = False
        for action in actions:
            if isinstance(action, SetTimer):
                delay = max(0.0, action.at - self.proto.clock.seconds())
                if self.timer is not None and self.timer.active():
                    self.timer.reset(delay)
                else:
                    self.timer = self.proto.clock.callLater(
                        delay, self.proto.within_stream, self.stream_id, self._timer_fired
                    )
            elif isinstance(action, CancelTimer):
                self._cancel_timer()
            elif isinstance(action, Invalid):
                later = True
                self.proto.factory.stream_errors += 1
                self.proto.log.error(
                    "Stream {sid} (request {rid}): {input} is not allowed in {state}",
                    sid=self.stream_id,
                    rid=self.request_id,
                    input=action.input.value,
                    state=action.state.value,
                )
            elif answered:
                continue
            elif isinstance(action, ResetStream):
                if not self.finished:
                    self._done(ErrorCodes[action.code])
            elif isinstance(action, AnswerError):
                self._answer(
                    later,
                    self.job.exchange.upstream_error,
                    action.status,
                    action.kind,
                    action.detail,
                )
            elif isinstance(action, CutResponse):
                self._answer(later, self.job.exchange.stream_lost, self.job, action.reason)

    def _answer(self, later: bool, answer: Callable[..., None], *args: object) -> None:
        if later:
            self.proto.clock.callLater(0, answer, *args)
        else:
            answer(*args)

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _done(self, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """
        The stream is over for us: the protocol resets it with C{code} if h2
        still counts it open, then gives its room to the next job.
        """
        self.finished = True
        self.closed = True
        self._cancel_timer()
        self.proto.stream_finished(self, code)
