"""
A small, fast loopback HTTP/1.1 server for the benchmarks (asyncio protocols).

    python benchmarks/backend.py --port PORT [--max-seconds N]

Routes:

  - C{GET /1k}: 1024 bytes.
  - C{GET /100m}: 100 MiB, with Content-Length, streamed in 256 KiB writes of
    one preallocated buffer, pausing while the transport's write buffer is
    above its high-water mark (back pressure): never more than a few hundred
    KiB in memory.
  - C{POST /upload} (or C{PUT}): the body is consumed as it arrives
    (Content-Length or chunked), counted and dropped; the reply is the count.
  - anything else: 404.

Keep-alive and pipelining; C{Connection: close} and HTTP/1.0 close after the
response.  Prints C{ready PORT} on stdout once listening.  Stops by itself
after C{--max-seconds} (a safety net for the harness) or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

ONE_K = b"k" * 1024
HUNDRED_M = 100 * 1024 * 1024
CHUNK = b"m" * (256 * 1024)
MAX_HEADER = 65536

_RESPONSE_1K = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Length: 1024\r\n"
    b"\r\n" + ONE_K
)
_HEAD_100M = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % HUNDRED_M
)
_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\nnot found\n"
)
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n"


class _Chunked:
    """Incremental decoder of a chunked body that only counts the data bytes."""

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self) -> None:
        self.state = self.SIZE
        self.remaining = 0
        self.partial = b""  # an incomplete line carried over to the next feed
        self.count = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Consume C{data}; return whatever follows the end of the body."""
        if self.partial:
            data, self.partial = self.partial + data, b""
        pos, end = 0, len(data)
        while pos < end:
            if self.state == self.DATA:
                take = min(self.remaining, end - pos)
                self.count += take
                self.remaining -= take
                pos += take
                if not self.remaining:
                    self.state = self.DATA_END
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                self.partial = data[pos:]
                if len(self.partial) > MAX_HEADER:
                    raise ValueError("chunk line too long")
                return b""
            line, pos = data[pos:eol], eol + 2
            if self.state == self.SIZE:
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size:
                    self.remaining, self.state = size, self.DATA
                else:
                    self.state = self.TRAILER
            elif self.state == self.DATA_END:
                if line:
                    raise ValueError("no CRLF after chunk data")
                self.state = self.SIZE
            elif not line:  # TRAILER: the empty line ends the body
                self.done = True
                return data[pos:]
        return b""


class HTTPServer(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.body_left = 0  # Content-Length body bytes still to read
        self.chunked: _Chunked | None = None
        self.uploaded = 0
        self.keep_alive = True
        self.streaming = 0  # bytes of /100m still to write
        self.paused = False
        self.reading_paused = False
        self.parsing = False

    # -- connection --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20, low=1 << 18)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.streaming = 0

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._stream()

    # -- input -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.body_left:
            if len(data) <= self.body_left:
                self.body_left -= len(data)
                self.uploaded += len(data)
                if self.body_left == 0:
                    self._upload_done()
                return
            self.uploaded += self.body_left
            data = data[self.body_left :]
            self.body_left = 0
            self._upload_done()
        elif self.chunked is not None:
            try:
                rest = self.chunked.feed(data)
            except ValueError:
                self._bad()
                return
            if not self.chunked.done:
                return
            self.uploaded = self.chunked.count
            self.chunked = None
            self._upload_done()
            data = rest
        if self.streaming:
            # A pipelined request behind the 100 MiB response: keep it for later.
            self.buffer += data
            self._pause_reading()
            return
        if self.buffer:
            self.buffer += data
            self._requests()
        else:
            self.buffer = bytearray(data)
            self._requests()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _requests(self) -> None:
        """Handle every complete request head in the buffer."""
        if self.parsing:
            return
        self.parsing = True
        try:
            while self.transport is not None and not self.streaming:
                if self.body_left or self.chunked is not None:
                    return
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEADER:
                        self._bad()
                    return
                head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                self._request(head)
        finally:
            self.parsing = False

    def _request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        try:
            method, target, version = lines[0].split(b" ", 2)
        except ValueError:
            self._bad()
            return
        length = 0
        chunked = False
        connection = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                connection = value.strip().lower()
        if version == b"HTTP/1.0":
            self.keep_alive = connection == b"keep-alive"
        else:
            self.keep_alive = connection != b"close"
        path = target.split(b"?", 1)[0]
        if method in (b"POST", b"PUT") and path == b"/upload":
            self.uploaded = 0
            if chunked:
                self.chunked = _Chunked()
                if self.buffer:
                    data, self.buffer = bytes(self.buffer), bytearray()
                    self.data_received(data)
            elif length:
                self.body_left = length
                if self.buffer:
                    data, self.buffer = bytes(self.buffer), bytearray()
                    self.data_received(data)
            else:
                self._upload_done()
            return
        # Any other body is skipped the simple way: not supported here.
        if length or chunked:
            self._bad()
            return
        assert self.transport is not None
        if method == b"GET" and path == b"/1k":
            self.transport.write(_RESPONSE_1K)
        elif method == b"GET" and path == b"/100m":
            self.transport.write(_HEAD_100M)
            self.streaming = HUNDRED_M
            self._stream()
            return
        elif method == b"GET" and path.startswith(b"/bytes/") and path[7:].isdigit():
            # Any size, streamed the same way (the 1 GiB check).
            size = int(path[7:])
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % size
            )
            self.streaming = size
            self._stream()
            return
        else:
            self.transport.write(_NOT_FOUND)
        self._after_response()

    def _upload_done(self) -> None:
        if self.transport is None:
            return
        body = b"%d\n" % self.uploaded
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        self.uploaded = 0
        self._after_response()

    def _after_response(self) -> None:
        if self.transport is None:
            return
        if not self.keep_alive:
            self.transport.close()
            self.transport = None
            return
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.buffer and not self.streaming and self.chunked is None and not self.body_left:
            self._requests()

    def _stream(self) -> None:
        transport = self.transport
        while self.streaming and not self.paused and transport is not None:
            n = min(self.streaming, len(CHUNK))
            self.streaming -= n
            transport.write(CHUNK if n == len(CHUNK) else CHUNK[:n])
            if not self.streaming:
                self._after_response()

    def _bad(self) -> None:
        if self.transport is not None:
            self.transport.write(_BAD)
            self.transport.close()
            self.transport = None


async def serve(host: str, port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HTTPServer, host, port, backlog=1024, reuse_address=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    bound = server.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    try:
        await asyncio.wait_for(stop, max_seconds)
    except TimeoutError:
        print("backend: --max-seconds reached, stopping", file=sys.stderr)
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the benchmark backend listens on loopback only")
    asyncio.run(serve(args.host, args.port, args.max_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
