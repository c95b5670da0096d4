"""
WebSocket streams over time, end to end through the real daemons
(L{tests.websocket_deployment}): an app pushing 64 MiB to a client that
stops reading (each daemon's memory stays bounded, the data arrives intact),
an idle WebSocket outliving the request timeouts by far and closed by the
app's C{websocket_idle_timeout} (pings count as traffic), the connector
killed (the client's WebSocket closes at once), and the tunnel's share for
WebSockets (C{websocket_capacity}) full while requests go on.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from websockets.sync.client import ClientConnection

from tests.websocket_app import pattern
from tests.websocket_deployment import (
    BACKEND_TIMEOUT,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    WebSocketDaemons,
    closed_within,
    echoes,
    in_thread,
    rss_kib,
    start,
)

#: The push, in messages of L{MESSAGE} bytes.
TOTAL = 64 << 20
MESSAGE = 256 << 10
#: How long the client stops reading.
STALL = 3.0
#: What each daemon may grow by meanwhile: the windows' worth, not the push.
BOUND_KIB = 16 << 10


class SlowReaderTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_client_stops_reading(self) -> Any:
        """
        The app pushes 64 MiB; the client reads one message and stops for
        3 s: the app is held back, neither daemon's RSS grows by more than
        16 MiB; then the client reads everything, intact and in order.
        """
        d: WebSocketDaemons = yield start(self, connections=1)
        cookie = yield d.sign_in("alice")
        pids = d.pids()
        baseline = {name: rss_kib(pid) for name, pid in pids.items()}

        def open_and_read_one() -> ClientConnection:
            ws = d.open(
                f"/push?bytes={TOTAL}&size={MESSAGE}", cookie, compression=None, max_queue=2
            )
            self.assertEqual(ws.recv(timeout=10), pattern(0, MESSAGE))
            return ws

        ws = yield in_thread(open_and_read_one)
        self.addCleanup(in_thread, ws.close)
        peak = dict(baseline)
        stalled_until = reactor.seconds() + STALL
        while reactor.seconds() < stalled_until:
            for name, pid in pids.items():
                peak[name] = max(peak[name], rss_kib(pid))
            yield deferLater(reactor, 0.1, lambda: None)
        [record] = [r for r in (yield d.seen()) if r["path"].startswith("/push")]
        self.assertLess(record["sent"], TOTAL // 2, "the app was not held back")

        def read_the_rest() -> tuple[int, int]:
            index, received = 1, MESSAGE
            while True:
                message = ws.recv(timeout=30)
                if message == "done":
                    return index, received
                if message != pattern(index, MESSAGE):
                    raise AssertionError(f"message {index} is not what the app sent")
                index += 1
                received += len(message)

        messages, received = yield in_thread(read_the_rest)
        self.assertEqual((messages, received), (TOTAL // MESSAGE, TOTAL))
        for name in pids:
            self.assertLess(
                peak[name] - baseline[name],
                BOUND_KIB,
                f"{name}: RSS {baseline[name]} KiB before, {peak[name]} KiB while stalled",
            )


class IdleTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_idle_timeouts(self) -> Any:
        """
        A WebSocket silent for twice the request timeouts (the backend and
        client header timeouts, 4 s) is still open and works.  On the app
        whose C{websocket_idle_timeout} is 2 s, a silent one is closed after
        about 2 s (the app's side too), and one the client pings every half
        second stays open.
        """
        d: WebSocketDaemons = yield start(
            self, connections=1, service=f"client_header_timeout = {HEADER_TIMEOUT}"
        )
        web = yield d.sign_in("alice")
        idle = yield d.sign_in("alice", app="idle")
        quiet_for = 2 * max(BACKEND_TIMEOUT, HEADER_TIMEOUT)

        def quiet() -> bool:
            with d.open("/echo?quiet", web) as ws:
                self.assertTrue(echoes(ws, "before"))
                time.sleep(quiet_for)  # the silence under test
                return echoes(ws, "after")

        def silent_on_idle() -> tuple[int | None, str | None, float]:
            with d.open("/echo?silent", idle, app="idle") as ws:
                self.assertTrue(echoes(ws, "before"))
                return closed_within(ws, IDLE_TIMEOUT + 5)

        def pinging_on_idle() -> bool:
            with d.open("/echo?pinging", idle, app="idle") as ws:
                deadline = time.monotonic() + 2.5 * IDLE_TIMEOUT
                while time.monotonic() < deadline:
                    ws.ping().wait(5)
                    time.sleep(IDLE_TIMEOUT / 4)
                return echoes(ws, "after")

        still_open, (code, reason, took), pinged = yield gatherResults(
            [in_thread(quiet), in_thread(silent_on_idle), in_thread(pinging_on_idle)]
        )
        self.assertTrue(still_open)
        self.assertTrue(pinged)
        self.assertEqual((code, reason), (1001, "idle timeout"))
        self.assertGreater(took, IDLE_TIMEOUT - 0.5, (code, reason))
        self.assertLess(took, IDLE_TIMEOUT + 3, (code, reason))
        yield d.app_closed("/echo?silent", 5)
        yield d.logged("WebSocket idle alice", "closed by idle-timeout")


class ConnectorKilledTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_connector_killed(self) -> Any:
        """
        The connector killed (SIGKILL): the client's WebSocket closes at
        once, with a close frame 1001 "going away".
        """
        d: WebSocketDaemons = yield start(self, connections=1)
        cookie = yield d.sign_in("alice")
        ws = yield in_thread(d.open, "/echo?doomed", cookie)
        self.addCleanup(in_thread, ws.close)
        self.assertTrue((yield in_thread(echoes, ws)))
        waiting = in_thread(closed_within, ws, 10)
        d.connector.signal("KILL")
        code, reason, took = yield waiting
        self.assertEqual((code, reason), (1001, "the app's connector went away"))
        self.assertLess(took, 1.5)
        self.assertTrue(d.service.running, d.service.describe())
        yield d.logged("WebSocket web alice", "closed by connector-lost")


class CapacityTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_websockets_have_their_own_share(self) -> Any:
        """
        A connector with C{websocket_capacity = 3} and one tunnel connection:
        three WebSockets open take all of it, a fourth waits, then gets 503
        after the queue timeout; ordinary requests are served meanwhile (the
        WebSockets do not take the requests' streams); once one WebSocket
        closes, another opens.
        """
        d: WebSocketDaemons = yield start(
            self, connections=1, connector="capacity = 4\nwebsocket_capacity = 3", queue_timeout=3
        )
        cookie = yield d.sign_in("alice")
        sockets = []
        for n in range(3):
            ws = yield in_thread(d.open, f"/echo?held-{n}", cookie)
            self.addCleanup(in_thread, ws.close)
            sockets.append(ws)
        fourth = in_thread(d.handshake, "/echo?fourth", cookie)
        pages = [in_thread(d.request, "GET", f"/page-{n}", {"Cookie": cookie}) for n in range(6)]
        answers = yield gatherResults(pages)
        self.assertEqual([status for status, _, _ in answers], [200] * 6)
        status, body = yield fourth
        self.assertEqual(status, 503, body)
        for ws in sockets:
            self.assertTrue((yield in_thread(echoes, ws)))
        yield in_thread(sockets[0].close)
        yield d.logged("WebSocket web alice", "closed by")
        status, body = yield in_thread(d.handshake, "/echo?after", cookie)
        self.assertEqual(status, 101, body)
        seen = yield d.seen()
        self.assertNotIn("/echo?fourth", [r["path"] for r in seen])
