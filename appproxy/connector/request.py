"""
One user request at the connector: the tunnel stream in, the request to the
internal application out, and the response streamed back.

The request body is streamed to the backend connection as it arrives, and
tunnel DATA acknowledged only as the backend connection takes it; the
response goes back within the service's flow-control window, the backend
connection paused while the window is shut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from h2.events import RequestReceived
from h2.exceptions import H2Error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from appproxy.connector.backend import BackendError, classify_failure, response_fields
from appproxy.connector.bodies import ResponseSender, StreamBodyProducer
from appproxy.connector.origins import path_refusal
from appproxy.http.headers import HOP_BY_HOP
from appproxy.http.length import response_content_length
from appproxy.http.redact import redact_query
from appproxy.tunnel.base import TunnelStream
from appproxy.tunnel.connector_stream import (
    ENDED,
    Action,
    CancelTimer,
    ConnectorStreamInput,
    ConnectorStreamMachine,
    Invalid,
    SetTimer,
    TimedOut,
)
from appproxy.tunnel.fields import UnsendableFields

__all__ = ["ConnectorStream", "ResponseSender", "StreamBodyProducer"]

I = ConnectorStreamInput  # noqa: E741

if TYPE_CHECKING:
    from appproxy.connector.tunnel import ConnectorTunnelProtocol


def _response_headers(
    fields: list[tuple[bytes, bytes]], connection: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """
    Backend response header fields (names lowercased) fit for HTTP/2: without
    hop-by-hop headers, the ones named in Connection (C{connection}: its
    tokens), appproxy's own, or C{content-length} (the stream sends the
    checked length).
    """
    return [
        (name, value)
        for name, value in fields
        if name not in HOP_BY_HOP
        and name not in connection
        and name != b"content-length"
        and not name.startswith(b"appproxy-")
        and not name.startswith(b":")
    ]


@attrs.define(eq=False)
class ConnectorStream(TunnelStream):
    """
    One user request: tunnel stream in, backend request out.  A shell over
    L{ConnectorStreamMachine}: it feeds the machine what happens and carries
    out what the machine decides (the backend's timer, its 504, an abort).
    """

    proto: ConnectorTunnelProtocol
    machine: ConnectorStreamMachine = attrs.field(init=False, factory=ConnectorStreamMachine)
    finished: bool = attrs.field(init=False, default=False)
    """The machine has ended (kept by L{_feed}: read per chunk, a field, not
    a property)."""
    body: StreamBodyProducer | None = attrs.field(init=False, default=None)
    """The request body on its way to the backend, if there is one."""
    request_d: Deferred[Any] | None = attrs.field(init=False, default=None)
    """The backend request, until it answers."""
    response_transport: Any = attrs.field(init=False, default=None)
    """The backend response body's transport, paused when the tunnel is full."""
    url: bytes = attrs.field(init=False, default=b"")
    method: bytes = attrs.field(init=False, default=b"GET")
    request_id: str = attrs.field(init=False, default="-")
    """The service's request id (C{x-request-id}), for the log."""
    timer: Any = attrs.field(init=False, default=None)
    """The machine's one timer (L{SetTimer})."""

    @property
    def responded(self) -> bool:
        """The service has an answer: response headers, or an error."""
        return self.machine.responded

    def _feed(self, event: ConnectorStreamInput) -> None:
        """Feed the machine; carry out its actions; tear down once it ends."""
        machine = self.machine
        was_finished = self.finished
        actions = machine.feed(event, self.proto.clock.seconds())
        # Ended states are final: once finished, a stream stays finished.
        if machine.state in ENDED:
            self.finished = True
        for action in actions:
            self._act(action)
        if self.finished and not was_finished:
            self._finish()

    def _act(self, action: Action) -> None:
        if isinstance(action, SetTimer):
            if self.timer is not None:
                self._stop_timer()
            delay = max(0.0, action.at - self.proto.clock.seconds())
            self.timer = self.proto.clock.callLater(delay, self._feed, I.TIMER_FIRED)
        elif isinstance(action, CancelTimer):
            self._stop_timer()
        elif isinstance(action, TimedOut):
            url = redact_query(self.url.decode("latin-1"))
            self.fail(BackendError(504, "timeout", f"{url} {action.detail}"))
            if self.request_d is not None:
                d, self.request_d = self.request_d, None
                d.cancel()
        elif isinstance(action, Invalid):
            self.proto.log.error(
                "Stream {rid}: {input} is not allowed in {state}",
                rid=self.request_id,
                input=action.input.value,
                state=action.state.value,
            )
        else:  # Abort
            self._abort(action.reason)

    def start(self, event: RequestReceived) -> None:
        proto = self.proto
        pseudo: dict[bytes, bytes] = {}
        fields: list[tuple[bytes, bytes]] = []
        length: int | str = UNKNOWN_LENGTH
        app_name = b""
        ack = False
        for name, value in event.headers:
            if name.startswith(b":"):
                pseudo[name] = value
            elif name == b"appproxy-app":
                app_name = value
            elif name == b"appproxy-ack":
                ack = True
            elif name.startswith(b"appproxy-"):
                continue
            elif name == b"content-length":
                length = int(value)
            elif name != b"host":  # the authority is the host
                if name == b"x-request-id":
                    self.request_id = value.decode("latin-1")
                fields.append((name, value))
        has_body = event.stream_ended is None
        app = proto.factory.backend.apps.get(app_name.decode("latin-1"))
        refused = proto.factory.refusal(
            app_name.decode("latin-1"),
            app,
            pseudo.get(b":scheme", b"http"),
            pseudo.get(b":authority", b""),
        )
        path = pseudo.get(b":path", b"/")
        bad_path = path_refusal(pseudo.get(b":method", b"GET"), path)
        if refused is None and bad_path is not None:
            refused = BackendError(502, "connector-error", f"Refused: {bad_path}.")
        if refused is not None or app is None:
            self.fail(refused or BackendError(502, "connector-error", "no app"))
            return
        # Timed by the machine, by idleness, not by the backend client.
        machine = self.machine
        machine.limit = app.timeout
        machine.has_body = has_body
        authority = pseudo.get(b":authority", b"")
        fields.append((b"host", authority))
        self.url = pseudo.get(b":scheme", b"http") + b"://" + authority + path
        self.method = pseudo.get(b":method", b"GET")
        if has_body:
            self.body = StreamBodyProducer(self, length)
        if ack:
            proto.conn.send_headers(
                self.stream_id, [(b":status", b"100"), (b"appproxy-dispatched", b"1")]
            )
            proto.flush()
        self._feed(I.REQUEST_SENT)
        d = proto.factory.backend.request(
            app, self.method, self.url, fields, self.body, proto.clock, timed=False
        )
        self.request_d = d
        d.addCallbacks(self._got_response, self._request_failed, errbackArgs=(app.timeout,))
        # What those raise ends this stream only (the tunnel's error boundary).
        d.addErrback(proto.stream_errback, self.stream_id)

    def _got_response(self, response: IResponse) -> None:
        self.request_d = None
        if self.finished:
            response.deliverBody(Protocol())  # discard; the stream is gone
            return
        headers = [(b":status", b"%d" % response.code)]
        fields: list[tuple[bytes, bytes]] | None = getattr(response, "fields", None)
        if fields is None:
            fields, tokens = response_fields(response)
        else:
            tokens = response.connection  # type: ignore[attr-defined]
        declared = (
            [value for name, value in fields if name == b"content-length"]
            if self.method == b"HEAD"
            else []
        )
        try:
            length = response_content_length(
                response.code,
                self.method,
                declared,
                None if response.length is UNKNOWN_LENGTH else response.length,
            )
        except ValueError:
            response.deliverBody(Protocol())  # a HEAD response: nothing to read
            url = redact_query(self.url.decode("latin-1"))
            self.fail(
                BackendError(502, "backend-error", f"{url} sent Content-Length {declared!r}.")
            )
            return
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        headers += _response_headers(fields, tokens)
        try:
            self.proto.conn.send_headers(self.stream_id, headers)
        except H2Error:
            self.abort_response()
            return
        except UnsendableFields:
            # The tunnel's error boundary answers 502; the body is not wanted.
            response.deliverBody(Protocol())
            raise
        self._feed(I.RESPONSE_STARTED)
        self.proto.flush()
        response.deliverBody(ResponseSender(self))

    def _request_failed(self, failure: Failure, timeout: float) -> None:
        self.request_d = None
        if self.finished:
            return
        self.proto.log.debug(
            "Backend request to {url} failed: {failure!r} {reasons!r}",
            url=redact_query(self.url.decode("latin-1")),
            failure=failure.value,
            reasons=[r.value for r in getattr(failure.value, "reasons", [])],
        )
        self.fail(classify_failure(failure, self.url.decode("latin-1"), timeout))

    def fail(self, error: BackendError) -> None:
        # The detail names the internal URL: it goes to the logs (here, and
        # the service's, with the request id), never to the user's page.
        self.proto.log.info(
            "Backend request {rid} failed: {detail}",
            rid=self.request_id,
            detail=error.detail,
            kind=error.kind,
        )
        if self.body is not None:
            self.body.fail(error.detail)
        try:
            self.proto.conn.send_headers(
                self.stream_id,
                [
                    (b":status", b"%d" % error.status),
                    (b"appproxy-error", error.kind.encode("ascii")),
                    (b"appproxy-error-detail", error.detail.encode("latin-1", "replace")),
                ],
                end_stream=True,
            )
        except H2Error:
            pass
        self._feed(I.ERROR_ANSWERED)
        self.proto.flush()

    # -- request body, from the tunnel -----------------------------------------

    def request_data(self, data: bytes, flow_length: int) -> None:
        if self.body is None or self.finished:
            self.proto.acknowledge(self.stream_id, flow_length)
            return
        self.body.data(data, flow_length)

    def request_ended(self) -> None:
        if self.body is not None:
            self.body.end()

    def upload_started(self) -> None:
        """The backend connection asks for the body."""
        self._feed(I.UPLOAD_STARTED)

    def body_queued(self) -> None:
        """Body bytes wait for the backend: its idle clock runs."""
        self._feed(I.BODY_QUEUED)

    def acknowledge(self, flow_length: int) -> None:
        # The backend took body: it is not idle.
        if not self.finished:
            self._feed(I.BODY_TAKEN)
            self.proto.acknowledge(self.stream_id, flow_length)

    def body_delivered(self) -> None:
        """The backend took the whole body: its time to answer starts now."""
        self._feed(I.BODY_DELIVERED)

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def cancel_from_backend(self) -> None:
        """
        The backend connection stopped taking the body (it failed or answered
        early); nothing more to do here, the response path reports it.
        """

    # -- response body, to the tunnel ------------------------------------------

    def send_response_data(self, data: bytes) -> None:
        if self.finished:
            return
        if not self.proto.send_data(self, data) and self.response_transport is not None:
            self.response_transport.pauseProducing()

    def outbound_drained(self) -> None:
        if self.response_transport is not None:
            self.response_transport.resumeProducing()

    def end_response(self) -> None:
        if self.finished:
            return
        self.proto.end_stream(self)

    def stream_send_closed(self) -> None:
        self._feed(I.RESPONSE_ENDED)

    def abort_response(self) -> None:
        if self.finished:
            return
        self._feed(I.FAILED)
        self.proto.reset_stream(self.stream_id)

    # -- teardown ----------------------------------------------------------------

    def stream_aborted(self, reason: str) -> None:
        """
        The service reset the stream (the user left), the tunnel dropped, or
        handling it failed (answered by the error boundary): stop the
        backend request.
        """
        if self.finished:
            return
        self._feed(I.PEER_RESET)
        self._stop_backend(reason)

    def _abort(self, reason: str) -> None:
        """The machine refused an input: answer 502 if we can, stop the rest."""
        proto = self.proto
        if not proto.sent_end(self.stream_id):
            try:
                proto.conn.send_headers(
                    self.stream_id,
                    [(b":status", b"502"), (b"appproxy-error", b"connector-error")],
                    end_stream=True,
                )
            except H2Error:
                proto.reset_stream(self.stream_id)
            proto.flush()
        self._stop_backend(reason)

    def _stop_backend(self, reason: str) -> None:
        if self.body is not None:
            self.body.fail(reason)
        if self.request_d is not None:
            d, self.request_d = self.request_d, None
            d.cancel()
        if self.response_transport is not None:
            self.response_transport.stopProducing()

    def _finish(self) -> None:
        if self.timer is not None:
            self._stop_timer()
        self.closed = True
        self.proto.stream_finished(self)
