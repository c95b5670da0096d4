"""
The service's end of the tunnel: an HTTP/2 I{client} on a connection that the
connector dialled.

When a connector connects, its client certificate names its group.  The
service first pushes the group's application settings (backend TLS, timeouts)
on one stream, then consumes the group's queue: it keeps C{capacity - active}
outstanding C{get()}s, where capacity is the connector's
C{SETTINGS_MAX_CONCURRENT_STREAMS}, and opens one stream per job.
"""

from __future__ import annotations

import json
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
from appproxy.tunnel.base import CONFIG_PATH, TunnelFactory, TunnelProtocol, TunnelStream
from appproxy.tunnel.queue import ConnectorGroupQueue, ConnectorGroups, ProxyJob
from appproxy.tunnel.service_stream import ServiceStream

#: Extra time the service waits beyond the app's backend timeout, which the
#: connector enforces, before it gives up on a stream itself.
RESPONSE_GRACE = 5.0
#: Upper bound on streams per connection, whatever the connector offers.
MAX_CAPACITY = 1000


def connector_settings(apps: Sequence[AppConfig]) -> bytes:
    """
    The per-app settings a connector needs, as the JSON pushed to it.
    """
    return json.dumps(
        {
            "apps": {
                app.name: {
                    "verify_tls": app.verify_backend_tls,
                    "ca_pem": app.backend_ca_pem.decode("ascii") if app.backend_ca_pem else None,
                    "timeout": app.backend_timeout,
                }
                for app in apps
            }
        }
    ).encode("utf-8")


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
        self._config_streams: set[int] = set()
        self._settings_pending = False
        #: Response body bytes received from the connector.
        self.bytes_received = 0

    # -- connection ------------------------------------------------------

    def handshakeCompleted(self) -> None:
        identity = peer_connector_identity(self.transport)
        if identity is None:
            self.log.warn("Connector certificate names no connector group; closing")
            self.abort()
            return
        self.connector_id = identity.connector_id
        self.group = self.groups[identity.group]
        self.group.connections.add(self)
        peer = self.transport.getPeer() if self.transport is not None else None
        self.log.info(
            "Connector {connector} of group {group} connected from {peer}",
            connector=identity.connector_id,
            group=identity.group,
            peer=str(getattr(peer, "host", peer)),
        )
        self.push_settings()

    def push_settings(self) -> None:
        """
        Send the connector the settings of its group's apps (at connect, and
        again after a reload).  Waits for a free stream if it is at capacity.
        """
        if self.group is None or not self.connected:
            return
        if self.ready and self._open_streams() >= self.capacity:
            self._settings_pending = True
            return
        self._settings_pending = False
        apps = [a for a in self.factory.apps if a.connector_group == self.group.name]
        sid = self.conn.get_next_available_stream_id()
        self._config_streams.add(sid)
        self.conn.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"appproxy"),
                (b":path", CONFIG_PATH),
                (b"content-type", b"application/json"),
            ],
        )
        stream = TunnelStream(sid)
        self.streams[sid] = stream
        self.send_data(stream, connector_settings(apps))
        self.end_stream(stream)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._stop_consuming()
        if self.group is not None:
            self.group.connections.discard(self)
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
        if not self.active:
            self.transport.loseConnection()  # type: ignore[union-attr]

    # -- consuming the queue ----------------------------------------------

    def _open_streams(self) -> int:
        return len(self.active) + len(self._config_streams)

    def _stop_consuming(self) -> None:
        self.ready = False
        gets, self._gets = self._gets, []
        for d in gets:
            d.cancel()

    def _fill(self) -> None:
        """
        Wait for the next job while there is room.

        One outstanding C{get()} per connection, re-issued as soon as a job is
        taken: the queue's waiters then alternate between connections, so
        load spreads over every connector of the group instead of filling one
        connection's capacity first.
        """
        if self._filling or not self.ready or self.terminated or self.group is None:
            return
        self._filling = True
        try:
            while self.ready and not self._gets and self._open_streams() < self.capacity:
                d = self.group.get()
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
            self._fill()
            return
        job.stop_timer()
        self._open(job)
        self._fill()

    def _open(self, job: ProxyJob) -> None:
        app = job.app
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", job.method),
            (b":scheme", app.internal_scheme.encode("ascii")),
            (b":authority", app.internal_netloc.encode("ascii")),
            (b":path", job.path),
            *job.headers,
            (b"appproxy-app", app.name.encode("ascii")),
        ]
        if job.needs_dispatch_ack:
            headers.append((b"appproxy-ack", b"1"))
        stream = ServiceStream(sid, self, job)
        try:
            self.conn.send_headers(sid, headers, end_stream=not job.has_body)
        except H2Error as e:
            self.log.info("Request {rid} not forwardable: {e}", rid=job.request_id, e=str(e))
            self.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            job.cancelled = True
            job.exchange.upstream_error(400, "bad-request", "The request cannot be forwarded.")
            return
        job.attempts += 1
        self.streams[sid] = stream
        self.active.add(stream)
        stream.timer = self.clock.callLater(app.backend_timeout + RESPONSE_GRACE, stream.timed_out)
        job.exchange.stream_opened(stream)
        self.flush()

    def stream_finished(self, stream: ServiceStream) -> None:
        self.active.discard(stream)
        self.streams.pop(stream.stream_id, None)
        if self.terminated and not self.active and self.transport is not None:
            self.transport.loseConnection()
        elif self._settings_pending:
            self.push_settings()
        else:
            self._fill()

    # -- events ------------------------------------------------------------

    def remote_settings_changed(self) -> None:
        self.capacity = min(self.conn.remote_settings.max_concurrent_streams, MAX_CAPACITY)
        if self.capacity <= len(self.active):
            # The connector is draining (capacity 0) or shrank: stop waiting.
            gets, self._gets = self._gets, []
            for d in gets:
                d.cancel()
        self._fill()

    def informational_received(self, event: InformationalResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if isinstance(stream, ServiceStream) and not stream.job.dispatched:
            stream.job.dispatched = True
            if stream.job.has_body:
                stream.job.exchange.body_wanted(stream)

    def response_received(self, event: ResponseReceived) -> None:
        sid = event.stream_id
        if sid in self._config_streams:
            settings_status = dict(event.headers).get(b":status", b"")
            if settings_status == b"204":
                self.ready = True
                self._fill()
            else:
                self.log.error(
                    "Connector {connector} refused its settings (status {status}); closing",
                    connector=self.connector_id,
                    status=settings_status.decode("latin-1"),
                )
                self.abort()
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
            stream._done()
            self.reset_stream(sid, ErrorCodes.NO_ERROR)
            stream.job.exchange.upstream_error(
                status, error_kind.decode("latin-1"), error_detail.decode("latin-1")
            )
            return
        stream.responded = True
        stream.job.exchange.response_started(status, headers)

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
        if stream_id in self._config_streams:
            self._config_streams.discard(stream_id)
            self.streams.pop(stream_id, None)
            self._fill()
            return
        stream = self.streams.get(stream_id)
        if not isinstance(stream, ServiceStream) or stream.finished:
            return
        stream._done()
        if stream.job.has_body and not stream.local_closed:
            # The app answered before the whole body was sent: stop sending it.
            self.reset_stream(stream_id, ErrorCodes.NO_ERROR)
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

    def buildProtocol(self, addr: object) -> ServiceTunnelProtocol:
        return ServiceTunnelProtocol(self)

    def set_apps(self, apps: Sequence[AppConfig]) -> None:
        """
        New app settings (on reload): pushed to every connected connector.
        """
        self.apps = apps
        for protocol in list(self.protocols):
            protocol.push_settings()
