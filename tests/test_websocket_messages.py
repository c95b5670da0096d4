"""
WebSocket messages end to end through the real daemons (C{twistd appproxy},
C{twistd appproxy-connector}) to an app served by the C{websockets} library
(L{tests.websocket_deployment}), with that library's client: text, 1 MiB
binary, fragmented messages, ping/pong, a close from either end, and 40
WebSockets open at once while other users are served over HTTP/1.1 and
HTTP/2 (curl), and C{wss://} to an app whose internal URL is C{https://}.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed

from tests.websocket_app import SUBPROTOCOL, pattern
from tests.websocket_deployment import (
    DOMAIN,
    WebSocketDaemons,
    headers_of,
    in_thread,
    start,
)

#: WebSockets open at once in the concurrency test.
CONCURRENT = 40
#: How soon the other end must see a close.
CLOSE_SEEN = 1.0


class MessageTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_messages_and_closes(self) -> Any:
        """
        A signed-in client's handshake reaches the app with the identity
        headers and without appproxy's cookie; the app's 101 (subprotocol,
        permessage-deflate) reaches the client; text, 1 MiB binary and
        fragmented messages go both ways intact, pings are answered; a
        close from the client and one from the app (with its code) are seen
        by the other end within a second, and logged.
        """
        d: WebSocketDaemons = yield start(self)
        cookie = yield d.sign_in("alice")

        def exchange() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with d.open("/echo?q=1", cookie, subprotocols=[SUBPROTOCOL, "other"]) as ws:
                out["subprotocol"] = ws.subprotocol
                assert ws.response is not None
                out["extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
                ws.send("hello, app")
                out["text"] = ws.recv(timeout=10)
                big = bytes(range(256)) * 4096  # 1 MiB
                ws.send(big)
                out["binary_intact"] = ws.recv(timeout=20) == big
                out["pong"] = ws.ping(b"are you there").wait(10)
                ws.send([b"frag-1 ", b"frag-2 ", b"frag-3"])
                out["fragmented_echo"] = ws.recv(timeout=10)
                closing = time.monotonic()
            out["client_closed_at"] = time.time()
            out["close_took"] = time.monotonic() - closing
            with d.open("/fragments?count=5&size=1000", cookie, compression=None) as ws:
                fragments = list(ws.recv_streaming(decode=False))
                out["fragments_in"] = [len(f) for f in fragments]
                out["fragments_intact"] = b"".join(fragments) == b"".join(
                    pattern(i, 1000) for i in range(5)
                )
                ws.send([b"a" * 300, b"b" * 400, b"c" * 500])
                out["fragments_out"] = json.loads(ws.recv(timeout=10))["fragments"]
            with d.open("/echo", cookie) as ws:
                ws.send("close 4001 the app is done")
                started = time.monotonic()
                try:
                    ws.recv(timeout=10)
                except ConnectionClosed:
                    pass
                out["app_close"] = (ws.close_code, ws.close_reason)
                out["app_close_took"] = time.monotonic() - started
            return out

        out = yield in_thread(exchange)
        self.assertEqual(out["subprotocol"], SUBPROTOCOL)
        self.assertIn("permessage-deflate", out["extensions"] or "")
        self.assertEqual(out["text"], "hello, app")
        self.assertTrue(out["binary_intact"])
        self.assertIsNotNone(out["pong"])
        self.assertEqual(out["fragmented_echo"], b"frag-1 frag-2 frag-3")
        # Frames pass untouched: fragments arrive as fragments, both ways.
        self.assertEqual(out["fragments_in"], [1000] * 5 + [0])
        self.assertTrue(out["fragments_intact"])
        self.assertEqual(out["fragments_out"], [300, 400, 500, 0])
        self.assertEqual(out["app_close"], (4001, "the app is done"))
        took = {k: round(out[k], 2) for k in ("app_close_took", "close_took")}
        self.assertLess(max(took.values()), CLOSE_SEEN, took)

        seen = yield d.seen()
        [echo] = [r for r in seen if r["path"] == "/echo?q=1"]
        self.assertEqual(echo["status"], 101)
        self.assertEqual(echo["close_code"], 1000)
        self.assertLess(echo["closed_at"] - out["client_closed_at"], CLOSE_SEEN)
        headers = headers_of(echo)
        self.assertEqual(headers.get("x-remote-user"), ["alice"])
        self.assertEqual(headers.get("cookie"), ["theme=dark"])
        self.assertEqual(headers.get("origin"), [d.origin()])
        self.assertEqual(headers.get("x-forwarded-proto"), ["https"])
        self.assertEqual(headers.get("sec-websocket-version"), ["13"])
        self.assertIn(SUBPROTOCOL, headers.get("sec-websocket-protocol", [""])[0])
        self.assertEqual([v.lower() for v in headers.get("upgrade", [])], ["websocket"])
        # Every handshake reached the app once.
        self.assertEqual(len([r for r in seen if r["status"] == 101]), 3, seen)
        # Each WebSocket's end is in the access log: who closed it, bytes each way.
        line = yield d.logged("WebSocket web alice", "closed by client")
        self.assertRegex(line, r"in=\d+ out=\d+")
        yield d.logged("WebSocket web alice", "closed by app")

    @inlineCallbacks
    def test_many_websockets_while_others_browse(self) -> Any:
        """
        40 WebSockets of one user open at once, each exchanging messages,
        while other users are served over HTTP/1.1 and HTTP/2 by curl.
        """
        d: WebSocketDaemons = yield start(self)
        alice = yield d.sign_in("alice")
        bob = yield d.sign_in("bob")
        carol = yield d.sign_in("carol")

        all_open, served = threading.Event(), threading.Event()

        async def many() -> list[str]:
            context = d.ssl_context()
            sockets = []
            for _ in range(CONCURRENT):
                sockets.append(
                    await async_connect(
                        d.ws_url("/echo"),
                        host="127.0.0.1",
                        port=d.public,
                        ssl=context,
                        server_hostname=d.host(),
                        origin=d.origin(),  # type: ignore[arg-type]
                        additional_headers={"Cookie": alice},
                        proxy=None,
                        ping_interval=None,
                        open_timeout=20,
                    )
                )
            try:
                # All open at once; each carries its own messages, before,
                # while and after the other users are served.
                for round_ in range(3):
                    await asyncio.gather(
                        *(ws.send(f"ws {i} round {round_}") for i, ws in enumerate(sockets))
                    )
                    answers = await asyncio.gather(
                        *(asyncio.wait_for(ws.recv(), 20) for ws in sockets)
                    )
                    if round_ == 0:
                        all_open.set()
                    elif round_ == 1:
                        await asyncio.to_thread(served.wait, 30)
                return [str(a) for a in answers]
            finally:
                await asyncio.gather(*(ws.close() for ws in sockets))

        def curl(version: str, cookie: str, path: str) -> Any:
            return getProcessOutputAndValue(
                "curl",
                [
                    *("-sS", "--max-time", "20", version),
                    *("--cacert", str(d.config_dir / "ca.pem")),
                    *("--resolve", f"web.{DOMAIN}:{d.public}:127.0.0.1"),
                    *("-H", f"Cookie: {cookie}"),
                    *("-w", "\n%{http_code} %{http_version}"),
                    d.url(path),
                ],
            )

        sockets = in_thread(asyncio.run, many())
        if not (yield in_thread(all_open.wait, 30)):
            yield sockets  # its error, if it failed
            self.fail("the WebSockets did not open within 30 s")
        requests = [
            curl(version, cookie, f"/page-{n}-{version}")
            for n in range(5)
            for version, cookie in (("--http1.1", bob), ("--http2", carol))
        ]
        try:
            results = yield gatherResults(requests)
        finally:
            served.set()
        answers = yield sockets
        self.assertEqual(answers, [f"ws {i} round 2" for i in range(CONCURRENT)])
        for out, err, code in results:
            self.assertEqual(code, 0, err)
            body, _, status = out.decode().rpartition("\n")
            self.assertIn(status, ("200 1.1", "200 2"), body)
            self.assertTrue(json.loads(body)["path"].startswith("/page-"))
        versions = sorted(out.decode().rpartition(" ")[2] for out, _, _ in results)
        self.assertEqual(versions, ["1.1"] * 5 + ["2"] * 5)
        seen = yield d.seen()
        users = {headers_of(r).get("x-remote-user", ["?"])[0] for r in seen if r["status"] == 101}
        self.assertEqual(users, {"alice"})
        self.assertEqual(len([r for r in seen if r["status"] == 101]), CONCURRENT)

    @inlineCallbacks
    def test_wss_to_an_https_app(self) -> Any:
        """
        An app whose internal URL is C{https://}: the connector makes the
        handshake over TLS (C{wss://}), verifying the app's certificate with
        the app's C{backend_ca}; without it (the system's trust store) the
        handshake gets 502 and no request reaches the app.
        """
        d: WebSocketDaemons = yield start(self, connections=1, tls_app=True)
        secure = yield d.sign_in("alice", app="secure")
        untrusted = yield d.sign_in("alice", app="untrusted", status=502)

        def exchange() -> tuple[str | bytes, str | bytes]:
            with d.open("/echo?over-tls", secure, app="secure") as ws:
                ws.send("over TLS")
                text = ws.recv(timeout=10)
                ws.send(b"\x00\xff" * 5000)
                return text, ws.recv(timeout=10)

        text, binary = yield in_thread(exchange)
        self.assertEqual((text, binary), ("over TLS", b"\x00\xff" * 5000))
        status, body = yield in_thread(d.handshake, "/echo?untrusted", untrusted, app="untrusted")
        self.assertEqual(status, 502, body)
        seen = yield d.seen(tls=True)
        self.assertEqual([r["path"] for r in seen if r["status"] == 101], ["/echo?over-tls"])
        self.assertNotIn("/echo?untrusted", [r["path"] for r in seen])
