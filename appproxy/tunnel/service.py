"""
The service's end of the tunnel: an HTTP/2 I{client} on a connection that the
connector dialled.

When a connector connects, its client certificate names its group.  The
service first pushes the group's application settings (backend TLS, timeouts)
on a control stream, marked by a field no user request can carry (see
L{appproxy.tunnel.fields}); then it consumes the group's queue: one
outstanding C{get()} while it has room, capacity being the connector's
C{SETTINGS_MAX_CONCURRENT_STREAMS}, and one stream per job.  A stream's room
is given back only once h2 counts the stream as closed.  A settings push that
fails (refused, reset, unanswered) closes the connection cleanly: the
connector dials again and gets its settings afresh.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
)
from h2.exceptions import H2Error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from appproxy.config import AppConfig
from appproxy.daemon.tls import peer_connector_identity
from appproxy.tunnel.base import TunnelFactory, TunnelProtocol, TunnelStream
from appproxy.tunnel.expiry import ExpiryWatch, watch_connector_certificate
from appproxy.tunnel.fields import UnsendableFields, request_line_problem, user_fields
from appproxy.tunnel.queue import ConnectorGroupQueue, ConnectorGroups, ProxyJob
from appproxy.tunnel.service_control import SettingsChannel
from appproxy.tunnel.service_stream import ServiceStream

#: Extra time the service waits beyond the app's backend timeout, which the
#: connector enforces, before it gives up on a stream itself.
RESPONSE_GRACE = 5.0
#: Upper bound on streams per connection, whatever the connector offers.
MAX_CAPACITY = 1000


@implementer(IHandshakeListener)
class ServiceTunnelProtocol(TunnelProtocol["ServiceTunnelFactory"]):
    """
    The service's end of one tunnel connection.
    """

    client_side = True

    def __init__(self, factory: ServiceTunnelFactory) -> None:
        super().__init__(factory)
        self.groups = factory.groups
        self.group: ConnectorGroupQueue | None = None
        self.connector_id = "?"
        self.capacity = 0
        self.ready = False
        self.active: set[ServiceStream] = set()
        self._gets: list[Deferred[ProxyJob]] = []
        self._filling = False
        self.settings = SettingsChannel(self)
        #: Closing after a failed settings push, once the active streams end.
        self.closing = False
        #: Response body bytes received from the connector.
        self.bytes_received = 0
        #: Closes the connection at the connector certificate's notAfter.
        self.expiry: ExpiryWatch | None = None

    # -- connection ------------------------------------------------------

    def handshakeCompleted(self) -> None:
        identity = peer_connector_identity(self.transport)
        if identity is None:
            self.log.warn("Connector certificate names no connector group; closing")
            self.abort()
            return
        self.connector_id = identity.connector_id
        self.group = self.groups[identity.group]
        self.group.connection_made(self, identity.connector_id)
        peer = self.transport.getPeer() if self.transport is not None else None
        self.log.info(
            "Connector {connector} of group {group} connected from {peer}",
            connector=identity.connector_id,
            group=identity.group,
            peer=str(getattr(peer, "host", peer)),
        )
        self.expiry = watch_connector_certificate(self)
        self.settings.push()

    def close_when_idle(self) -> None:
        """
        Take no more jobs; once the streams in flight have ended, say GOAWAY
        and close.
        """
        if not self.closing:
            self.closing = True
            self._stop_consuming()
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        if self.active or self.transport is None or not self.connected:
            return
        if self.closing:
            try:
                self.conn.close_connection()
            except H2Error:
                pass
            self.flush()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self.expiry is not None:
            self.expiry.stop()
        self._stop_consuming()
        self.settings.stop()
        if self.group is not None:
            self.group.connection_lost(self)
            self.log.info(
                "Connector {connector} of group {group} disconnected",
                connector=self.connector_id,
                group=self.group.name,
            )
        super().connectionLost(reason)

    def connection_terminated(self, event: ConnectionTerminated) -> None:
        """
        GOAWAY from the connector.  A draining connector first shrinks its
        capacity to 0 and says GOAWAY only once idle (h2 closes the whole
        connection state on GOAWAY); streams it never processed are retried
        elsewhere.
        """
        self._stop_consuming()
        last = event.last_stream_id or 0
        for stream in [s for s in self.active if s.stream_id > last]:
            stream.job.dispatched = False
            stream.stream_aborted("the connector is shutting down")
        self._close_when_idle()

    # -- consuming the queue ----------------------------------------------

    def open_streams(self) -> int:
        # Ours, and h2's count (the one it enforces against the connector's
        # SETTINGS_MAX_CONCURRENT_STREAMS): they agree, as a stream leaves
        # `active` only once h2 counts it closed.
        return max(len(self.active) + len(self.settings), self.conn.open_outbound_streams)

    def _stop_consuming(self) -> None:
        self.ready = False
        gets, self._gets = self._gets, []
        for d in gets:
            d.cancel()

    def fill(self) -> None:
        """
        Wait for the next job while there is room.

        One outstanding C{get()} per connection, re-issued as soon as a job is
        taken: the queue's waiters then alternate between connections, so
        load spreads over every connector of the group instead of filling one
        connection's capacity first.
        """
        if self._filling or not self.ready or self.terminated or self.closing or self.group is None:
            return
        self._filling = True
        try:
            while self.ready and not self._gets and self.open_streams() < self.capacity:
                d = self.group.get(self)
                self._gets.append(d)
                d.addCallbacks(self._got_job, self._get_failed, callbackArgs=(d,), errbackArgs=(d,))
        finally:
            self._filling = False

    def _get_failed(self, failure: Failure, d: Deferred[ProxyJob]) -> None:
        failure.trap(CancelledError)

    def _got_job(self, job: ProxyJob, d: Deferred[ProxyJob]) -> None:
        try:
            self._gets.remove(d)
        except ValueError:
            pass
        if job.cancelled:
            self.fill()
            return
        job.stop_timer()
        self._open(job)
        self.fill()

    def _open(self, job: ProxyJob) -> None:
        sid = self.conn.get_next_available_stream_id()
        stream = ServiceStream(sid, self, job)
        self.streams[sid] = stream
        self.active.add(stream)
        self.within_stream(sid, self._send_request, stream)

    def _send_request(self, stream: ServiceStream) -> None:
        job = stream.job
        app = job.app
        problem = request_line_problem(job.method, job.path)
        if problem is not None:
            raise UnsendableFields(problem)
        headers = [
            (b":method", job.method),
            (b":scheme", app.internal_scheme.encode("ascii")),
            (b":authority", app.internal_netloc.encode("ascii")),
            (b":path", job.path),
            *user_fields(job.headers),
            (b"appproxy-app", app.name.encode("ascii")),
        ]
        if job.needs_dispatch_ack:
            headers.append((b"appproxy-ack", b"1"))
        self.conn.send_headers(stream.stream_id, headers, end_stream=not job.has_body)
        job.attempts += 1
        stream.timer = self.clock.callLater(
            app.backend_timeout + RESPONSE_GRACE,
            self.within_stream,
            stream.stream_id,
            stream.timed_out,
        )
        job.exchange.stream_opened(stream)
        self.flush()

    def stream_finished(self, stream: ServiceStream, code: ErrorCodes) -> None:
        """
        C{stream} is done with: reset it (with C{code}) if h2 still counts it
        open, reopen the window for what it received unread, and only then
        give its room to the next job.
        """
        sid = stream.stream_id
        self.active.discard(stream)
        self.streams.pop(sid, None)
        if self.connected and not self.terminated:
            if self.stream_open(sid):
                try:
                    self.conn.reset_stream(sid, code)
                except H2Error:
                    pass
            unacked, stream.unacked = stream.unacked, 0
            self.acknowledge(sid, unacked)
            self.flush()
        if self.terminated or self.closing:
            self._close_when_idle()
        elif self.settings.pending:
            self.settings.push()
        else:
            self.fill()

    def stream_failed(self, stream_id: int, stream: TunnelStream | None, failure: Failure) -> None:
        if stream_id in self.settings:
            self.settings.failed(stream_id, f"the stream failed: {failure.value}")
            return
        if not isinstance(stream, ServiceStream) or stream.finished:
            return
        stream._done(ErrorCodes.INTERNAL_ERROR)
        job = stream.job
        if stream.responded:
            job.exchange.stream_lost(job, f"the tunnel stream failed: {failure.value}")
            return
        if failure.check(UnsendableFields):
            status, kind, detail = 400, "bad-request", str(failure.value)
        else:
            status, kind, detail = 502, "tunnel-error", f"the stream failed: {failure.value!r}"
        # Not from here: this may run inside the queue's put(), itself
        # inside the front end's parsing of the request.
        self.clock.callLater(0, job.exchange.upstream_error, status, kind, detail)

    def _stream_reset(self, stream_id: int, error_code: int | ErrorCodes) -> None:
        if stream_id in self.settings:
            self.settings.failed(
                stream_id, f"the connector reset the stream ({ErrorCodes(error_code).name})"
            )
            return
        super()._stream_reset(stream_id, error_code)

    # -- events ------------------------------------------------------------

    def remote_settings_changed(self) -> None:
        self.capacity = min(self.conn.remote_settings.max_concurrent_streams, MAX_CAPACITY)
        if self.capacity <= len(self.active):
            # The connector is draining (capacity 0) or shrank: stop waiting.
            gets, self._gets = self._gets, []
            for d in gets:
                d.cancel()
        self.fill()

    def informational_received(self, event: InformationalResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if isinstance(stream, ServiceStream) and not stream.job.dispatched:
            stream.job.dispatched = True
            if stream.job.has_body:
                stream.job.exchange.body_wanted(stream)

    def response_received(self, event: ResponseReceived) -> None:
        sid = event.stream_id
        if sid in self.settings:
            self.settings.answered(sid, dict(event.headers).get(b":status", b""))
            return
        stream = self.streams.get(sid)
        if not isinstance(stream, ServiceStream) or stream.finished:
            self.reset_stream(sid)
            return
        if stream.timer is not None and stream.timer.active():
            stream.timer.cancel()
        stream.timer = None
        stream.job.dispatched = True
        status = 502
        headers: list[tuple[bytes, bytes]] = []
        error_kind: bytes | None = None
        error_detail = b""
        for name, value in event.headers:
            if name.startswith(b":"):
                if name == b":status":
                    status = int(value)
            elif name.startswith(b"appproxy-"):
                if name == b"appproxy-error":
                    error_kind = value
                elif name == b"appproxy-error-detail":
                    error_detail = value
            else:
                headers.append((name, value))
        if error_kind is not None:
            stream._done(ErrorCodes.NO_ERROR)
            stream.job.exchange.upstream_error(
                status, error_kind.decode("latin-1"), error_detail.decode("latin-1")
            )
            return
        # Responded only once the user side took the head: if it raises,
        # nothing went to the user yet and the boundary answers 502.
        stream.job.exchange.response_started(status, headers)
        stream.responded = True

    def data_received(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        length = event.flow_controlled_length
        if not isinstance(stream, ServiceStream) or stream.finished:
            # Settings stream reply or a stream we gave up on: just reopen the window.
            self.acknowledge(event.stream_id, length)
            return
        self.bytes_received += len(event.data)
        if stream.paused or stream.held:
            stream.unacked += length
        else:
            self.acknowledge(event.stream_id, length)
        stream.job.exchange.response_data(event.data)

    def stream_ended(self, stream_id: int) -> None:
        if stream_id in self.settings:
            self.settings.ended(stream_id)
            return
        stream = self.streams.get(stream_id)
        if not isinstance(stream, ServiceStream) or stream.finished:
            return
        # If the app answered before the whole body was sent, this resets the
        # stream: the rest of the body is not wanted.
        stream._done(ErrorCodes.NO_ERROR)
        stream.job.exchange.response_ended()


@attrs.define(eq=False)
class ServiceTunnelFactory(TunnelFactory[ServiceTunnelProtocol]):
    """
    Builds the service's tunnel protocols; wrap it in TLS that requires a
    connector client certificate.
    """

    clock: IReactorTime
    groups: ConnectorGroups
    apps: Sequence[AppConfig]
    """The apps of every group; each connection pushes its group's."""
    ping_interval: float = 15.0
    protocols: set[ServiceTunnelProtocol] = attrs.field(init=False, factory=set)
    stream_errors: int = attrs.field(init=False, default=0)

    def buildProtocol(self, addr: object) -> ServiceTunnelProtocol:
        return ServiceTunnelProtocol(self)

    def set_apps(self, apps: Sequence[AppConfig]) -> None:
        """
        New app settings (on reload): pushed to every connected connector.
        """
        self.apps = apps
        for protocol in list(self.protocols):
            protocol.settings.push()
