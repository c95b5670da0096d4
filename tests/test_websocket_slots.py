"""
WebSocket ends through the real daemons (L{tests.websocket_deployment}):
a cleanly closed WebSocket gives its room on the tunnel back at once, at
both ends, whichever side closed it (the tunnel's share for WebSockets is
small here, so a leaked room shows within a few WebSockets); and the
service stopping closes its WebSockets with 1001 "service stopping".
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.websocket_deployment import (
    WebSocketDaemons,
    closed_within,
    echoes,
    in_thread,
    start,
    wait_until,
)

#: The connector's room for WebSockets (one tunnel connection).
ROOM = 3
#: WebSockets opened and closed one after the other: more than the room.
ROUNDS = 10


class SlotTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_closed_websockets_free_their_room(self) -> Any:
        """
        With room for 3 WebSockets on the one tunnel connection, 10 opened
        and closed in a row, closed in turn by the client (close frame), by
        the app (close frame 4000) and by the client dropping TCP, each gets
        101 and echoes; the connector logs each one's end.
        """
        d: WebSocketDaemons = yield start(
            self,
            connections=1,
            connector=f"capacity = 4\nwebsocket_capacity = {ROOM}",
            queue_timeout=3,
        )
        cookie = yield d.sign_in("alice")

        def one(n: int) -> tuple[str, int | None]:
            kind = ("client", "app", "abrupt")[n % 3]
            ws = d.open(f"/echo?round-{n}-{kind}", cookie)
            assert echoes(ws), n
            if kind == "client":
                ws.close(1000, "done")
                return kind, _code(ws)
            if kind == "app":
                ws.send("close 4000 bye")
                try:
                    ws.recv(timeout=10)
                except ConnectionClosed:
                    pass
                return kind, _code(ws)
            ws.socket.close()
            return kind, None

        for n in range(ROUNDS):
            try:
                kind, code = yield in_thread(one, n)
            except Exception as e:
                raise AssertionError(f"WebSocket {n + 1} of {ROUNDS}: {e!r}\n{d.tails()}") from e
            self.assertEqual(code, {"client": 1000, "app": 4000, "abrupt": None}[kind])
        # Each end reached the connector too (it frees its room there).
        yield wait_until(
            lambda: (
                d.connector.output().count("WebSocket ") >= ROUNDS
                and d.connector.output().count(" ended after ") >= ROUNDS
            ),
            "the connector's log of every WebSocket's end",
        )


def _code(ws: ClientConnection) -> int | None:
    """The code of the close frame C{ws} received, if one came."""
    received = ws.protocol.close_rcvd
    return None if received is None else received.code


class StoppingTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_service_stop_closes_with_1001(self) -> Any:
        """
        SIGTERM to the service with a WebSocket open: the client gets a
        close frame 1001 "service stopping" and its connection ends; the
        service exits promptly, not after its drain timeout.
        """
        d: WebSocketDaemons = yield start(self, connections=1)
        cookie = yield d.sign_in("alice")
        ws = yield in_thread(d.open, "/echo?stopping", cookie)
        self.addCleanup(ws.close)
        self.assertTrue((yield in_thread(echoes, ws)))
        waiting = in_thread(closed_within, ws, 10)
        d.service.signal("TERM")
        code, reason, took = yield waiting
        self.assertEqual((code, reason), (1001, "service stopping"), d.tails())
        self.assertLess(took, 5)
        yield d.service.ended(15)
        self.assertIn("closed by service-stopping", d.service.output())
