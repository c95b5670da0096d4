"""
Stopping the connector with WebSockets open: a WebSocket cannot be drained,
so the drain ends them at once (their apps' connections closed, their tunnel
streams reset: the service closes the clients) and waits only for requests.
With the real daemons (L{tests.websocket_deployment}): SIGTERM to the
connector with a WebSocket open closes the client's socket within a couple of
seconds and the connector exits long before C{DRAIN_TIMEOUT}.  And a drain
that does time out says so in one plain line (no traceback).
"""

from __future__ import annotations

import time
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.daemon import connector_tap
from appproxy.daemon.connector_tap import DRAIN_TIMEOUT, ConnectorService
from tests.test_daemons import assertCleanStop
from tests.websocket_deployment import (
    WebSocketDaemons,
    closed_within,
    echoes,
    in_thread,
    start,
)


class StopTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_sigterm_ends_websockets(self) -> Any:
        """
        SIGTERM with a WebSocket open: the client's connection closes within
        a couple of seconds (a 1001 close frame from the service), the app's
        too, and the connector exits at once
        (not after DRAIN_TIMEOUT), logging the WebSocket's end, no traceback.
        """
        d: WebSocketDaemons = yield start(self, connections=1)
        cookie = yield d.sign_in("alice")
        ws = yield in_thread(d.open, "/echo?stopping", cookie)
        self.addCleanup(in_thread, ws.close)
        self.assertTrue((yield in_thread(echoes, ws)))
        waiting = in_thread(closed_within, ws, 10)
        started = time.monotonic()
        d.connector.signal("TERM")
        code, reason, took = yield waiting
        self.assertLess(took, 3.0, (code, reason))
        # The service closes the client with "going away" (1001).
        self.assertEqual(code, 1001, reason)
        yield d.connector.ended(DRAIN_TIMEOUT / 2)
        exited = time.monotonic() - started
        assertCleanStop(self, d.connector)
        self.assertLess(exited, 10.0, d.connector.describe())
        self.assertIn("closed by drain", d.connector.output())
        yield d.app_closed("/echo?stopping", 5)
        self.assertTrue(d.service.running, d.service.describe())


class _Stuck:
    """A tunnel connection whose drain never ends (a request that never finishes)."""

    connected = 1

    def drain(self) -> Deferred[None]:
        return Deferred()


class _Backend:
    closed = False

    def close(self) -> None:
        self.closed = True


class _Factory:
    def __init__(self) -> None:
        self.protocols = {_Stuck()}
        self.draining = False


class DrainIncompleteTests(SynchronousTestCase):
    def test_one_plain_line(self) -> None:
        """
        A drain past DRAIN_TIMEOUT: one plain warning (no traceback, no
        FirstError or CancelledError), and the connector stops all the same.
        """
        self.patch(connector_tap, "notify", lambda _: None)
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        clock = Clock()
        service = ConnectorService.__new__(ConnectorService)
        MultiService.__init__(service)
        service.reactor = clock
        service.factory = _Factory()  # type: ignore[assignment]
        service.backend = backend = _Backend()  # type: ignore[assignment]
        stopped = service.stopService()
        self.assertNoResult(stopped)
        clock.advance(DRAIN_TIMEOUT)
        self.successResultOf(stopped)
        self.assertTrue(backend.closed)
        texts = [formatEvent(e) for e in events if "Drain incomplete" in str(formatEvent(e))]
        self.assertEqual(
            texts,
            [
                "Drain incomplete after 60 s: closing 1 tunnel connections with requests"
                " still in flight"
            ],
        )
        for event in events:
            text = str(formatEvent(event)) + repr(event.get("log_failure", ""))
            for word in ("Traceback", "FirstError", "CancelledError"):
                self.assertNotIn(word, text)
        self.assertEqual(self.flushLoggedErrors(), [])
