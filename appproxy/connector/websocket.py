"""
One WebSocket at the connector: an upgraded tunnel stream (extended
CONNECT, C{:protocol websocket}) in, a connection to the internal app out
(L{appproxy.connector.websocket_app}), and raw bytes relayed both ways.
A shell over L{UpgradeMachine}: it feeds the machine the handshake's answer
(a 101 only if it accepts the WebSocket, RFC 6455 4.1), the ends of each
direction and the drain, and does what it decides.  Flow control is end to
end: the app's connection is not read while the stream's send window is
shut (until C{outbound_drained}), and the service's DATA is acknowledged as
the app's write buffer drains: a WebSocket holds a window's worth of memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import h11
from h2.errors import ErrorCodes
from h2.events import RequestReceived
from h2.exceptions import H2Error
from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.client import URI

from appproxy.connector.backend import BackendError, classify_failure
from appproxy.connector.origins import path_refusal
from appproxy.connector.websocket_app import (
    UPGRADED_FIELD,
    AppConnection,
    AppFactory,
    accept_value,
    connect,
    handshake,
    relayed_fields,
    target,
)
from appproxy.http.redact import redact_query
from appproxy.tunnel.base import TunnelStream
from appproxy.tunnel.connector_upgrade import (
    ENDED,
    Abort,
    Action,
    CloseApp,
    EndStream,
    Invalid,
    TimedOut,
    UpgradeInput,
    UpgradeMachine,
    UpgradeState,
)
from appproxy.tunnel.machine import CancelTimer, ResetStream, SetTimer

if TYPE_CHECKING:
    from appproxy.connector.tunnel import ConnectorTunnelProtocol

I = UpgradeInput  # noqa: E741
S = UpgradeState


@attrs.define(eq=False)
class UpgradeStream(TunnelStream):
    """One WebSocket: the tunnel stream, its machine, its app connection."""

    proto: ConnectorTunnelProtocol
    machine: UpgradeMachine = attrs.field(init=False, factory=UpgradeMachine)
    finished: bool = attrs.field(init=False, default=False)
    app: AppConnection | None = attrs.field(init=False, default=None)
    connecting: Deferred[Any] | None = attrs.field(init=False, default=None)
    app_name: str = attrs.field(init=False, default="-")
    url: str = attrs.field(init=False, default="")
    """The internal URL, its query hidden: for the logs only."""
    timer: Any = attrs.field(init=False, default=None)
    pending: list[tuple[bytes, int]] = attrs.field(init=False, factory=list)
    """The service's bytes that came before the app's 101 (not acknowledged)."""
    unacked: int = attrs.field(init=False, default=0)
    """Flow-controlled bytes written to the app while its buffer is full."""
    writes_paused: bool = attrs.field(init=False, default=False)
    complete: bool = attrs.field(init=False, default=False)
    """A refusal's whole body came."""
    opened_at: float | None = attrs.field(init=False, default=None)
    bytes_up: int = attrs.field(init=False, default=0)  # relayed to the app
    bytes_down: int = attrs.field(init=False, default=0)  # relayed from the app
    closed_by: str = attrs.field(init=False, default="")
    responded: bool = attrs.field(init=False, default=False)
    """The service has an answer: the 200, a refusal's head, or an error."""
    torn_down: bool = attrs.field(init=False, default=False)

    def _now(self) -> float:
        return self.proto.clock.seconds()

    def _feed(self, event: UpgradeInput) -> None:
        """Feed the machine; carry out its actions; tear down once it ends."""
        was_finished = self.finished
        actions = self.machine.feed(event, self._now())
        if self.machine.state in ENDED:
            self.finished = True
        self._act(actions)
        if self.finished and not was_finished:
            self._finish()

    def _act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SetTimer):
                self._stop_timer()
                delay = max(0.0, action.at - self._now())
                self.timer = self.proto.clock.callLater(delay, self._timer_fired)
            elif isinstance(action, CancelTimer):
                self._stop_timer()
            elif isinstance(action, EndStream):
                self.proto.end_stream(self)
            elif isinstance(action, CloseApp):
                self._close_app(action.at_once)
            elif isinstance(action, ResetStream):
                self.proto.reset_stream(self.stream_id, ErrorCodes[action.code])
            elif isinstance(action, TimedOut):
                self.closed_by = self.closed_by or "timeout"
                self._answer(BackendError(504, "timeout", f"{self.url} {action.detail}"))
            elif isinstance(action, Invalid):
                self.proto.log.error(
                    "WebSocket {rid}: {input} is not allowed in {state}",
                    rid=self.request_id,
                    input=action.input.value,
                    state=action.state.value,
                )
            elif isinstance(action, Abort):
                self._abort(action.reason)

    def _timer_fired(self) -> None:
        self.timer = None
        self.proto.within_stream(self.stream_id, self._feed, I.TIMER_FIRED)
        self.proto.flush()

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    # -- the handshake ----------------------------------------------------------

    def start(self, event: RequestReceived) -> None:
        proto = self.proto
        where = target(event.headers)
        self.app_name, self.request_id = where.app_name, where.request_id
        scheme, authority, path = where.scheme, where.authority, where.path
        self.url = redact_query((scheme + b"://" + authority + path).decode("latin-1"))
        app = proto.factory.backend.apps.get(self.app_name)
        refused = proto.factory.refusal(self.app_name, app, scheme, authority)
        bad = path_refusal(b"CONNECT", path)  # else it could change the origin dialled
        if refused is not None or app is None or bad is not None:
            self._answer(refused or BackendError(502, "connector-error", bad or "no app"))
            return
        self.machine.limit = app.timeout
        try:
            parser, request = handshake(path, authority, where.fields)
            uri = URI.fromBytes(scheme + b"://" + authority + path)
            factory = AppFactory(self, parser, request, accept_value(where.fields))
            d = connect(proto.factory.backend.reactor, app, scheme, uri.host, uri.port, factory)
        except (h11.LocalProtocolError, ValueError) as e:
            detail = f"The WebSocket handshake to {self.url} cannot be sent: {e}"
            self._answer(BackendError(502, "backend-error", detail))
            return
        self._act(self.machine.start(self._now()))
        self.connecting = d
        d.addCallbacks(self._connected, self._connect_failed, errbackArgs=(app.timeout,))
        d.addErrback(proto.stream_errback, self.stream_id)

    def _connected(self, _: object) -> None:  # the handshake went
        self.connecting = None

    def _connect_failed(self, failure: Failure, timeout: float) -> None:
        self.connecting = None
        if self.finished or failure.check(CancelledError):
            return
        self._answer(classify_failure(failure, self.url, timeout))
        self.proto.flush()

    def app_connected(self, app: AppConnection) -> None:
        self.app = app
        if self.finished:
            app.close(at_once=True)

    def accepted(self, headers: list[tuple[bytes, bytes]]) -> None:
        """The app answered 101: tell the service, then relay."""
        if self.finished:
            return
        self.proto.conn.send_headers(
            self.stream_id, [(b":status", b"200"), UPGRADED_FIELD, *relayed_fields(headers)]
        )
        self.responded = True
        self.opened_at = self._now()
        pending, self.pending = self.pending, []
        for data, flow_length in pending:
            self._to_app(data, flow_length)
        self._feed(I.ACCEPTED)
        self.proto.flush()

    def refused(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The app answered another status: relayed as an ordinary response."""
        if self.finished:
            return
        self.proto.log.info(
            "WebSocket handshake {rid} to {url}: the app answered {status}",
            rid=self.request_id,
            url=self.url,
            status=status,
        )
        self.proto.conn.send_headers(
            self.stream_id, [(b":status", b"%d" % status), *relayed_fields(headers)]
        )
        self.responded = True
        self._drop_pending()
        self._feed(I.REFUSED)
        self.proto.flush()

    def response_complete(self) -> None:
        """A refusal's body is all here."""
        self.complete = True
        self.proto.end_stream(self)

    def app_malformed(self, detail: str) -> None:
        if self.machine.state is S.HANDSHAKE_SENT:
            message = f"{self.url} sent a malformed answer to the WebSocket handshake: {detail}"
            self._answer(BackendError(502, "backend-error", message))
        else:
            self._reset("the app's answer broke off")

    def app_lost(self, reason: Failure) -> None:
        """The app's connection ended."""
        if self.finished:
            return
        state = self.machine.state
        if state is S.HANDSHAKE_SENT:
            if reason.check(SSL.Error):
                error = classify_failure(reason, self.url, self.machine.limit)
            else:
                detail = f"{self.url} closed the connection before answering the handshake."
                error = BackendError(502, "backend-reset", detail)
            self._answer(error)
        elif state is S.RESPONDING:
            if not self.complete:
                self._reset("the app's answer broke off")
        else:
            self.closed_by = self.closed_by or "app"
            self._feed(I.APP_EOF)
        self.proto.flush()

    def _answer(self, error: BackendError) -> None:
        """Answer the service with an error (unless it has an answer)."""
        self.proto.log.info(
            "WebSocket handshake {rid} failed: {detail}",
            rid=self.request_id,
            detail=error.detail,
            kind=error.kind,
        )
        self._send_error(error)
        if self.machine.state is S.HANDSHAKE_SENT:
            self._feed(I.ERROR_ANSWERED)
        self.proto.flush()

    # -- app to service ---------------------------------------------------------

    def from_app(self, data: bytes) -> None:
        if self.finished or self.app is None:
            return
        self.bytes_down += len(data)
        if not self.proto.send_data(self, data):
            self.app.pause_reading()

    def outbound_drained(self) -> None:
        if self.app is not None:
            self.app.resume_reading()

    def stream_send_closed(self) -> None:
        self._feed(I.END_SENT)

    # -- service to app ---------------------------------------------------------

    def request_data(self, data: bytes, flow_length: int) -> None:
        state = self.machine.state
        if state is S.HANDSHAKE_SENT:
            self.pending.append((data, flow_length))
        elif state in (S.OPEN, S.HALF_CLOSED) and not self.machine.up_ended:
            self._to_app(data, flow_length)
        else:
            # No app to take it (refused, ended): the bytes are dropped.
            self.proto.acknowledge(self.stream_id, flow_length)

    def _to_app(self, data: bytes, flow_length: int) -> None:
        app = self.app
        if app is None or app.gone:
            self.proto.acknowledge(self.stream_id, flow_length)
            return
        self.bytes_up += len(data)
        app.write(data)
        # The transport says at once (pauseProducing) if its buffer is full.
        if self.writes_paused:
            self.unacked += flow_length
        else:
            self.proto.acknowledge(self.stream_id, flow_length)

    def app_write_paused(self) -> None:
        self.writes_paused = True

    def app_write_resumed(self) -> None:
        self.writes_paused = False
        unacked, self.unacked = self.unacked, 0
        if unacked and not self.finished:
            self.proto.acknowledge(self.stream_id, unacked)

    def request_ended(self) -> None:
        """END_STREAM from the service: the app's connection closes once flushed."""
        if self.machine.state in (S.OPEN, S.HALF_CLOSED):
            self.closed_by = self.closed_by or "service"
        self._feed(I.SERVICE_ENDED)

    # -- teardown ----------------------------------------------------------------

    def stream_aborted(self, reason: str) -> None:
        """The service reset the stream, the tunnel dropped, or handling failed."""
        if self.finished:
            return
        if "lost" in reason:
            who = "tunnel-lost"
        elif "failed" in reason:
            who = "failed"
        else:
            who = "service-reset"
        self.closed_by = self.closed_by or who
        self._feed(I.FAILED if who == "failed" else I.PEER_RESET)

    def going_away(self) -> None:
        """The connector drains: a WebSocket cannot be drained, so it ends now."""
        if not self.finished:
            self.closed_by = self.closed_by or "drain"
            self._feed(I.GOING_AWAY)

    def _reset(self, reason: str) -> None:
        self.closed_by = self.closed_by or "app"
        self._feed(I.FAILED)
        self.proto.reset_stream(self.stream_id)

    def _send_error(self, error: BackendError) -> bool:
        """Answer the service with C{error} unless it has an answer; whether it went."""
        if self.responded or self.proto.sent_end(self.stream_id):
            return False
        self.responded = True
        fields = [
            (b":status", b"%d" % error.status),
            (b"appproxy-error", error.kind.encode("ascii")),
            (b"appproxy-error-detail", error.detail.encode("latin-1", "replace")),
        ]
        try:
            self.proto.conn.send_headers(self.stream_id, fields, end_stream=True)
        except H2Error:
            return False
        return True

    def _abort(self, reason: str) -> None:
        """The machine refused an input: answer 502 if we can, else reset."""
        if not self._send_error(BackendError(502, "connector-error", reason)):
            self.proto.reset_stream(self.stream_id)
        self.proto.flush()

    def _close_app(self, at_once: bool) -> None:
        if self.connecting is not None:
            d, self.connecting = self.connecting, None
            d.cancel()
        if self.app is not None:
            self.app.close(at_once)

    def _drop_pending(self) -> None:
        """Bytes no app will take: their room in the connection's window comes back."""
        held = sum(length for _, length in self.pending) + self.unacked
        self.pending.clear()
        self.unacked = 0
        if held:
            self.proto.acknowledge(self.stream_id, held)

    def _finish(self) -> None:
        if self.torn_down:
            # Ended within an action of the input that ended it.
            return
        self.torn_down = True
        self._stop_timer()
        self.closed = True
        self._drop_pending()
        if self.opened_at is not None:
            self.proto.log.info(
                "WebSocket {rid} of app {app} ended after {duration:.1f} s, closed by {who}:"
                " {up} bytes to the app, {down} bytes from it",
                rid=self.request_id,
                app=self.app_name,
                duration=self._now() - self.opened_at,
                who=self.closed_by or "-",
                up=self.bytes_up,
                down=self.bytes_down,
            )
        self.proto.upgrade_finished(self)
