"""
The connector's end of upgraded (WebSocket) streams against a real internal
app: L{tests.websocket_app}, the C{websockets} library's server (an
implementation nobody here wrote) as a subprocess on loopback.  The
service is played by a raw h2 client facing the connector's tunnel
protocol in memory, on the real reactor; the WebSocket frames the test
sends and reads are made and parsed with wsproto's frame codec.

Covered: the handshake and its 101 relayed, messages both ways, a refusal
relayed, an unreachable app, EOF from either end, a reset closing the app's
connection, and flow control: an app pushing megabytes to a service that
does not acknowledge leaves the connector holding about a window.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

import h11
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorSSL
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from wsproto.frame_protocol import FrameProtocol, Opcode

from appproxy.connector.backend import BackendClient
from appproxy.connector.tunnel import ConnectorTunnelFactory, ConnectorTunnelProtocol
from appproxy.connector.websocket import UpgradeStream
from appproxy.connector.websocket_app import AppConnection
from appproxy.daemon import pki
from tests.websocket_app import pattern
from tests.websocket_deployment import headers_of, in_thread, start_app, wait_until

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: What the connector may hold for one WebSocket whose service does not
#: read: what did not fit the window, at most a read or two of the app's.
BOUND = 256 << 10


class _Handing(StringTransport):
    """The tunnel's transport: what the connector writes goes to the peer at once."""

    def __init__(self, peer: ServicePeer) -> None:
        super().__init__()
        self.peer = peer

    def write(self, data: bytes) -> None:
        self.peer.received(data)

    def abortConnection(self) -> None:
        self.loseConnection()


class ServicePeer:
    """A raw h2 client playing the service, facing a connector's tunnel end."""

    def __init__(self) -> None:
        self.factory = ConnectorTunnelFactory(
            reactor, BackendClient(reactor), 10, 3600.0, websocket_capacity=4
        )
        self.proto: ConnectorTunnelProtocol = self.factory.buildProtocol(None)
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.data: dict[int, bytearray] = defaultdict(bytearray)
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.acknowledging = True
        #: The most the connector had buffered for a stream, seen at any time.
        self.most_buffered = 0
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self._sending = False
        self.proto.makeConnection(_Handing(self))
        self.send()

    def received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                self.heads[event.stream_id] = dict(event.headers)
            elif isinstance(event, DataReceived):
                self.data[event.stream_id] += event.data
                if self.acknowledging:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, StreamReset):
                self.resets[event.stream_id] = int(event.error_code)
        for stream in self.proto.streams.values():
            self.most_buffered = max(self.most_buffered, stream.outbound_size)
        if not self._sending:
            self._sending = True
            reactor.callLater(0, self.send)
        for waiter in list(self._waiters):
            if waiter[0]():
                self._waiters.remove(waiter)
                waiter[1].callback(None)

    def send(self) -> None:
        self._sending = False
        data = self.conn.data_to_send()
        if data and self.proto.connected:
            self.proto.dataReceived(data)

    def until(self, condition: Callable[[], bool], what: str) -> Deferred[None]:
        """Fires once C{condition} holds after something arrived (10 s at most)."""
        d: Deferred[None] = Deferred()
        if condition():
            d.callback(None)
            return d
        self._waiters.append((condition, d))
        d.addTimeout(10.0, reactor)

        def failed(failure: Any) -> Any:
            raise AssertionError(f"{what}: not within 10 s") from failure.value

        return d.addErrback(failed)

    def settings(self, app: dict[str, Any] | None = None) -> None:
        sid = self.conn.get_next_available_stream_id()
        document = {"apps": {"web": app or {"timeout": 10.0}}}
        self.conn.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"appproxy"),
                (b":path", b"/"),
                (b"appproxy-control", b"settings"),
            ],
        )
        self.conn.send_data(sid, json.dumps(document).encode(), end_stream=True)
        self.send()

    def websocket(
        self,
        port: int,
        path: bytes,
        key: bytes,
        scheme: bytes = b"http",
        host: bytes = b"127.0.0.1",
    ) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", scheme),
                (b":authority", b"%s:%d" % (host, port)),
                (b":path", path),
                (b"appproxy-app", b"web"),
                (b"x-request-id", b"rid-live"),
                (b"sec-websocket-key", key),
                (b"sec-websocket-version", b"13"),
                (b"cookie", b"a=1"),
                (b"cookie", b"b=2"),
            ],
        )
        self.send()
        return sid

    def send_bytes(self, sid: int, data: bytes, end: bool = False) -> None:
        self.conn.send_data(sid, data, end_stream=end)
        self.send()


class Messages:
    """The app's WebSocket messages in a stream's bytes, parsed with wsproto."""

    def __init__(self, peer: ServicePeer, sid: int) -> None:
        self.peer = peer
        self.sid = sid
        self.offset = 0
        self.frames = FrameProtocol(client=True, extensions=[])
        self.messages: list[bytes | str] = []
        self.closed = False
        self._parts: list[Any] = []

    def update(self) -> list[bytes | str]:
        data = self.peer.data[self.sid]
        self.frames.receive_bytes(bytes(data[self.offset :]))
        self.offset = len(data)
        for frame in self.frames.received_frames():
            if frame.opcode is Opcode.CLOSE:
                self.closed = True
                continue
            self._parts.append(frame.payload)
            if frame.message_finished:
                parts, self._parts = self._parts, []
                if isinstance(parts[0], str):
                    self.messages.append("".join(parts))
                else:
                    self.messages.append(b"".join(parts))
        return self.messages


def seen_now(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/seen", timeout=10) as answer:
        record: list[dict[str, Any]] = json.load(answer)["requests"]
        return record


def _lost(connection: AppConnection) -> bool:
    return connection.lost


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        cwd = self.mktemp()
        os.makedirs(cwd)
        _, self.port = yield start_app(self, cwd)
        self.peer = ServicePeer()
        self.peer.settings()
        self.app_connections: list[AppConnection] = []
        made = AppConnection.connectionMade

        def recording(connection: AppConnection) -> None:
            self.app_connections.append(connection)
            made(connection)

        self.patch(AppConnection, "connectionMade", recording)
        self.addCleanup(self._close)

    def _close(self) -> Deferred[Any]:
        if self.peer.proto.connected:
            self.peer.proto.connectionLost()
        # The app's connections are gone before the reactor is checked.
        return wait_until(
            lambda: all(_lost(c) for c in self.app_connections), "the app's connections closed"
        )

    def seen(self) -> Deferred[list[dict[str, Any]]]:
        return in_thread(seen_now, self.port)

    @inlineCallbacks
    def open(self, path: bytes) -> Any:
        key = base64.b64encode(os.urandom(16))
        sid = self.peer.websocket(self.port, path, key)
        yield self.peer.until(lambda: sid in self.peer.heads, "the answer")
        head = self.peer.heads[sid]
        self.assertEqual(head[b":status"], b"200")
        self.assertEqual(head[b"appproxy-upgraded"], b"websocket")
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.assertEqual(head[b"sec-websocket-accept"], accept)
        return sid

    @inlineCallbacks
    def send_within_window(self, sid: int, data: bytes) -> Any:
        """Send C{data} on C{sid} as the connector's window allows."""
        conn = self.peer.conn
        for start in range(0, len(data), 16384):
            chunk = data[start : start + 16384]
            size = len(chunk)

            def room(size: int = size) -> bool:
                window = conn.local_flow_control_window(sid)
                return min(window, conn.outbound_flow_control_window) >= size

            yield self.peer.until(room, "the connector's window")
            self.peer.send_bytes(sid, chunk)

    @inlineCallbacks
    def test_messages_both_ways(self) -> Any:
        """Text and a 1 MiB binary message to the app's echo and back, intact."""
        sid = yield self.open(b"/echo")
        frames = FrameProtocol(client=True, extensions=[])
        big = os.urandom(1 << 20)
        self.peer.send_bytes(sid, bytes(frames.send_data("hello")))
        yield self.send_within_window(sid, bytes(frames.send_data(big)))
        messages = Messages(self.peer, sid)
        yield self.peer.until(lambda: len(messages.update()) >= 2, "both echoes")
        self.assertEqual(messages.messages[0], "hello")
        self.assertEqual(messages.messages[1], big)
        [record] = [r for r in (yield self.seen()) if r["path"] == "/echo"]
        headers = headers_of(record)
        self.assertEqual(headers["host"], [f"127.0.0.1:{self.port}"])
        self.assertEqual(headers["cookie"], ["a=1; b=2"])
        self.assertFalse([name for name in headers if name.startswith("appproxy-")])

    @inlineCallbacks
    def test_refusal_relayed(self) -> Any:
        sid = self.peer.websocket(self.port, b"/refuse?status=403", b"x" * 24)
        yield self.peer.until(lambda: sid in self.peer.ended, "the refusal")
        self.assertEqual(self.peer.heads[sid][b":status"], b"403")
        self.assertNotIn(b"appproxy-upgraded", self.peer.heads[sid])
        self.assertEqual(bytes(self.peer.data[sid]), b"refused by the app\n")

    @inlineCallbacks
    def test_101_without_acceptance_refused(self) -> Any:
        """
        A 101 that is no WebSocket acceptance (no Upgrade, no
        Sec-WebSocket-Accept, a body): a 502, nothing of it relayed.
        """
        sid = self.peer.websocket(self.port, b"/refuse?status=101", b"x" * 24)
        yield self.peer.until(lambda: sid in self.peer.ended, "the error answer")
        self.assertEqual(self.peer.heads[sid][b":status"], b"502")
        self.assertEqual(self.peer.heads[sid][b"appproxy-error"], b"backend-error")
        self.assertNotIn(b"appproxy-upgraded", self.peer.heads[sid])
        self.assertEqual(bytes(self.peer.data[sid]), b"")
        self.assertEqual(self.peer.proto.machine.upgrades, 0)

    @inlineCallbacks
    def test_drain_ends_websockets(self) -> Any:
        """
        The connector drains: its WebSocket is reset at once and the app's
        connection closed; the drain is over without waiting for it.
        """
        sid = yield self.open(b"/echo")
        drained = self.peer.proto.drain()
        yield self.peer.until(lambda: sid in self.peer.resets, "the reset")
        self.assertEqual(self.peer.resets[sid], ErrorCodes.CANCEL)
        self.assertEqual(self.peer.proto.machine.upgrades, 0)
        record = yield wait_until(
            lambda: self.seen().addCallback(
                lambda seen: [r for r in seen if r["closed_at"] is not None]
            ),
            "the app saw the close",
        )
        self.assertEqual(record[0]["path"], "/echo")
        # Idle now: GOAWAY and close; the drain is done once it is gone.
        self.assertTrue(self.peer.proto.transport.disconnecting)  # type: ignore[union-attr]
        self.peer.proto.connectionLost()
        yield drained

    @inlineCallbacks
    def test_unreachable(self) -> Any:
        sid = self.peer.websocket(free_port(), b"/echo", b"x" * 24)
        yield self.peer.until(lambda: sid in self.peer.ended, "the error answer")
        self.assertEqual(self.peer.heads[sid][b":status"], b"502")
        self.assertEqual(self.peer.heads[sid][b"appproxy-error"], b"backend-refused")

    @inlineCallbacks
    def test_app_closes(self) -> Any:
        """The app's close handshake, then its EOF: END_STREAM to the service."""
        sid = yield self.open(b"/echo")
        frames = FrameProtocol(client=True, extensions=[])
        self.peer.send_bytes(sid, bytes(frames.send_data("close 1000 done")))
        messages = Messages(self.peer, sid)
        yield self.peer.until(lambda: bool(messages.update() or messages.closed), "the close")
        self.assertTrue(messages.closed)
        self.peer.send_bytes(sid, bytes(frames.close(1000, "ok")))
        yield self.peer.until(lambda: sid in self.peer.ended, "END_STREAM")
        self.peer.send_bytes(sid, b"", end=True)
        yield self.peer.until(lambda: self.peer.proto.machine.upgrades == 0, "the stream freed")
        [record] = [r for r in (yield self.seen()) if r["path"] == "/echo"]
        self.assertEqual(record["close_code"], 1000)

    @inlineCallbacks
    def test_service_ends(self) -> Any:
        """END_STREAM from the service closes the app's connection, then ours ends."""
        sid = yield self.open(b"/echo")
        self.peer.send_bytes(sid, b"", end=True)
        yield self.peer.until(lambda: sid in self.peer.ended, "END_STREAM")
        self.assertEqual(self.peer.proto.machine.upgrades, 0)
        record = yield wait_until(
            lambda: self.seen().addCallback(
                lambda seen: [r for r in seen if r["closed_at"] is not None]
            ),
            "the app saw the close",
        )
        self.assertEqual(record[0]["close_code"], 1006)

    @inlineCallbacks
    def test_reset_closes_the_app(self) -> Any:
        sid = yield self.open(b"/echo")
        self.peer.conn.reset_stream(sid)
        self.peer.send()
        self.assertEqual(self.peer.proto.machine.upgrades, 0)
        record = yield wait_until(
            lambda: self.seen().addCallback(
                lambda seen: [r for r in seen if r["closed_at"] is not None]
            ),
            "the app saw the close",
        )
        self.assertEqual(record[0]["close_code"], 1006)

    @inlineCallbacks
    def test_flow_control_bounded(self) -> Any:
        """
        The app pushes 8 MiB; the service does not acknowledge: it gets its
        window's worth, the app is held back (it stops getting further), and
        the connector holds about a window.  Once the service reads, all
        arrives intact.
        """
        total, size = 8 << 20, 65536
        self.peer.acknowledging = False
        sid = yield self.open(b"/push?bytes=%d&size=%d" % (total, size))
        yield self.peer.until(lambda: len(self.peer.data[sid]) >= 65535, "the window's worth")
        last = -1
        for _ in range(60):  # until the app gets no further (20 s at most)
            [record] = [r for r in (yield self.seen()) if r["path"].startswith("/push")]
            stream = self.peer.proto.streams[sid]
            assert isinstance(stream, UpgradeStream)
            self.assertLessEqual(stream.outbound_size, BOUND)
            if record["sent"] == last and last > 0:
                break
            last = record["sent"]
            yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(self.peer.data[sid]), 65535)
        self.assertLessEqual(self.peer.most_buffered, BOUND)
        # The service reads: everything arrives.
        self.peer.acknowledging = True
        self.peer.conn.acknowledge_received_data(65535, sid)
        self.peer.send()
        messages = Messages(self.peer, sid)
        yield self.peer.until(lambda: "done" in messages.update(), "the whole push")
        binary = [m for m in messages.messages if isinstance(m, bytes)]
        self.assertEqual(len(binary), total // size)
        for index, message in enumerate(binary):
            self.assertEqual(message, pattern(index, size))
        self.assertLessEqual(self.peer.most_buffered, BOUND)


class _TLSApp(Protocol):
    """
    An internal app over TLS: answers the handshake (parsed with h11) with
    a 101, then echoes the raw bytes.
    """

    def __init__(self, ended: list[Deferred[None]]) -> None:
        self.parser = h11.Connection(h11.SERVER)
        self.switched = False
        self.lost: Deferred[None] = Deferred()
        ended.append(self.lost)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self.switched:
            self.transport.write(data)
            return
        self.parser.receive_data(data)
        event = self.parser.next_event()
        if isinstance(event, h11.Request):
            key = dict(event.headers)[b"sec-websocket-key"]
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            head = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
            answer = h11.InformationalResponse(
                status_code=101, headers=[*head, (b"sec-websocket-accept", accept)]
            )
            self.transport.write(self.parser.send(answer) or b"")
            self.switched = True

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost.callback(None)


class TLSTests(TestCase):
    """An app whose internal scheme is https: TLS with the app's pushed settings."""

    def setUp(self) -> None:
        self.ca = pki.generate_ca("internal CA")
        pair = pki.issue_server_certificate(self.ca, ["localhost"])
        options = PrivateCertificate.loadPEM(pair.cert_pem + pair.key_pem).options()
        self.ended: list[Deferred[None]] = []
        factory: Any = ServerFactory.forProtocol(lambda: _TLSApp(self.ended))
        listening = cast(IReactorSSL, reactor).listenSSL(0, factory, options, interface="127.0.0.1")
        self.port = cast(IPv4Address, listening.getHost()).port
        self.addCleanup(listening.stopListening)
        self.peer = ServicePeer()
        self.addCleanup(self._close)

    def _close(self) -> Deferred[Any]:
        if self.peer.proto.connected:
            self.peer.proto.connectionLost()
        return gatherResults(self.ended)

    @inlineCallbacks
    def test_verified_with_the_apps_ca(self) -> Any:
        ca = self.ca.cert_pem.decode("ascii")
        self.peer.settings({"timeout": 10.0, "ca_pem": ca})
        key = base64.b64encode(os.urandom(16))
        sid = self.peer.websocket(self.port, b"/tls", key, b"https", b"localhost")
        yield self.peer.until(lambda: sid in self.peer.heads, "the answer")
        self.assertEqual(self.peer.heads[sid][b":status"], b"200")
        self.peer.send_bytes(sid, b"raw bytes")
        yield self.peer.until(lambda: bytes(self.peer.data[sid]) == b"raw bytes", "the echo")

    @inlineCallbacks
    def test_unknown_ca_refused(self) -> Any:
        """Without the app's CA the certificate does not verify: 502 backend-tls."""
        self.peer.settings({"timeout": 10.0})
        sid = self.peer.websocket(self.port, b"/tls", b"x" * 24, b"https", b"localhost")
        yield self.peer.until(lambda: sid in self.peer.ended, "the answer")
        self.assertEqual(self.peer.heads[sid][b":status"], b"502")
        self.assertEqual(self.peer.heads[sid][b"appproxy-error"], b"backend-tls")
