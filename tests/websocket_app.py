"""
The internal WebSocket app of the end-to-end WebSocket tests and of
C{benchmarks/websocket.py}: the C{websockets} library's asyncio server (an
implementation nobody here wrote), run as a subprocess on loopback.

    python tests/websocket_app.py [--port 0] [--max-seconds 600]
                                  [--tls-cert PEM --tls-key PEM]

Prints C{ready PORT} on stdout once it listens (TLS, C{wss://}, with
C{--tls-cert}).  Every HTTP request it
receives, handshake or not, is recorded (path, headers, and for a WebSocket
how and when it ended), and C{GET /seen} answers them as JSON: the tests ask
the app directly (not through appproxy) what reached it.

Plain HTTP (no WebSocket handshake):

  - C{/seen}: the record, as JSON (C{{"requests": [...]}}).
  - C{/page}: an HTML page (for Chromium: its scripts open the WebSockets).
  - anything else: C{200}, the request (path, headers) as JSON.

WebSocket paths (the handshake at any other path is answered as above):

  - C{/refuse?status=N}: refuses the upgrade with a plain C{N} answer.
  - C{/echo}: sends back every message as it came (text or binary); the
    text message C{"close CODE REASON"} makes the app close with that code.
    Pings are answered by the library.
  - C{/fragments?count=N&size=M}: first sends one binary message in C{N}
    fragments of C{M} bytes (L{pattern}); then, for every message received,
    answers with the sizes of the fragments it arrived in, as JSON text.
  - C{/sink}: counts the bytes of the binary messages it receives; the
    text message C{"count"} gets the count so far, as text.
  - C{/push?bytes=N&size=M}: sends C{N} bytes as binary messages of C{M}
    bytes (message C{i} is L{pattern}C{(i, M)}), then the text C{"done"},
    then waits for the client to close.  The record says how much it has
    sent so far (C{sent}).

The server sends no pings of its own (idle tests count on silence).  It
stops by itself after C{--max-seconds}, or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

__all__ = ["PAGE", "SUBPROTOCOL", "main", "pattern"]

#: The subprotocol the app picks when a client offers it.
SUBPROTOCOL = "chat.v1"
_BLOCK = bytes((i * 131 + 7) % 251 for i in range(65536))

PAGE = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>WebSocket page</title></head>
<body><p id="status">a page of the app</p></body></html>
"""


def pattern(index: int, size: int) -> bytes:
    """Message C{index} of a push: its number, then a fixed pattern."""
    head = index.to_bytes(8, "big")
    body = (_BLOCK * (size // len(_BLOCK) + 1))[: max(0, size - 8)]
    return (head + body)[:size]


class Record:
    """What reached the app, in order."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def add(self, connection: ServerConnection, request: Request) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": len(self.requests),
            "path": request.path,
            "headers": [[name.lower(), value] for name, value in request.headers.raw_items()],
            "upgrade": request.headers.get("Upgrade", ""),
            "at": time.time(),
            "status": None,
            "closed_at": None,
            "close_code": None,
            "close_reason": None,
            "received": 0,
            "sent": 0,
        }
        self.requests.append(entry)
        return entry


RECORD = Record()


def _json_response(connection: ServerConnection, status: int, data: Any) -> Response:
    return _response(connection, status, json.dumps(data).encode(), "application/json")


def _response(
    connection: ServerConnection, status: int, body: bytes, content_type: str
) -> Response:
    response = connection.respond(status, "")
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Connection"] = "close"
    headers["Cache-Control"] = "no-store"
    response.headers = headers
    response.body = body
    return response


def _is_handshake(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    entry = RECORD.add(connection, request)
    connection.record = entry  # type: ignore[attr-defined]
    parts = urlsplit(request.path)
    query = parse_qs(parts.query)
    if parts.path == "/refuse":
        status = int(query.get("status", ["403"])[0])
        entry["status"] = status
        return _response(connection, status, b"refused by the app\n", "text/plain")
    if _is_handshake(request) and parts.path in ("/echo", "/fragments", "/push", "/sink"):
        entry["status"] = 101
        return None
    entry["status"] = 200
    if parts.path == "/seen":
        RECORD.requests.pop()  # the question is not part of the answer
        return _json_response(connection, 200, {"requests": RECORD.requests})
    if parts.path == "/page":
        return _response(connection, 200, PAGE, "text/html; charset=utf-8")
    return _json_response(
        connection,
        200,
        {"path": request.path, "headers": entry["headers"]},
    )


def select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


async def _echo(connection: ServerConnection, entry: dict[str, Any]) -> None:
    async for message in connection:
        entry["received"] += len(message)
        if isinstance(message, str) and message.startswith("close "):
            _, code, reason = (message + " ").split(" ", 2)
            await connection.close(int(code), reason.strip())
            return
        await connection.send(message)


async def _fragments(connection: ServerConnection, query: dict[str, list[str]]) -> None:
    count = int(query.get("count", ["4"])[0])
    size = int(query.get("size", ["1000"])[0])
    await connection.send([pattern(i, size) for i in range(count)])
    while True:
        sizes = [len(fragment) async for fragment in connection.recv_streaming()]
        await connection.send(json.dumps({"fragments": sizes}))


async def _sink(connection: ServerConnection, entry: dict[str, Any]) -> None:
    async for message in connection:
        if message == "count":
            await connection.send(str(entry["received"]))
        else:
            entry["received"] += len(message)


async def _push(
    connection: ServerConnection, entry: dict[str, Any], query: dict[str, list[str]]
) -> None:
    total = int(query["bytes"][0])
    size = int(query.get("size", ["65536"])[0])
    sent = index = 0
    while sent < total:
        message = pattern(index, min(size, total - sent))
        await connection.send(message)  # waits while the transport's buffer is full
        sent += len(message)
        index += 1
        entry["sent"] = sent
    await connection.send("done")
    await connection.wait_closed()


async def handler(connection: ServerConnection) -> None:
    entry: dict[str, Any] = connection.record  # type: ignore[attr-defined]
    assert connection.request is not None
    parts = urlsplit(connection.request.path)
    query = parse_qs(parts.query)
    try:
        if parts.path == "/echo":
            await _echo(connection, entry)
        elif parts.path == "/fragments":
            await _fragments(connection, query)
        elif parts.path == "/sink":
            await _sink(connection, entry)
        elif parts.path == "/push":
            await _push(connection, entry, query)
    except Exception:  # the client went away: recorded below
        pass
    finally:
        await connection.wait_closed()
        entry["closed_at"] = time.time()
        entry["close_code"] = connection.close_code
        entry["close_reason"] = connection.close_reason


async def _serve(port: int, max_seconds: float, tls: ssl.SSLContext | None) -> None:
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(
        handler,
        "127.0.0.1",
        port,
        process_request=process_request,
        select_subprotocol=select_subprotocol,
        ping_interval=None,
        max_size=None,
        max_queue=4,
        close_timeout=2,
        ssl=tls,
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"ready {bound}", flush=True)
        await asyncio.wait_for(stop, max_seconds) if max_seconds else await stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the WebSocket tests' internal app")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--tls-cert", help="serve wss:// (https://) with this PEM certificate")
    ap.add_argument("--tls-key", help="and this PEM key")
    args = ap.parse_args(argv)
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    try:
        asyncio.run(_serve(args.port, args.max_seconds, tls))
    except TimeoutError:
        print("stopping: --max-seconds passed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
