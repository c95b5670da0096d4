"""
One WebSocket travelling over the tunnel, as the service's end holds it: an
upgraded stream (RFC 8441's extended CONNECT, see C{docs/architecture.md}).

The service sends C{:method CONNECT} and C{:protocol websocket} with the
request's fields and no END_STREAM; the connector makes the handshake to the
app and answers C{:status 200} with C{appproxy-upgraded} when the app
switched protocols (the user side gets C{response_started(101, fields)}),
or relays any other answer as an ordinary response.  Once open, DATA
carries the raw bytes both ways, each way ended by its END_STREAM.

Flow control is end to end, as for request and response bodies: the
client's bytes wait in the stream's buffer while the connector's window is
shut (C{write_body} says C{False}: the user side stops reading the client
until C{body_drained}), and the app's bytes are acknowledged only as the
user side takes them (not while it has paused or held the stream).

The state and timing are L{appproxy.tunnel.upgrade_machine}'s; the
connection's bookkeeping of upgraded streams is
L{appproxy.tunnel.service_upgrades}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
from h2.errors import ErrorCodes
from h2.events import DataReceived
from twisted.internet.interfaces import IDelayedCall

from appproxy.tunnel.fields import (
    Field,
    UnsendableFields,
    request_line_problem,
    user_fields,
)
from appproxy.tunnel.job import ProxyJob
from appproxy.tunnel.machine import AnswerError, CancelTimer, ResetStream, SetTimer
from appproxy.tunnel.stream import TunnelStream
from appproxy.tunnel.upgrade_machine import (
    Action,
    Finished,
    Invalid,
    Lost,
    UpgradeInput,
    UpgradeMachine,
)

if TYPE_CHECKING:
    from appproxy.tunnel.service import ServiceTunnelProtocol

#: The connector's mark on its answer: the app switched protocols.
UPGRADED_FIELD = b"appproxy-upgraded"
#: The protocol of an upgraded stream (C{:protocol}).
WEBSOCKET = b"websocket"
#: Fields that HTTP/2 forbids and a WebSocket handshake carries over
#: HTTP/1.1: never sent on the tunnel (the connector writes its own).
_HOP_BY_HOP = frozenset(
    {b"connection", b"upgrade", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te"}
)

W = UpgradeInput


def connect_fields(job: ProxyJob) -> list[Field]:
    """
    The header block of C{job}'s extended CONNECT.

    @raise UnsendableFields: the path cannot be sent.
    """
    app = job.app
    problem = request_line_problem(b"GET", job.path)
    if problem is not None:
        raise UnsendableFields(problem)
    return [
        (b":method", b"CONNECT"),
        (b":protocol", WEBSOCKET),
        (b":scheme", app.internal_scheme.encode("ascii")),
        (b":authority", app.internal_netloc.encode("ascii")),
        (b":path", job.path),
        *(f for f in user_fields(job.headers) if f[0] not in _HOP_BY_HOP),
        (b"appproxy-app", app.name.encode("ascii")),
    ]


@attrs.define(eq=False)
class UpgradeStream(TunnelStream):
    """
    One WebSocket on the tunnel: the L{ExchangeStream} the user side writes
    the client's bytes to and pauses, and the stream the protocol feeds the
    app's.
    """

    proto: ServiceTunnelProtocol
    job: ProxyJob
    paused: bool = attrs.field(init=False, default=False)
    """The user side asked for no more of the app's bytes for now."""
    held: bool = attrs.field(init=False, default=False)
    """No window is reopened until C{release}, whatever C{paused} says."""
    unacked: int = attrs.field(init=False, default=0)
    """Bytes received but not yet acknowledged to the connector."""
    responded: bool = attrs.field(init=False, default=False)
    """The user side has the answer (the 101, or a refusal)."""
    accepted: bool = attrs.field(init=False, default=False)
    """The app switched protocols."""
    finished: bool = attrs.field(init=False, default=False)
    timer: IDelayedCall | None = attrs.field(init=False, default=None)
    machine: UpgradeMachine | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.request_id = self.job.request_id

    # -- ExchangeStream: called by the user side ---------------------------

    def write_body(self, data: bytes) -> bool:
        """The client's bytes to the app; C{False}: wait for C{body_drained}."""
        self.job.body_sent = True
        self.feed(W.DATA_SENT)
        if self.proto.send_data(self, data):
            return True
        self.feed(W.SEND_BLOCKED)
        return False

    def end_body(self) -> None:
        """The client's side ended: END_STREAM once its bytes went out."""
        self.proto.end_stream(self)

    def cancel(self) -> None:
        if self.finished:
            return
        self.feed(W.CANCELLED)
        self._done(ErrorCodes.CANCEL)

    def pauseProducing(self) -> None:
        self.paused = True
        self.feed(W.PAUSED)

    def resumeProducing(self) -> None:
        self.paused = False
        self._ack_pending()
        if not self.held:
            self.feed(W.RESUMED)

    def hold(self) -> None:
        self.held = True
        self.feed(W.PAUSED)

    def release(self) -> None:
        self.held = False
        self._ack_pending()
        if not self.paused:
            self.feed(W.RESUMED)

    def stopProducing(self) -> None:
        self.cancel()

    def _ack_pending(self) -> None:
        if self.unacked and not self.paused and not self.held:
            unacked, self.unacked = self.unacked, 0
            self.proto.acknowledge(self.stream_id, unacked)

    # -- TunnelStream ------------------------------------------------------

    def outbound_drained(self) -> None:
        self.feed(W.SEND_UNBLOCKED)
        self.job.exchange.body_drained()

    def stream_aborted(self, reason: str) -> None:
        if self.finished:
            return
        self.feed(W.PEER_RESET)
        self._done()
        self.job.exchange.stream_lost(self.job, reason)

    # -- the protocol's events (inside the stream's error boundary) --------

    def send_connect(self, answer_limit: float, idle_limit: float) -> None:
        """Send the extended CONNECT; the machine times the answer."""
        job = self.job
        self.proto.conn.send_headers(self.stream_id, connect_fields(job), end_stream=False)
        job.attempts += 1
        self.machine = UpgradeMachine(answer_limit, idle_limit, self.proto.clock.seconds())
        self._act(self.machine.start())
        job.exchange.stream_opened(self)
        self.proto.flush()

    def answered(self, headers: Sequence[Field]) -> None:
        """The connector's answer: the 101, a refusal, or its error answer."""
        job = self.job
        job.dispatched = True
        status = 502
        fields: list[Field] = []
        upgraded = False
        error_kind: bytes | None = None
        error_detail = b""
        for name, value in headers:
            if name[:1] == b":":
                if name == b":status":
                    status = int(value)
            elif name.startswith(b"appproxy-"):
                if name == b"appproxy-error":
                    error_kind = value
                elif name == b"appproxy-error-detail":
                    error_detail = value
                elif name == UPGRADED_FIELD:
                    upgraded = value.lower() == WEBSOCKET
            else:
                fields.append((name, value))
        if error_kind is not None:
            self.feed(W.ERROR_ANSWERED)
            job.exchange.upstream_error(
                status, error_kind.decode("latin-1"), error_detail.decode("latin-1")
            )
            return
        accepted = upgraded and status == 200
        # Responded only once the user side took the head: if it raises,
        # nothing went to the user yet and the boundary answers 502.
        job.exchange.response_started(101 if accepted else status, fields)
        self.responded = True
        self.accepted = accepted
        self.feed(W.ACCEPTED if accepted else W.REFUSED)

    def received(self, event: DataReceived) -> None:
        """The app's bytes (or the refusal's body)."""
        length = event.flow_controlled_length
        self.proto.bytes_received += len(event.data)
        self.feed(W.DATA_RECEIVED)
        if self.finished:
            self.proto.acknowledge(self.stream_id, length)
            return
        if self.paused or self.held:
            self.unacked += length
        else:
            self.proto.acknowledge(self.stream_id, length)
        self.job.exchange.response_data(event.data)

    def ended(self) -> None:
        """END_STREAM from the connector: the app's side ended."""
        self.feed(W.REMOTE_ENDED)
        if self.responded:
            self.job.exchange.response_ended()

    def send_closed(self) -> None:
        """Our END_STREAM went out: the client's side ended."""
        self.feed(W.LOCAL_ENDED)

    def failed(self, why: str, unsendable: bool) -> None:
        """Handling the stream raised: end it, and tell the user side."""
        self.feed(W.FAILED)
        self._done(ErrorCodes.INTERNAL_ERROR)
        job = self.job
        if self.responded:
            job.exchange.stream_lost(job, f"the tunnel stream failed: {why}")
            return
        if unsendable:
            status, kind, detail = 400, "bad-request", why
        else:
            status, kind, detail = 502, "tunnel-error", f"the stream failed: {why}"
        # Not from here: this may run inside the queue's put().
        self.proto.clock.callLater(0, job.exchange.upstream_error, status, kind, detail)

    # -- the machine -------------------------------------------------------

    def feed(self, event: UpgradeInput) -> None:
        machine = self.machine
        if machine is not None:
            actions = machine.feed(event, self.proto.clock.seconds())
            if actions:
                self._act(actions)

    def _timer_fired(self) -> None:
        self.timer = None
        self.feed(W.TIMER_FIRED)

    def _act(self, actions: list[Action]) -> None:
        answered = self.finished
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
                    "Upgraded stream {sid} (request {rid}): {input} is not allowed in {state}",
                    sid=self.stream_id,
                    rid=self.request_id,
                    input=action.input.value,
                    state=action.state.value,
                )
            elif answered:
                continue
            elif isinstance(action, Finished):
                self._done(ErrorCodes.NO_ERROR)
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
            elif isinstance(action, Lost):
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
        Over for us: the protocol resets it (with C{code}) if h2 still counts
        it open, then frees its upgrade room.
        """
        if self.finished:
            return
        self.finished = True
        self.closed = True
        self._cancel_timer()
        self.proto.upgrades.finished(self, code)
