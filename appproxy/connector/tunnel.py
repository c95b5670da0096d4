"""
The connector's end of the tunnel: an HTTP/2 I{server} on a connection the
connector dialled out.

Each stream the service opens is one user request, handled by a
L{ConnectorStream} (L{appproxy.connector.request}), or one WebSocket (an
extended CONNECT with C{:protocol websocket}, RFC 8441), handled by an
L{UpgradeStream} (L{appproxy.connector.websocket}); the one exception is the
control stream on which the service pushes its settings, told apart by a
field the service never lets a user request carry (never by its path).
What goes wrong in one stream ends that stream only: a 502 for the user if
nothing was answered yet, a RST_STREAM otherwise (the base protocol's error
boundary, L{TunnelProtocol.within_stream}).  The connector's
capacity is its C{SETTINGS_MAX_CONCURRENT_STREAMS}: C{capacity} requests
plus C{websocket_capacity} WebSockets, each kind refused past its own share
(the settings answer tells the service the second); draining drops it to 0,
ends the WebSockets at once (they cannot be drained: their apps'
connections are closed and their streams reset), lets the requests in
flight finish and then says GOAWAY.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import attrs
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, DataReceived, RequestReceived
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from appproxy.connector.backend import BackendApp, BackendClient, BackendError, parse_settings
from appproxy.connector.request import ConnectorStream
from appproxy.connector.websocket import UpgradeStream
from appproxy.connector.websocket_app import is_upgrade
from appproxy.tunnel.base import TunnelFactory, TunnelProtocol, TunnelStream
from appproxy.tunnel.connector_machine import (
    AcceptRequest,
    AcceptSettings,
    AcceptUpgrade,
    Action,
    Advertise,
    Close,
    ConnectorInput,
    ConnectorMachine,
    EndUpgrades,
    Invalid,
)
from appproxy.tunnel.expiry import ExpiryWatch, watch_own_certificate
from appproxy.tunnel.fields import CONTROL_FIELD, SETTINGS_CONTROL, UnsendableFields

N = ConnectorInput
_log = Logger(namespace="appproxy.connector.tunnel")

#: Largest settings document accepted from the service.
MAX_SETTINGS_SIZE = 1 << 20
#: The settings answer's field that says how many WebSockets we take.
UPGRADE_CAPACITY_FIELD = b"appproxy-upgrade-capacity"


@attrs.define(eq=False)
class _SettingsStream(TunnelStream):
    """The control stream on which the service pushes its settings."""

    proto: ConnectorTunnelProtocol
    chunks: list[bytes] = attrs.field(init=False, factory=list)
    size: int = attrs.field(init=False, default=0)

    def request_data(self, data: bytes, flow_length: int) -> None:
        self.size += len(data)
        if self.size <= MAX_SETTINGS_SIZE:
            self.chunks.append(data)
        self.proto.acknowledge(self.stream_id, flow_length)

    def request_ended(self) -> None:
        """
        The settings are in: applied (and answered) at once, or, in the
        daemon, once the configuration pull they trigger is done, so that
        the pushed and the pulled settings take effect together.
        """
        pushed = self.proto.factory.settings_pushed
        pulled = pushed() if pushed is not None else None
        if pulled is None:
            self._apply()
        else:
            pulled.addBoth(self._pulled)

    def _pulled(self, _: object) -> None:
        proto = self.proto
        if proto.connected and proto.streams.get(self.stream_id) is self:
            proto.within_stream(self.stream_id, self._apply)

    def _apply(self) -> None:
        proto = self.proto
        backend = proto.factory.backend
        status = b"204"
        try:
            if self.size > MAX_SETTINGS_SIZE:
                raise ValueError("settings document too large")
            backend.configure(parse_settings(json.loads(b"".join(self.chunks))))
            proto.log.info(
                "Settings received for apps: {apps}", apps=", ".join(sorted(backend.apps))
            )
            applied = N.SETTINGS_APPLIED
        except ValueError as e:
            proto.log.error("Refusing the service's settings: {error}", error=str(e))
            status = b"400"
            applied = N.SETTINGS_REFUSED
        proto._feed(applied)
        proto.streams.pop(self.stream_id, None)
        capacity = b"%d" % proto.factory.websocket_capacity
        proto.conn.send_headers(
            self.stream_id,
            [(b":status", status), (UPGRADE_CAPACITY_FIELD, capacity)],
            end_stream=True,
        )
        proto.flush()


class ConnectorTunnelProtocol(TunnelProtocol["ConnectorTunnelFactory"]):
    """
    The connector's end of one tunnel connection: its backend client and
    capacity are its factory's.  A shell over L{ConnectorMachine}: it feeds
    the machine the streams the service opens, their ends, drain and GOAWAY,
    and carries out what it decides (take, refuse, advertise, close).
    """

    client_side = False
    #: Fires when a drain asked for is done (the connection closed).
    _drained: Deferred[None] | None = None
    #: Drains the connection at its certificate's notAfter.
    _expiry: ExpiryWatch | None = None
    machine: ConnectorMachine

    def local_settings(self) -> dict[int, int]:
        settings = super().local_settings()
        factory = self.factory
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = (
            factory.capacity + factory.websocket_capacity
        )
        # WebSockets come as extended CONNECTs (RFC 8441).
        settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        return settings

    def connectionMade(self) -> None:
        self.machine = ConnectorMachine(self.factory.capacity, self.factory.websocket_capacity)
        super().connectionMade()
        self._expiry = watch_own_certificate(
            self.factory.clock, self.transport, self.drain, self.abort
        )
        if self.factory.draining:
            self.drain()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self._expiry is not None:
            self._expiry.stop()
        super().connectionLost(reason)
        if hasattr(self, "machine"):
            self._feed(N.CONNECTION_LOST)
        if self._drained is not None:
            d, self._drained = self._drained, None
            d.callback(None)

    def _feed(self, event: ConnectorInput) -> list[Action]:
        """Feed the machine; carry out the actions it returns but the stream's own."""
        actions = self.machine.feed(event)
        for action in actions:
            if isinstance(action, Advertise):
                self.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: action.capacity})
                self.flush()
            elif isinstance(action, EndUpgrades):
                # WebSockets never end on their own: the drain ends them.
                upgrades = [s for s in self.streams.values() if isinstance(s, UpgradeStream)]
                for upgrade in upgrades:
                    self.within_stream(upgrade.stream_id, upgrade.going_away)
                self.flush()
            elif isinstance(action, Close):
                self._close(action.goaway)
            elif isinstance(action, Invalid):
                self.log.error(
                    "Tunnel: {input} is not allowed in {state}",
                    input=action.input.value,
                    state=action.state.value,
                )
        return actions

    def request_received(self, event: RequestReceived) -> None:
        sid = event.stream_id
        fields = dict(event.headers)
        control = fields.get(CONTROL_FIELD)
        if fields.get(b":method") == b"CONNECT":
            if not is_upgrade(event.headers):
                # Only WebSockets are tunnelled; a plain CONNECT never.
                self.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
                return
            kind = N.UPGRADE_OPENED
        elif control is None:
            kind = N.REQUEST_OPENED
        elif control == SETTINGS_CONTROL:
            kind = N.CONTROL_OPENED
        else:
            kind = N.UNKNOWN_CONTROL
        [action] = self._feed(kind)
        if isinstance(action, AcceptSettings):
            settings = _SettingsStream(sid, self)
            self.streams[sid] = settings
            if event.stream_ended is not None:
                settings.request_ended()
        elif isinstance(action, AcceptRequest):
            stream = ConnectorStream(sid, self)
            self.streams[sid] = stream
            self.factory.streams_started += 1
            stream.start(event)
        elif isinstance(action, AcceptUpgrade):
            upgrade = UpgradeStream(sid, self)
            self.streams[sid] = upgrade
            self.factory.streams_started += 1
            upgrade.start(event)
        else:
            # Refused (draining, or an unknown control stream): the service
            # knows it is safe to retry elsewhere.
            self.reset_stream(sid, ErrorCodes.REFUSED_STREAM)

    def data_received(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        # A tuple: `A | B` would build a union object per DATA frame.
        if isinstance(stream, (ConnectorStream, UpgradeStream, _SettingsStream)):
            stream.request_data(event.data, event.flow_controlled_length)
        else:
            self.acknowledge(event.stream_id, event.flow_controlled_length)

    def stream_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if isinstance(stream, (ConnectorStream, UpgradeStream, _SettingsStream)):
            stream.request_ended()

    def stream_send_closed(self, stream: TunnelStream) -> None:
        if isinstance(stream, (ConnectorStream, UpgradeStream)):
            stream.stream_send_closed()

    def connection_terminated(self, event: ConnectionTerminated) -> None:
        self._feed(N.GOAWAY_RECEIVED)

    def stream_failed(self, stream_id: int, stream: TunnelStream | None, failure: Failure) -> None:
        """
        Stop what the stream started and, if the service has had no answer
        yet, send it one: a 502 (the backend's answer cannot cross the
        tunnel, or the connector failed), or a 500 on a control stream.
        """
        answered = isinstance(stream, (ConnectorStream, UpgradeStream)) and (
            stream.responded or stream.finished
        )
        if not answered and not self.sent_end(stream_id):
            if isinstance(stream, _SettingsStream):
                headers = [(b":status", b"500")]
            elif failure.check(UnsendableFields):
                headers = _error_fields("backend-error", f"unusable response: {failure.value}")
            else:
                headers = _error_fields(
                    "connector-error", f"the connector failed: {failure.value!r}"
                )
            self.conn.send_headers(stream_id, headers, end_stream=True)
        if stream is not None:
            stream.stream_aborted("the stream failed")

    def stream_finished(self, stream: ConnectorStream) -> None:
        self.streams.pop(stream.stream_id, None)
        self._feed(N.REQUEST_FINISHED)

    def upgrade_finished(self, stream: UpgradeStream) -> None:
        self.streams.pop(stream.stream_id, None)
        self._feed(N.UPGRADE_FINISHED)

    def _busy(self) -> bool:
        """Requests or WebSockets are in flight."""
        return self.machine.active > 0 or self.machine.upgrades > 0

    def drain(self) -> Deferred[None]:
        """
        Stop taking requests, end the WebSockets, let the requests in
        flight finish, then close.

        The connector advertises C{SETTINGS_MAX_CONCURRENT_STREAMS = 0} so the
        service sends nothing new, and says GOAWAY only once idle, then
        closes (an older service's h2 treats a connection as closed, for
        both ends, as soon as GOAWAY is sent).
        """
        if not self.connected:
            return succeed(None)
        if self._drained is None:
            self._drained = Deferred()
            self._feed(N.DRAIN_REQUESTED)
        return self._drained

    def _close(self, goaway: bool = True) -> None:
        if goaway:
            try:
                self.conn.close_connection()
            except H2Error:
                pass
        # Written now, even while writes are held (inside dataReceived, or
        # L{appproxy.tunnel.outbound.hold_writes} while the last response
        # ends): whatever is written after loseConnection is dropped, and
        # with it that response and the GOAWAY.
        data = self.conn.data_to_send()
        if data and self.transport is not None and self.connected:
            self.transport.write(data)
        if self.transport is not None:
            self.transport.loseConnection()


def _error_fields(kind: str, detail: str) -> list[tuple[bytes, bytes]]:
    # Only visible ASCII in the detail: it must not make the answer unsendable.
    printable = "".join(c if " " <= c <= "~" else "?" for c in detail[:300]).strip()
    return [
        (b":status", b"502"),
        (b"appproxy-error", kind.encode("ascii")),
        (b"appproxy-error-detail", printable.encode("ascii")),
    ]


@attrs.define(eq=False)
class ConnectorTunnelFactory(TunnelFactory[ConnectorTunnelProtocol]):
    """
    Builds tunnel protocols for the connector's connections.
    """

    clock: IReactorTime
    backend: BackendClient
    capacity: int = 100
    """Concurrent requests per connection."""
    ping_interval: float = 15.0
    websocket_capacity: int = 0
    """Concurrent WebSockets per connection, besides the requests (C{[connector]
    websocket_capacity}; none unless given)."""
    protocols: set[ConnectorTunnelProtocol] = attrs.field(init=False, factory=set)
    draining: bool = attrs.field(init=False, default=False)
    """Stopping: new connections drain at once."""
    streams_started: int = attrs.field(init=False, default=0)
    """Requests taken from the service since start."""
    stream_errors: int = attrs.field(init=False, default=0)
    """Streams ended by an exception in their handling (the connection went on)."""

    origins: Callable[[str, bytes, bytes], str | None] | None = None
    """The origin check: given an app's name and a request's C{:scheme} and
    C{:authority}, why it is refused (L{None}: allowed).  The daemon sets it
    from its pulled configuration (L{appproxy.connector.origins}); L{None}
    here (factories built directly, in tests) allows every app's origin."""
    settings_pushed: Callable[[], Deferred[None] | None] | None = None
    """Called when the service pushed its settings (the daemon pulls its
    configuration again); the settings are applied and acknowledged when
    the Deferred it returns fires (at once if it returns L{None})."""

    def refusal(
        self, app_name: str, app: BackendApp | None, scheme: bytes, authority: bytes
    ) -> BackendError | None:
        """Why a request (or WebSocket) for an app must not go to its origin."""
        if self.origins is not None:
            reason = self.origins(app_name, scheme, authority)
            if reason is not None:
                _log.warn(
                    "Refused a request for the app {app}: {reason}", app=app_name, reason=reason
                )
                return BackendError(502, "connector-error", f"Refused: {reason}.")
        if app is None:
            detail = f"This connector has no settings for the app {app_name!r}."
            return BackendError(502, "backend-error", detail)
        return None

    def buildProtocol(self, addr: object) -> ConnectorTunnelProtocol:
        return ConnectorTunnelProtocol(self)
