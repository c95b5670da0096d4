"""
The tunnel and its transport: the protocol is the transport's streaming
producer (no DATA while the transport's buffer is full), a peer that never
reads while it makes us answer its frames is dropped, and the TCP
connection has C{TCP_NODELAY}.
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

from h2.events import DataReceived
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.tunnel.outbound import MAX_BUFFERED_CONTROL_BYTES
from appproxy.tunnel.queue import ConnectorGroups
from appproxy.tunnel.service import ServiceTunnelFactory
from tests.tunnel_memory import APP, ConnectorEnd, FakeExchange, ServiceEnd, job


class ProducerTests(SynchronousTestCase):
    def test_registered_as_streaming_producer(self) -> None:
        end = ServiceEnd(1)
        self.addCleanup(end.close)
        self.assertIs(end.transport.producer, end.proto)
        self.assertTrue(end.transport.streaming)

    def test_no_data_while_transport_paused(self) -> None:
        """
        While the transport's buffer is full, request body is held (the
        user side is told to pause) and goes once the transport resumes us.
        """
        end = ServiceEnd(5)
        self.addCleanup(end.close)
        end.answer_settings()
        ex = FakeExchange()
        end.group.put(job(b"/up", b"POST", has_body=True, exchange=ex), lambda _: self.fail())
        end.pump()
        sid = ex.stream.stream_id
        end.answer(sid, [(b":status", b"100"), (b"appproxy-dispatched", b"1")], end=False)
        end.proto.pauseProducing()
        self.assertFalse(ex.stream.write_body(b"x" * 1000))
        self.assertEqual(end.transport.value(), b"")
        end.proto.resumeProducing()
        data = [e for e in end.pump() if isinstance(e, DataReceived)]
        self.assertEqual(b"".join(e.data for e in data), b"x" * 1000)


class UnreadPeerTests(SynchronousTestCase):
    def flood(self, end: ConnectorEnd) -> None:
        for i in range(MAX_BUFFERED_CONTROL_BYTES // 17 + 100):
            end.peer.ping(i.to_bytes(8, "big"))
        end.proto.dataReceived(end.peer.data_to_send())

    def test_peer_not_reading_dropped(self) -> None:
        """
        A peer that floods PINGs while it reads nothing (the transport has
        paused us) is dropped once the answers pile up past the cap.
        """
        end = ConnectorEnd()
        self.addCleanup(end.close)
        end.proto.pauseProducing()
        self.flood(end)
        self.assertTrue(end.transport.aborted)

    def test_reading_peer_kept(self) -> None:
        end = ConnectorEnd()
        self.addCleanup(end.close)
        self.flood(end)
        self.assertFalse(end.transport.aborted)


class NoDelayTests(TestCase):
    @inlineCallbacks
    def test_tcp_nodelay(self) -> Generator[Deferred[Any], Any, None]:
        """The tunnel's TCP connection sends small frames at once."""
        factory = ServiceTunnelFactory(
            reactor, ConnectorGroups(reactor, 30.0), [APP], ping_interval=1e6
        )
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol()
        )
        for _ in range(200):
            if factory.protocols:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        proto = next(iter(factory.protocols))
        handle = proto.transport.getHandle()  # type: ignore[union-attr]
        self.assertNotEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
        self.assertIs(proto.transport.producer, proto)  # type: ignore[union-attr]
        client.transport.loseConnection()
        proto.transport.loseConnection()  # type: ignore[union-attr]
        for _ in range(200):
            if not factory.protocols:
                break
            yield deferLater(reactor, 0.01, lambda: None)
