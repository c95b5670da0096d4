"""
The upgraded streams (WebSockets) of one service tunnel connection: taking
jobs from the group's upgrade queue while the connection's machine has
upgrade room (L{appproxy.tunnel.connection_machine}), opening each as an
L{UpgradeStream}, freeing its room once h2 counts it closed, and the
connector's upgrade capacity from its answer to the settings push.

A connection joins its group's upgrade queue only once its connector offers
upgrade capacity: while no connection of the group can carry a WebSocket,
the queue answers promptly (after its no-connector grace) instead of making
the handshake wait the whole queue timeout.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
from h2.errors import ErrorCodes
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from appproxy.tunnel.connection_machine import ConnectionInput
from appproxy.tunnel.fields import Field, UnsendableFields
from appproxy.tunnel.job import ProxyJob
from appproxy.tunnel.queue import ConnectorGroupQueue
from appproxy.tunnel.service_upgrade import UpgradeStream

if TYPE_CHECKING:
    from appproxy.tunnel.service import ServiceTunnelProtocol

#: The connector's answer to the settings push: how many upgraded streams it
#: takes on this connection (besides its request capacity).
UPGRADE_CAPACITY_FIELD = b"appproxy-upgrade-capacity"


def upgrade_capacity(headers: Sequence[Field], connect_enabled: bool) -> int:
    """
    The upgrade capacity a connector offers in its settings answer: 0 if it
    did not say, said nonsense, or did not enable the extended CONNECT
    (C{SETTINGS_ENABLE_CONNECT_PROTOCOL}).
    """
    if not connect_enabled:
        return 0
    for name, value in headers:
        if name == UPGRADE_CAPACITY_FIELD:
            return int(value) if value.isdigit() and len(value) <= 9 else 0
    return 0


@attrs.define(eq=False)
class UpgradeChannel:
    """
    The upgraded streams of one L{ServiceTunnelProtocol}.
    """

    proto: ServiceTunnelProtocol
    grace: float
    """Seconds the service waits for an answer beyond the app's backend timeout."""
    streams: set[UpgradeStream] = attrs.field(init=False, factory=set)
    """The upgraded streams open (not finished)."""
    queue: ConnectorGroupQueue | None = attrs.field(init=False, default=None)
    """The group's upgrade queue, once this connection has joined it."""
    _gets: list[Deferred[ProxyJob]] = attrs.field(init=False, factory=list)
    _offered: deque[ProxyJob] = attrs.field(init=False, factory=deque)

    def __len__(self) -> int:
        return len(self.streams)

    # -- the machine's actions ---------------------------------------------

    def want(self) -> None:
        """Ask the upgrade queue for one job (L{WantUpgrade})."""
        proto = self.proto
        if self.queue is None:
            if proto.group is None:
                return
            self.queue = proto.groups.upgrade_queue(proto.group.name)
            self.queue.connection_made(proto, proto.connector_id)
        d = self.queue.get(proto)
        self._gets.append(d)
        d.addCallbacks(self._got, self._get_failed, callbackArgs=(d,), errbackArgs=(d,))

    def stop_wanting(self) -> None:
        gets, self._gets = self._gets, []
        for d in gets:
            d.cancel()

    def open(self) -> None:
        """Open an upgraded stream for the job just offered (L{OpenUpgrade})."""
        job = self._offered.popleft()
        proto = self.proto
        sid = proto.conn.get_next_available_stream_id()
        stream = UpgradeStream(sid, proto, job)
        proto.streams[sid] = stream
        self.streams.add(stream)
        app = job.app
        proto.within_stream(
            sid,
            stream.send_connect,
            app.backend_timeout + self.grace,
            app.websocket_idle_timeout,
        )

    def give_back(self) -> None:
        """The job just offered cannot go here (L{ReturnUpgrade})."""
        job = self._offered.popleft()
        self.proto.clock.callLater(
            0, job.exchange.stream_lost, job, "the tunnel connection is closing"
        )

    # -- the queue ---------------------------------------------------------

    def _get_failed(self, failure: Failure, d: Deferred[ProxyJob]) -> None:
        failure.trap(CancelledError)

    def _got(self, job: ProxyJob, d: Deferred[ProxyJob]) -> None:
        try:
            self._gets.remove(d)
        except ValueError:
            pass
        if job.cancelled:
            self.proto.feed(ConnectionInput.UPGRADE_CANCELLED)
            return
        job.stop_timer()
        self._offered.append(job)
        self.proto.feed(ConnectionInput.UPGRADE_OFFERED)

    # -- the streams -------------------------------------------------------

    def finished(self, stream: UpgradeStream, code: ErrorCodes) -> None:
        """
        C{stream} is done with: reset it if h2 still counts it open, reopen
        the window for what it received unread, then free its room.
        """
        was_open = stream in self.streams
        self.streams.discard(stream)
        stream.let_go(code)
        if was_open:
            self.proto.feed(ConnectionInput.UPGRADE_CLOSED)

    def failed(self, stream: UpgradeStream, failure: Failure) -> None:
        """Handling C{stream} raised (the protocol's error boundary)."""
        if stream.finished:
            return
        stream.failed(str(failure.value), failure.check(UnsendableFields) is not None)

    def goaway(self, last_stream_id: int) -> None:
        """GOAWAY: the streams the connector never processed are lost (retried)."""
        for stream in [s for s in self.streams if s.stream_id > last_stream_id]:
            stream.job.dispatched = False
            stream.stream_aborted("the connector is shutting down")

    def lost(self) -> None:
        """The connection is gone: leave the upgrade queue."""
        if self.queue is not None:
            self.queue.connection_lost(self.proto)
