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

from collections.abc import Sequence

import attrs
from h2.errors import ErrorCodes
from h2.events import DataReceived

from appproxy.tunnel.fields import (
    Field,
    UnsendableFields,
    request_line_problem,
    user_fields,
)
from appproxy.tunnel.job import ProxyJob
from appproxy.tunnel.service_flow import FlowStream
from appproxy.tunnel.upgrade_machine import (
    Finished,
    Lost,
    UpgradeInput,
    UpgradeMachine,
)

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
class UpgradeStream(FlowStream):
    """
    One WebSocket on the tunnel: the L{ExchangeStream} the user side writes
    the client's bytes to and pauses, and the stream the protocol feeds the
    app's.
    """

    accepted: bool = attrs.field(init=False, default=False)
    """The app switched protocols."""
    machine: UpgradeMachine | None = attrs.field(init=False, default=None)

    SENT = W.DATA_SENT
    SEND_BLOCKED = W.SEND_BLOCKED
    SEND_UNBLOCKED = W.SEND_UNBLOCKED
    CANCELLED = W.CANCELLED
    PAUSED = W.PAUSED
    RESUMED = W.RESUMED
    PEER_RESET = W.PEER_RESET
    TIMER_FIRED = W.TIMER_FIRED
    INVALID_LOG = "Upgraded stream {sid} (request {rid}): {input} is not allowed in {state}"

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

    def _carry_out(self, action: object, later: bool) -> None:
        if isinstance(action, Finished):
            self._done(ErrorCodes.NO_ERROR)
        elif isinstance(action, Lost):
            self._answer(later, self.job.exchange.stream_lost, self.job, action.reason)

    def _release(self, code: ErrorCodes) -> None:
        """Free its upgrade room."""
        self.proto.upgrades.finished(self, code)
