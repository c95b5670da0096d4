"""
The connector times its backend's upload by idleness (the connector's
stream machine, L{appproxy.tunnel.connector_stream}), with the connector's
real tunnel protocol and a raw h2 client as the service
(L{tests.tunnel_memory.ConnectorEnd}): a backend that stops reading the
request body while we have bytes for it gets a 504-kind answer once its
timeout has passed; time with nothing to give it (a slow user) is not
counted.  An input the stream machine refuses ends that stream only.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from appproxy.connector.backend import BackendClient
from appproxy.connector.request import ConnectorStream
from tests.tunnel_memory import ConnectorEnd, open_upload

TIMEOUT = 30.0


class _Consumer:
    """The backend connection: takes C{room} writes, then pauses its producer."""

    def __init__(self, producer: Any, room: int) -> None:
        self.producer = producer
        self.room = room
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)
        self.room -= 1
        if self.room <= 0:
            self.producer.pauseProducing()


class _Agent:
    """An Agent whose connection reads C{room} chunks of body, then no more."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.consumer: _Consumer | None = None
        self.cancelled = False

    def request(self, method: bytes, url: bytes, headers: Any, body: Any) -> Deferred[Any]:
        if body is not None:
            self.consumer = _Consumer(body, self.room)
            # The body's end (or its failure) is the Agent's to consume.
            body.startProducing(self.consumer).addErrback(lambda _: None)

        def cancel(d: Deferred[Any]) -> None:
            self.cancelled = True

        return Deferred(cancel)


class UploadIdleTests(SynchronousTestCase):
    def end(self, room: int) -> tuple[ConnectorEnd, _Agent]:
        end = ConnectorEnd()
        self.addCleanup(end.proto.connectionLost)
        agent = _Agent(room)
        self.patch(BackendClient, "_agent_for", lambda self, app: agent)
        settings = {"apps": {"web": {"verify_tls": True, "ca_pem": None, "timeout": TIMEOUT}}}
        end.push_settings(json.dumps(settings).encode())
        return end, agent

    def post(self, end: ConnectorEnd) -> int:
        return open_upload(end)

    def test_backend_not_reading_gets_504(self) -> None:
        """
        The backend takes two chunks and then reads nothing: the bytes we
        hold for it wait C{TIMEOUT} seconds, then the service is answered
        504 (kind C{timeout}) and the backend request is cancelled.
        """
        end, agent = self.end(room=2)
        sid = self.post(end)
        for _ in range(3):
            end.clock.advance(1)
            end.peer.send_data(sid, b"z" * 100)
            end.pump()
        assert agent.consumer is not None
        self.assertEqual(len(agent.consumer.data), 2)
        # The third chunk waits from t=3: the backend has until t=33.
        end.clock.advance(TIMEOUT - 1.5)
        end.pump()
        self.assertNotIn(sid, end.responses())
        end.clock.advance(2)
        end.pump()
        answer = end.responses()[sid]
        self.assertEqual(answer[b":status"], b"504")
        self.assertEqual(answer[b"appproxy-error"], b"timeout")
        self.assertIn(b"did not read the request body", answer[b"appproxy-error-detail"])
        self.assertTrue(agent.cancelled)
        self.assertTrue(end.proto.connected)
        self.assertEqual(end.proto.machine.active, 0)

    def test_slow_user_not_counted(self) -> None:
        """
        The backend takes every byte at once; the user sends one every 1.5
        timeouts.  Nothing waits for the backend, so it is not idle: no 504
        (the connector used to cancel it one timeout after its last chunk).
        """
        end, agent = self.end(room=1000)
        sid = self.post(end)
        for _ in range(4):
            end.clock.advance(TIMEOUT * 1.5)
            end.pump()
            end.peer.send_data(sid, b"y" * 10)
            end.pump()
        self.assertNotIn(sid, end.responses())
        self.assertFalse(agent.cancelled)
        end.peer.end_stream(sid)
        end.pump()
        end.clock.advance(TIMEOUT + 1)
        end.pump()
        self.assertEqual(end.responses()[sid][b"appproxy-error"], b"timeout")


class InvalidInputTests(SynchronousTestCase):
    def test_invalid_input_ends_that_stream_only(self) -> None:
        """
        An input the stream machine does not allow (here: the whole body
        delivered on a request without one) is a defined error: that stream
        is answered 502 and its backend request cancelled; the connection
        and its capacity go on.
        """
        end = ConnectorEnd()
        self.addCleanup(end.close)
        agent = _Agent(room=0)
        self.patch(BackendClient, "_agent_for", lambda self, app: agent)
        settings = {"apps": {"web": {"verify_tls": True, "ca_pem": None, "timeout": TIMEOUT}}}
        end.push_settings(json.dumps(settings).encode())
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1:9"),
            (b":path", b"/"),
            (b"appproxy-app", b"web"),
        ]
        sid = end.request(headers)
        other = end.request(headers)
        self.assertEqual(end.proto.machine.active, 2)
        stream = end.proto.streams[sid]
        assert isinstance(stream, ConnectorStream)
        stream.body_delivered()
        end.pump()
        self.assertEqual(end.responses()[sid][b":status"], b"502")
        self.assertTrue(agent.cancelled)
        self.assertNotIn(other, end.responses())
        self.assertTrue(end.proto.connected)
        self.assertEqual(end.proto.machine.active, 1)
