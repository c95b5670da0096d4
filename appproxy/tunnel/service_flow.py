"""
What the service's end of a user stream shares, request or upgraded
(L{appproxy.tunnel.service_stream}, L{appproxy.tunnel.service_upgrade}):
the L{ExchangeStream} calls of the user side, end-to-end flow control (bytes
received are acknowledged only while the user side takes them), and the
carrying out of the stream machine's actions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from twisted.internet.interfaces import IDelayedCall

from appproxy.tunnel.job import ProxyJob
from appproxy.tunnel.machine import AnswerError
from appproxy.tunnel.machine_base import (
    CancelTimer,
    Invalid,
    MachineEnum,
    ResetStream,
    SetTimer,
    TimerMachine,
)
from appproxy.tunnel.stream import TunnelStream

if TYPE_CHECKING:
    from appproxy.tunnel.service import ServiceTunnelProtocol


@attrs.define(eq=False)
class FlowStream(TunnelStream):
    """
    One user stream on the tunnel, as the service's end holds it: the
    L{ExchangeStream} the user side writes to and pauses, fed by the
    protocol, timed by its machine.

    A subclass names its machine's inputs for what happens here (the class
    attributes in capitals), and says what the machine's own actions do
    (L{_carry_out}) and how the stream is let go (L{_release}).
    """

    proto: ServiceTunnelProtocol
    job: ProxyJob
    paused: bool = attrs.field(init=False, default=False)
    """The user side asked for no more of the received bytes for now."""
    held: bool = attrs.field(init=False, default=False)
    """No window is reopened until C{release}, whatever C{paused} says."""
    unacked: int = attrs.field(init=False, default=0)
    """Bytes received but not yet acknowledged to the connector."""
    responded: bool = attrs.field(init=False, default=False)
    """The user side has the answer's head."""
    finished: bool = attrs.field(init=False, default=False)
    timer: IDelayedCall | None = attrs.field(init=False, default=None)
    """The machine's timer (L{SetTimer}): gives up on a stream gone idle."""
    machine: TimerMachine[Any, Any, Any] | None = attrs.field(init=False, default=None)
    """The stream's state and timing, once its headers went out."""

    #: The machine's inputs: bytes went into the stream, the connector's
    #: window shut and opened again, the user side gone, pausing and
    #: resuming, the connector's reset, the timer.
    SENT: ClassVar[MachineEnum]
    SEND_BLOCKED: ClassVar[MachineEnum]
    SEND_UNBLOCKED: ClassVar[MachineEnum]
    CANCELLED: ClassVar[MachineEnum]
    PAUSED: ClassVar[MachineEnum]
    RESUMED: ClassVar[MachineEnum]
    PEER_RESET: ClassVar[MachineEnum]
    TIMER_FIRED: ClassVar[MachineEnum]
    #: The log's format for an input the machine does not allow.
    INVALID_LOG: ClassVar[str]

    def __attrs_post_init__(self) -> None:
        self.request_id = self.job.request_id

    # -- ExchangeStream: called by the user side ---------------------------

    def write_body(self, data: bytes) -> bool:
        """The client's bytes to the app; C{False}: wait for C{body_drained}."""
        self.job.body_sent = True
        self.feed(self.SENT)
        if self.proto.send_data(self, data):
            return True
        self.feed(self.SEND_BLOCKED)
        return False

    def end_body(self) -> None:
        """The client's side ended: END_STREAM once its bytes went out."""
        self.proto.end_stream(self)

    def cancel(self) -> None:
        if self.finished:
            return
        self.feed(self.CANCELLED)
        self._done(ErrorCodes.CANCEL)

    def pauseProducing(self) -> None:
        self.paused = True
        self.feed(self.PAUSED)

    def resumeProducing(self) -> None:
        self.paused = False
        self._ack_pending()
        if not self.held:
            self.feed(self.RESUMED)

    def hold(self) -> None:
        """
        Stop reopening the window, whatever the consumer says (see
        L{appproxy.frontend.exchange.ExchangeRequest.response_data}).
        """
        self.held = True
        self.feed(self.PAUSED)

    def release(self) -> None:
        self.held = False
        self._ack_pending()
        if not self.paused:
            self.feed(self.RESUMED)

    def stopProducing(self) -> None:
        self.cancel()

    def _ack_pending(self) -> None:
        if self.unacked and not self.paused and not self.held:
            unacked, self.unacked = self.unacked, 0
            self.proto.acknowledge(self.stream_id, unacked)

    # -- TunnelStream ------------------------------------------------------

    def outbound_drained(self) -> None:
        self.feed(self.SEND_UNBLOCKED)
        self.job.exchange.body_drained()

    def stream_aborted(self, reason: str) -> None:
        if self.finished:
            return
        self.feed(self.PEER_RESET)
        self._done()
        self.job.exchange.stream_lost(self.job, reason)

    # -- the machine -------------------------------------------------------

    def feed(self, event: Any) -> None:
        """Give the machine an input; carry out what it says."""
        machine = self.machine
        if machine is not None:
            actions = machine.feed(event, self.proto.clock.seconds())
            if actions:
                self._act(actions)

    def _timer_fired(self) -> None:
        self.timer = None
        self.feed(self.TIMER_FIRED)

    def _act(self, actions: Sequence[object]) -> None:
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
                    self.INVALID_LOG,
                    sid=self.stream_id,
                    rid=self.request_id,
                    input=action.input.value,
                    state=action.state.value,
                )
            elif answered:
                continue
            elif isinstance(action, ResetStream):
                self._done(ErrorCodes[action.code])
            elif isinstance(action, AnswerError):
                self._answer(
                    later,
                    self.job.exchange.upstream_error,
                    action.status,
                    action.kind,
                    action.detail,
                )
            else:
                self._carry_out(action, later)

    def _carry_out(self, action: object, later: bool) -> None:
        """The subclass's machine's own C{action} (C{later}: see L{_answer})."""
        raise NotImplementedError

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
        Over for us: the protocol resets it with C{code} if h2 still counts
        it open, then gives its room to the next job (L{_release}).
        """
        if self.finished:
            return
        self.finished = True
        self.closed = True
        self._cancel_timer()
        self._release(code)

    def _release(self, code: ErrorCodes) -> None:
        """Tell the protocol the stream is done with (see L{let_go})."""
        raise NotImplementedError

    def let_go(self, code: ErrorCodes) -> None:
        """
        The stream leaves the connection: reset it (with C{code}) if h2
        still counts it open, and reopen the window for what it received
        unread.
        """
        proto = self.proto
        sid = self.stream_id
        proto.streams.pop(sid, None)
        if proto.connected and not proto.terminated:
            if proto.stream_open(sid):
                try:
                    proto.conn.reset_stream(sid, code)
                except H2Error:
                    pass
            unacked, self.unacked = self.unacked, 0
            proto.acknowledge(sid, unacked)
            proto.flush()
