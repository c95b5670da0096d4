"""
A large HTTP/1.1 upload to an app that reads it slowly: the service holds
the client back instead of reading the upload into memory, then the upload
completes, and a request pipelined behind it is answered after it, once.

The backend answers the head at once and reads none of the body until the
client's upload has stalled (no progress for L{STALL} seconds): the service
may have taken only what socket buffers and the tunnel's window hold.  (The
connector's HTTP client passes a response on only once the request body is
sent, so no response flows during the upload here; how the channel's own
pauses and the request's combine is L{tests.test_input_ownership}.)
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.deployment import DOMAIN, Deployment, LoopbackTLS

#: The upload; the service may hold back at most L{BOUND} of it while the
#: backend reads nothing (kernel buffers on both hops and the tunnel's window
#: account for a few MiB each).
TOTAL = 48 << 20
BOUND = 32 << 20
#: The client's upload counts as stalled after this long without progress.
STALL = 1.0


class EarlyAnswerBackend(Protocol):
    """
    For C{POST}: answers the head and a first chunk at once, and reads none
    of the body until L{start_reading}; then reads it all and ends the
    response with the body's length.  For C{GET}: C{second}.
    """

    instances: list[EarlyAnswerBackend]
    events: list[str]

    def __init__(self) -> None:
        self.head = b""
        self.expected = 0
        self.received = 0
        self.posting = False

    def connectionMade(self) -> None:
        self.instances.append(self)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.posting:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, rest = self.head.partition(b"\r\n\r\n")
            self.head = b""
            if head.startswith(b"GET"):
                self.events.append("GET")
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
                return
            self.posting = True
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.expected = int(value)
            self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            self.transport.write(b"6\r\nearly \r\n")
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            data = rest
        self.received += len(data)
        if self.posting and self.received >= self.expected:
            self.posting = False
            self.events.append("POST body")
            done = b"done %d" % self.received
            self.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))

    def start_reading(self) -> None:
        assert self.transport is not None
        self.transport.resumeProducing()  # type: ignore[attr-defined]


class StallingUploader(Protocol):
    """
    Sends a C{POST} of L{TOTAL} bytes as fast as the connection takes it,
    then a pipelined C{GET}; reads everything that comes back.  The first
    time the upload makes no progress for L{STALL} seconds it notes how much
    was sent and calls C{on_stall}; if it never stalls, it does so once it
    has sent everything.
    """

    def __init__(self, on_stall: Any) -> None:
        self.on_stall = on_stall
        self.sent = 0
        self.stalled_at: int | None = None
        self.paused = False
        self.stall_timer: IDelayedCall | None = None
        self.received = b""
        self.done: Deferred[bytes] = Deferred()
        self.chunk = b"u" * (64 << 10)

    transport: Any

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.transport.write(
            b"POST /upload HTTP/1.1\r\nHost: web.%s\r\nContent-Length: %d\r\n\r\n"
            % (DOMAIN.encode(), TOTAL)
        )
        self.pump()

    def pump(self) -> None:
        assert self.transport is not None
        while not self.paused and self.sent < TOTAL:
            piece = self.chunk[: TOTAL - self.sent]
            self.sent += len(piece)
            self.transport.write(piece)
        if self.paused or self.done.called:
            return
        self.transport.unregisterProducer()
        self.transport.write(
            b"GET /second HTTP/1.1\r\nHost: web.%s\r\nConnection: close\r\n\r\n" % DOMAIN.encode()
        )
        if self.stalled_at is None:
            self.stalled()

    def pauseProducing(self) -> None:
        self.paused = True
        if self.stalled_at is None and self.stall_timer is None:
            self.stall_timer = reactor.callLater(STALL, self.stalled)

    def resumeProducing(self) -> None:
        self.paused = False
        self.stop_stall_timer()
        reactor.callLater(0, self.pump)

    def stopProducing(self) -> None:
        self.stop_stall_timer()

    def stop_stall_timer(self) -> None:
        if self.stall_timer is not None and self.stall_timer.active():
            self.stall_timer.cancel()
        self.stall_timer = None

    def stalled(self) -> None:
        self.stop_stall_timer()
        self.stalled_at = self.sent
        self.on_stall()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.stop_stall_timer()
        if not self.done.called:
            self.done.callback(self.received)


class UploadBackPressureTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_upload_held_until_backend_reads(self) -> Any:
        backends: list[EarlyAnswerBackend] = []
        events: list[str] = []
        factory = Factory.forProtocol(EarlyAnswerBackend)
        EarlyAnswerBackend.instances = backends
        EarlyAnswerBackend.events = events
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        internal = f"http://127.0.0.1:{cast(IPv4Address, port.getHost()).port}/"
        d = Deployment(
            self,
            [{"name": "web", "external_url": f"https://web.{DOMAIN}/", "internal_url": internal}],
            5.0,
        )
        d.start_service()
        d.start_connector(connections=1)
        yield d.wait_for_connections(1)

        def backend_reads() -> None:
            for backend in backends:
                backend.start_reading()

        client = StallingUploader(backend_reads)
        endpoint = LoopbackTLS(d.public_port, d.ca.cert_pem).endpointForURI(
            type("U", (), {"host": f"web.{DOMAIN}".encode()})()
        )
        yield connectProtocol(endpoint, client)
        received = yield client.done.addTimeout(100, reactor)
        self.assertIsNotNone(client.stalled_at)
        self.assertLess(cast(int, client.stalled_at), BOUND, "the service read the upload")
        self.assertEqual(client.sent, TOTAL)
        self.assertIn(b"early ", received)
        self.assertIn(b"done %d" % TOTAL, received)
        self.assertTrue(received.endswith(b"second"), received[-200:])
        self.assertEqual(events, ["POST body", "GET"])
