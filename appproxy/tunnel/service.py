"""
The service's end of the tunnel: an HTTP/2 I{client} on a connection that the
connector dialled.

When a connector connects, its client certificate names its group.  The
service first pushes the group's application settings (backend TLS, timeouts)
on a control stream, marked by a field no user request can carry (see
L{appproxy.tunnel.fields}); then it consumes the group's queue: one
outstanding C{get()} while it has room, capacity being the connector's
C{SETTINGS_MAX_CONCURRENT_STREAMS}, and one stream per job.  WebSockets
have their own share of the connection (L{appproxy.tunnel.service_upgrades}):
upgraded streams from the group's upgrade queue.  A stream's room
is given back only once h2 counts the stream as closed.  A settings push that
fails (refused, reset, unanswered) closes the connection cleanly: the
connector dials again and gets its settings afresh.

The protocol is a shell: the connection's state (settings push, capacity,
jobs, drain) is L{appproxy.tunnel.connection_machine}'s, each stream's
(and its idle timing) L{appproxy.tunnel.machine}'s; it feeds them h2's
events and its own and carries out their actions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
)
from h2.exceptions import H2Error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from appproxy.config import AppConfig
from appproxy.daemon.tls import peer_connector_identity
from appproxy.tunnel.base import TunnelFactory, TunnelProtocol, TunnelStream
from appproxy.tunnel.connection_machine import (
    Action,
    Close,
    ConnectionInput,
    ConnectionMachine,
    ConnectionState,
    Invalid,
    OpenStream,
    OpenUpgrade,
    PushSettings,
    ReturnJob,
    ReturnUpgrade,
    StopWanting,
    StopWantingUpgrade,
    WantJob,
    WantUpgrade,
)
from appproxy.tunnel.expiry import ExpiryWatch, watch_connector_certificate
from appproxy.tunnel.fields import UnsendableFields, request_line_problem, user_fields
from appproxy.tunnel.machine import StreamInput
from appproxy.tunnel.queue import ConnectorGroupQueue, ConnectorGroups, ProxyJob
from appproxy.tunnel.service_control import SettingsChannel
from appproxy.tunnel.service_events import ServiceStreamEvents
from appproxy.tunnel.service_stream import ServiceStream
from appproxy.tunnel.service_upgrade import UpgradeStream
from appproxy.tunnel.service_upgrades import UpgradeChannel

if TYPE_CHECKING:
    from appproxy.daemon.pki import ConnectorIdentity

#: Extra time the service waits beyond the app's backend timeout, which the
#: connector enforces, before it gives up on a stream gone idle itself
#: (L{appproxy.tunnel.machine}).
RESPONSE_GRACE = 5.0
#: Upper bound on streams per connection, whatever the connector offers.
MAX_CAPACITY = 1000
#: Upper bound on upgraded streams (WebSockets) per connection.
MAX_UPGRADES = 10000


@implementer(IHandshakeListener)
class ServiceTunnelProtocol(ServiceStreamEvents, TunnelProtocol["ServiceTunnelFactory"]):
    """
    The service's end of one tunnel connection.
    """

    client_side = True

    def __init__(self, factory: ServiceTunnelFactory) -> None:
        super().__init__(factory)
        self.groups = factory.groups
        self.group: ConnectorGroupQueue | None = None
        self.connector_id = "?"
        #: The connection's state: settings push, capacity, jobs, drain.
        self.machine = ConnectionMachine(MAX_CAPACITY, MAX_UPGRADES)
        self.active: set[ServiceStream] = set()
        self._gets: list[Deferred[ProxyJob]] = []
        #: Jobs the queue handed over, until the machine opens or returns each.
        self._offered: deque[ProxyJob] = deque()
        self._actions: deque[Action] = deque()
        self._acting = False
        self.settings = SettingsChannel(self)
        #: The upgraded streams (WebSockets) and the group's upgrade queue.
        self.upgrades = UpgradeChannel(self, RESPONSE_GRACE)
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
        admit = self.factory.admit
        if admit is not None and not admit(self, identity):
            # Refused by the connector registry (logged and audited there).
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

    @property
    def ready(self) -> bool:
        """Taking jobs: the connector acknowledged its settings, no drain."""
        return self.machine.state is ConnectionState.READY

    @property
    def capacity(self) -> int:
        return self.machine.capacity

    def close_when_idle(self) -> None:
        """
        Take no more jobs; once the streams in flight have ended, say GOAWAY
        and close.
        """
        self.feed(ConnectionInput.DRAIN_REQUESTED)

    # -- the machine -------------------------------------------------------

    def feed(self, event: ConnectionInput, value: int = 0) -> None:
        """
        Give the connection's machine an input and carry out its actions.
        Actions that feed it again (a job the queue hands over at once)
        queue theirs behind: no recursion, however many jobs wait.
        """
        self._actions.extend(self.machine.feed(event, value))
        if self._acting:
            return
        self._acting = True
        try:
            while self._actions:
                self._act(self._actions.popleft())
        finally:
            self._acting = False

    def _act(self, action: Action) -> None:
        if isinstance(action, WantJob):
            if self.group is not None:
                d = self.group.get(self)
                self._gets.append(d)
                d.addCallbacks(self._got_job, self._get_failed, callbackArgs=(d,), errbackArgs=(d,))
        elif isinstance(action, StopWanting):
            gets, self._gets = self._gets, []
            for d in gets:
                d.cancel()
        elif isinstance(action, OpenStream):
            self._open(self._offered.popleft())
        elif isinstance(action, ReturnJob):
            job = self._offered.popleft()
            # From the reactor: this runs inside the queue's hand-over.
            self.clock.callLater(
                0, job.exchange.stream_lost, job, "the tunnel connection is closing"
            )
        elif isinstance(action, WantUpgrade):
            self.upgrades.want()
        elif isinstance(action, StopWantingUpgrade):
            self.upgrades.stop_wanting()
        elif isinstance(action, OpenUpgrade):
            self.upgrades.open()
        elif isinstance(action, ReturnUpgrade):
            self.upgrades.give_back()
        elif isinstance(action, PushSettings):
            self.settings.send()
        elif isinstance(action, Close):
            self._close(action.goaway)
        elif isinstance(action, Invalid):
            self.log.error(
                "Connector {connector}: {input} is not allowed in {state}",
                connector=self.connector_id,
                input=action.input.value,
                state=action.state.value,
            )

    def _close(self, goaway: bool) -> None:
        if self.transport is None or not self.connected:
            return
        if goaway:
            try:
                self.conn.close_connection()
            except H2Error:
                pass
            self.flush()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self.expiry is not None:
            self.expiry.stop()
        self.feed(ConnectionInput.CONNECTION_LOST)
        self.settings.stop()
        self.upgrades.lost()
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
        self.feed(ConnectionInput.GOAWAY_RECEIVED)
        last = event.last_stream_id or 0
        for stream in [s for s in self.active if s.stream_id > last]:
            stream.job.dispatched = False
            stream.stream_aborted("the connector is shutting down")
        self.upgrades.goaway(last)

    # -- consuming the queue ----------------------------------------------

    def open_streams(self) -> int:
        """
        Streams open, the control streams included.  The machine's count
        agrees with h2's (the one h2 enforces against the connector's
        C{SETTINGS_MAX_CONCURRENT_STREAMS}): a stream gives its room back
        (L{ConnectionInput.STREAM_CLOSED}) only once h2 counts it closed.

        One job at a time is asked of the queue, again as soon as one is
        taken: the queue's waiters then alternate between connections, so
        load spreads over every connector of the group instead of filling
        one connection's capacity first.
        """
        return self.machine.open

    def _get_failed(self, failure: Failure, d: Deferred[ProxyJob]) -> None:
        failure.trap(CancelledError)

    def _got_job(self, job: ProxyJob, d: Deferred[ProxyJob]) -> None:
        try:
            self._gets.remove(d)
        except ValueError:
            pass
        if job.cancelled:
            self.feed(ConnectionInput.JOB_CANCELLED)
            return
        job.stop_timer()
        self._offered.append(job)
        self.feed(ConnectionInput.JOB_OFFERED)

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
        stream.start(app.backend_timeout + RESPONSE_GRACE)
        job.exchange.stream_opened(stream)
        self.flush()

    def stream_finished(self, stream: ServiceStream, code: ErrorCodes) -> None:
        """
        C{stream} is done with: reset it (with C{code}) if h2 still counts it
        open, reopen the window for what it received unread, and only then
        give its room to the next job.
        """
        was_active = stream in self.active
        self.active.discard(stream)
        stream.let_go(code)
        if was_active:
            self.feed(ConnectionInput.STREAM_CLOSED)

    def stream_failed(self, stream_id: int, stream: TunnelStream | None, failure: Failure) -> None:
        if stream_id in self.settings:
            self.settings.failed(stream_id, f"the stream failed: {failure.value}")
            return
        if not isinstance(stream, ServiceStream) or stream.finished:
            if isinstance(stream, UpgradeStream):
                self.upgrades.failed(stream, failure)
            return
        stream.feed(StreamInput.FAILED)
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
        # The connector draining (capacity 0) or shrinking: the machine stops
        # asking for jobs.
        self.feed(
            ConnectionInput.CAPACITY_CHANGED, self.conn.remote_settings.max_concurrent_streams
        )


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
    admit: Callable[[ServiceTunnelProtocol, ConnectorIdentity], bool] | None = None
    """Whether the connector registry admits a connection's certificate, asked
    once its handshake is done (L{appproxy.trust.admission}); L{None}: all are."""
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
