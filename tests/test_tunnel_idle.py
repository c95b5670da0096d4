"""
Idle timeouts per direction, at both ends of the tunnel in memory
(L{tests.tunnel_memory}): a slow but steady upload longer than the timeout
succeeds; a response body that stalls after its headers is cut; time the
user side holds the response back is not counted; the connector times its
backend from the end of the request body.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from appproxy.connector.backend import BackendClient
from appproxy.tunnel.service import RESPONSE_GRACE
from tests.tunnel_memory import ConnectorEnd, FakeExchange, ServiceEnd, job, open_upload

LIMIT = job().app.backend_timeout + RESPONSE_GRACE


class ServiceIdleTests(SynchronousTestCase):
    def end(self) -> ServiceEnd:
        end = ServiceEnd(10)
        self.addCleanup(end.close)
        end.answer_settings()
        return end

    def open(self, end: ServiceEnd, has_body: bool) -> tuple[FakeExchange, int]:
        ex = FakeExchange()
        method = b"POST" if has_body else b"GET"
        end.group.put(job(b"/u", method, has_body=has_body, exchange=ex), lambda _: self.fail())
        end.pump()
        return ex, ex.stream.stream_id

    def test_slow_steady_upload_succeeds(self) -> None:
        """
        An upload that keeps flowing for five times the timeout is answered
        normally (it used to get a 504 once the timeout had passed since the
        request was opened).
        """
        end = self.end()
        ex, sid = self.open(end, has_body=True)
        end.answer(sid, [(b":status", b"100"), (b"appproxy-dispatched", b"1")], end=False)
        self.assertIn(("body-wanted",), ex.events)
        for _ in range(int(5 / 0.8) + 1):
            end.clock.advance(LIMIT * 0.8)
            self.assertTrue(ex.stream.write_body(b"x" * 100))
            end.pump()
        ex.stream.end_body()
        end.pump()
        end.clock.advance(LIMIT - 1)
        end.answer(sid, [(b":status", b"200")])
        self.assertEqual(ex.names(), ["opened", "body-wanted", "response", "ended"], ex.events)

    def test_stalled_upload_gets_504(self) -> None:
        end = self.end()
        ex, sid = self.open(end, has_body=True)
        end.answer(sid, [(b":status", b"100"), (b"appproxy-dispatched", b"1")], end=False)
        ex.stream.write_body(b"x")
        end.pump()
        end.clock.advance(LIMIT - 1)
        self.assertNotIn("error", ex.names())
        end.clock.advance(2)
        end.pump()
        self.assertEqual(ex.events[-1], ("error", 504, "timeout"))
        self.assertIn(sid, end.resets())

    def test_stalled_response_body_is_cut(self) -> None:
        """
        A response body that stops after its headers is cut after the
        timeout (it used to wait for ever).
        """
        end = self.end()
        ex, sid = self.open(end, has_body=False)
        end.answer(sid, [(b":status", b"200")], end=False)
        for _ in range(4):
            end.peer.send_data(sid, b"abc")
            end.pump()
            end.clock.advance(LIMIT * 0.8)
        self.assertEqual(ex.names()[-1], "data")
        end.clock.advance(LIMIT)
        end.pump()
        self.assertEqual(ex.names()[-1], "lost", ex.events)
        self.assertIn("stalled", ex.events[-1][1])
        self.assertIn(sid, end.resets())

    def test_response_held_back_by_user_not_counted(self) -> None:
        end = self.end()
        ex, sid = self.open(end, has_body=False)
        end.answer(sid, [(b":status", b"200")], end=False)
        ex.stream.pauseProducing()
        end.clock.advance(LIMIT * 5)
        self.assertNotIn("lost", ex.names())
        ex.stream.resumeProducing()
        end.clock.advance(LIMIT - 1)
        self.assertNotIn("lost", ex.names())
        end.clock.advance(2)
        self.assertEqual(ex.names()[-1], "lost")


class _Consumer:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)


class _Agent:
    """An Agent whose connection takes the body at once and never answers."""

    def __init__(self) -> None:
        self.consumer = _Consumer()
        self.finished: Deferred[None] | None = None

    def request(self, method: bytes, url: bytes, headers: Any, body: Any) -> Deferred[Any]:
        if body is not None:
            self.finished = body.startProducing(self.consumer)
        return Deferred()


class ConnectorIdleTests(SynchronousTestCase):
    TIMEOUT = 30.0

    def end(self) -> tuple[ConnectorEnd, _Agent]:
        end = ConnectorEnd()
        self.addCleanup(end.close)
        agent = _Agent()
        self.patch(BackendClient, "_agent_for", lambda self, app: agent)
        settings = {"apps": {"web": {"verify_tls": True, "ca_pem": None, "timeout": self.TIMEOUT}}}
        end.push_settings(json.dumps(settings).encode())
        return end, agent

    def post(self, end: ConnectorEnd) -> int:
        return open_upload(end)

    def test_backend_timed_from_end_of_body(self) -> None:
        """
        The backend takes a body that arrives over four timeouts, then has
        the whole timeout to answer (it used to be cancelled, 504, once the
        timeout had passed since the request started).
        """
        end, agent = self.end()
        sid = self.post(end)
        for _ in range(5):
            end.clock.advance(self.TIMEOUT * 0.8)
            end.peer.send_data(sid, b"y" * 10)
            end.pump()
        self.assertNotIn(sid, end.responses())
        end.peer.end_stream(sid)
        end.pump()
        self.assertIsNotNone(agent.finished)
        end.clock.advance(self.TIMEOUT - 1)
        self.assertNotIn(sid, end.responses())
        end.clock.advance(2)
        end.pump()
        self.assertEqual(end.responses()[sid][b"appproxy-error"], b"timeout")
        self.assertEqual(b"".join(agent.consumer.data), b"y" * 50)
