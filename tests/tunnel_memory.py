"""
Each end of the tunnel in memory, facing a raw h2 peer: the service's end
(L{ServiceEnd}) with a connector played by an h2 server, and the connector's
end (L{ConnectorEnd}) with the service played by an h2 client.  No TLS, no
sockets: the bytes go through C{StringTransport}s, time through a
C{MemoryReactorClock}.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import Event, RequestReceived, ResponseReceived, StreamReset
from h2.settings import SettingCodes
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test.iosim import FakeTransport, IOPump, connect

from appproxy.config import AppConfig
from appproxy.connector.backend import BackendClient
from appproxy.connector.tunnel import ConnectorTunnelFactory, ConnectorTunnelProtocol
from appproxy.tunnel.fields import CONTROL_FIELD, SETTINGS_CONTROL
from appproxy.tunnel.queue import ConnectorGroups, ProxyJob
from appproxy.tunnel.service import ServiceTunnelFactory, ServiceTunnelProtocol

APP = AppConfig(
    name="web",
    external_url="https://web.example.test/",
    internal_url="http://127.0.0.1:9/",
    connector_group="g",
    pre_authentication="passthrough",
)


class Transport(StringTransport):
    """A C{StringTransport} that records an abort as well as a close."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class FakeExchange:
    """The user side of one request: records what the tunnel tells it."""

    def __init__(self, raise_on_response: bool = False) -> None:
        self.events: list[tuple[Any, ...]] = []
        #: The data given with the response's end (C{response_data(..., last=True)}).
        self.last: list[bytes] = []
        self.stream: Any = None
        self.raise_on_response = raise_on_response

    def stream_opened(self, stream: Any) -> None:
        self.stream = stream
        self.events.append(("opened", stream.stream_id))

    def body_wanted(self, stream: Any) -> None:
        self.events.append(("body-wanted",))

    def body_drained(self) -> None:
        pass

    def response_started(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.raise_on_response:
            raise RuntimeError("the user side failed")
        self.events.append(("response", status))

    def response_data(self, data: bytes, last: bool = False) -> None:
        self.events.append(("data", data))
        if last:
            self.last.append(data)
            self.events.append(("ended",))

    def response_ended(self) -> None:
        self.events.append(("ended",))

    def upstream_error(self, status: int, kind: str, detail: str) -> None:
        self.events.append(("error", status, kind))

    def stream_lost(self, job: ProxyJob, reason: str) -> None:
        self.events.append(("lost", reason))

    def names(self) -> list[Any]:
        return [e[0] for e in self.events]


def job(
    path: bytes = b"/",
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    has_body: bool = False,
    exchange: FakeExchange | None = None,
    rid: str = "rid",
) -> ProxyJob:
    return ProxyJob(
        APP,
        method,
        path,
        headers or [],
        rid,
        has_body,
        exchange or FakeExchange(),
    )


class ServiceEnd:
    """
    The service's tunnel protocol, its group's queue, and a raw h2 server
    as the connector (capacity C{capacity}).  The settings push is left for
    the test to answer (L{answer_settings}).
    """

    def __init__(self, capacity: int) -> None:
        self.clock = MemoryReactorClock()
        self.groups = ConnectorGroups(self.clock, 3600.0)
        self.group = self.groups["g"]
        # PINGs out of the way of the timers under test.
        self.factory = ServiceTunnelFactory(self.clock, self.groups, [APP], ping_interval=1e6)
        self.proto: ServiceTunnelProtocol = self.factory.buildProtocol(None)
        self.transport = Transport()
        self.proto.makeConnection(self.transport)
        self.peer = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.peer.initiate_connection()
        self.peer.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: capacity})
        # What handshakeCompleted does, without TLS.
        self.proto.connector_id = "c1"
        self.proto.group = self.group
        self.group.connection_made(self.proto, "c1")
        self.proto.settings.push()
        self.events: list[Event] = []
        self.pump()

    def pump(self) -> list[Event]:
        """Move bytes both ways until both ends are quiet; the peer's events."""
        new: list[Event] = []
        for _ in range(20):
            out = self.transport.value()
            self.transport.clear()
            if out:
                new += self.peer.receive_data(out)
            back = self.peer.data_to_send()
            if not out and not back:
                break
            if back and not self.transport.disconnecting:
                self.proto.dataReceived(back)
        self.events += new
        return new

    def requests(self) -> dict[int, dict[bytes, bytes]]:
        """The request header blocks the peer received, by stream."""
        return {e.stream_id: dict(e.headers) for e in self.events if isinstance(e, RequestReceived)}

    def settings_stream(self) -> int:
        return next(
            sid for sid, h in self.requests().items() if h.get(CONTROL_FIELD) == SETTINGS_CONTROL
        )

    def answer(self, sid: int, headers: list[tuple[bytes, bytes]], end: bool = True) -> None:
        self.peer.send_headers(sid, headers, end_stream=end)
        self.pump()

    def answer_settings(self, status: bytes = b"204") -> None:
        self.answer(self.settings_stream(), [(b":status", status)])

    def resets(self) -> list[int]:
        return [e.stream_id for e in self.events if isinstance(e, StreamReset)]

    def close(self) -> None:
        if self.proto.connected:
            self.proto.connectionLost()


class ConnectorEnd:
    """
    The connector's tunnel protocol (its backend client on a memory reactor:
    backend requests stay pending) and a raw h2 client as the service.
    """

    def __init__(self, capacity: int = 10) -> None:
        self.clock = MemoryReactorClock()
        self.factory = ConnectorTunnelFactory(self.clock, BackendClient(self.clock), capacity, 15.0)
        self.proto: ConnectorTunnelProtocol = self.factory.buildProtocol(None)
        self.transport = Transport()
        self.proto.makeConnection(self.transport)
        self.peer = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.peer.initiate_connection()
        self.events: list[Event] = []
        self.pump()

    def pump(self) -> list[Event]:
        new: list[Event] = []
        for _ in range(20):
            back = self.peer.data_to_send()
            if back and not self.transport.disconnecting:
                self.proto.dataReceived(back)
            out = self.transport.value()
            self.transport.clear()
            if out:
                new += self.peer.receive_data(out)
            if not out and not back:
                break
        self.events += new
        return new

    def request(self, headers: list[tuple[bytes, bytes]], body: bytes | None = None) -> int:
        sid = self.peer.get_next_available_stream_id()
        self.peer.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            self.peer.send_data(sid, body, end_stream=True)
        self.pump()
        return sid

    def push_settings(self, document: bytes) -> int:
        return self.request(
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"appproxy"),
                (b":path", b"/"),
                (CONTROL_FIELD, SETTINGS_CONTROL),
            ],
            document,
        )

    def user_request(self, method: bytes, path: bytes, app: bytes = b"web") -> int:
        return self.request(
            [
                (b":method", method),
                (b":scheme", b"http"),
                (b":authority", b"127.0.0.1:9"),
                (b":path", path),
                (b"x-request-id", b"rid-" + path[:20].hex().encode()),
                (b"appproxy-app", app),
            ]
        )

    def responses(self) -> dict[int, dict[bytes, bytes]]:
        return {
            e.stream_id: dict(e.headers) for e in self.events if isinstance(e, ResponseReceived)
        }

    def resets(self) -> list[int]:
        return [e.stream_id for e in self.events if isinstance(e, StreamReset)]

    def close(self) -> None:
        if self.proto.connected:
            self.proto.connectionLost()


def join_ends(
    service: ServiceTunnelProtocol, connector: ConnectorTunnelProtocol, group: Any
) -> IOPump:
    """
    Connect C{service} and C{connector} through C{iosim}, as a handshake
    would (without TLS): the connector is C{c1} of C{group}, the settings
    pushed and acknowledged.  Returns the pump that moves their bytes.
    """
    pump = connect(
        connector,
        FakeTransport(connector, isServer=False),
        service,
        FakeTransport(service, isServer=True),
        greet=False,
    )
    pump.flush()
    # What handshakeCompleted does, without TLS.
    service.connector_id = "c1"
    service.group = group
    group.connection_made(service, "c1")
    service.settings.push()
    pump.flush()
    return pump


def open_upload(end: ConnectorEnd) -> int:
    """Open a POST to C{/up} of the app C{web} at C{end}; its stream id."""
    sid: int = end.peer.get_next_available_stream_id()
    end.peer.send_headers(
        sid,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1:9"),
            (b":path", b"/up"),
            (b"appproxy-app", b"web"),
        ],
    )
    end.pump()
    return sid
