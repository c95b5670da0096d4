"""
The soak's load (L{soak}): each kind of client as a thread that runs until a
deadline or a stop event, recording what it did, its errors and (for the
small requests) latency percentiles per segment of time.

  - L{WrkLoad}: keep-alive HTTP/1.1 GETs at fixed concurrency (C{wrk}, run
    in segments so that latency can be followed over time), passthrough or
    signed in (a session cookie).
  - L{H2Load}: HTTP/2 clients (C{h2load -m1}), in segments.
  - L{Transfers}: 100 MiB downloads and uploads with curl, HTTP/1.1 and
    HTTP/2 in turn, one every C{every} seconds.
  - L{WebSockets}: a few open WebSockets to the app's C{/echo}, each
    sending a 1 KiB message and awaiting its echo every C{pause} seconds.
  - L{Abandoners}: clients that connect and go away: before the TLS
    handshake, after half a request head, after part of an upload's body.

Every loop is bounded by the deadline; every subprocess by a timeout.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from typing import Any

import harness
from harness import Stack

#: Segment of a wrk or h2load run (latency is reported per segment).
SEGMENT = 30.0


class Load(threading.Thread):
    """A client kind: runs L{step} until C{deadline} or L{stop}."""

    name_: str = "load"

    def __init__(self, stack: Stack, deadline: float, started: float) -> None:
        super().__init__(daemon=True, name=self.name_)
        self.stack = stack
        self.deadline = deadline
        self.started = started
        self.stopping = threading.Event()
        self.done = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.segments: list[dict[str, Any]] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def error(self, what: str, count: int = 1) -> None:
        self.errors += count
        if len(self.error_samples) < 10:
            self.error_samples.append(what[:300])

    def run(self) -> None:
        while not self.stopping.is_set() and self.remaining() > 1.0:
            try:
                self.step()
            except Exception as e:  # recorded, and the load goes on
                self.error(f"{type(e).__name__}: {e}")
                self.stopping.wait(1.0)

    def step(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()

    def summary(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "segments": self.segments,
        }


class WrkLoad(Load):
    def __init__(
        self,
        stack: Stack,
        deadline: float,
        started: float,
        *,
        name: str,
        host: str,
        connections: int,
        threads: int,
        headers: tuple[str, ...] = (),
    ) -> None:
        self.name_ = name
        super().__init__(stack, deadline, started)
        self.host = host
        self.connections = connections
        self.threads = threads
        self.headers = headers

    def step(self) -> None:
        seconds = min(SEGMENT, self.remaining() - 0.5)
        if seconds < 1:
            self.stopping.set()
            return
        begin = time.monotonic() - self.started
        r = harness.wrk(
            f"{self.stack.public_url}/1k",
            connections=self.connections,
            threads=self.threads,
            seconds=round(seconds),
            host=self.host,
            latency=True,
            headers=self.headers,
        )
        self.done += r.requests
        if r.errors or r.non_2xx:
            self.error(f"wrk: {r.errors} socket errors, {r.non_2xx} non-2xx", r.errors + r.non_2xx)
        self.segments.append(
            {
                "t": round(begin),
                "requests": r.requests,
                "rps": round(r.rps),
                "errors": r.errors + r.non_2xx,
                **r.latency_ms,
            }
        )


class H2Load(Load):
    name_ = "h2load"

    def __init__(self, stack: Stack, deadline: float, started: float, clients: int) -> None:
        super().__init__(stack, deadline, started)
        self.clients = clients

    def step(self) -> None:
        seconds = round(min(SEGMENT, self.remaining() - 0.5))
        if seconds < 1:
            self.stopping.set()
            return
        begin = time.monotonic() - self.started
        argv = [
            "h2load",
            f"--clients={self.clients}",
            f"--threads={min(self.clients, 2)}",
            "--max-concurrent-streams=1",
            f"--duration={seconds}",
            f"--connect-to=127.0.0.1:{self.stack.public_port}",
            f"https://{self.stack.host_header}/1k",
        ]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        out = proc.stdout
        m = re.search(
            r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
            r"(\d+) failed, (\d+) errored, (\d+) timeout",
            out,
        )
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
        if proc.returncode != 0 or not m or not codes:
            self.error(f"h2load ({proc.returncode}): {proc.stderr[-200:] or out[-200:]}")
            return
        succeeded, failed = int(m.group(3)), int(m.group(4))
        bad = failed + int(codes.group(3)) + int(codes.group(4))
        # h2load stops with requests in flight at the deadline: those count
        # as "failed" only if the server failed them.  Requests not done when
        # the duration ended are not errors.
        self.done += succeeded
        if bad:
            self.error(f"h2load: {failed} failed, {codes.group(0)}", bad)
        segment: dict[str, Any] = {
            "t": round(begin),
            "requests": succeeded,
            "rps": round(succeeded / seconds),
            "errors": bad,
        }
        if mean:
            segment["mean"] = harness._ms(mean.group(1))
        self.segments.append(segment)


class Transfers(Load):
    name_ = "transfers"

    def __init__(
        self, stack: Stack, deadline: float, started: float, every: float, upload_file: Any
    ) -> None:
        super().__init__(stack, deadline, started)
        self.every = every
        self.upload_file = upload_file
        self.turn = 0

    def step(self) -> None:
        import transfer

        begin = time.monotonic()
        direction = ("download", "upload")[self.turn % 2]
        via = ("http1.1", "http2")[(self.turn // 2) % 2]
        self.turn += 1
        args = transfer._curl_args(self.stack, direction, via, self.upload_file)
        try:
            r = harness.curl(args, timeout=max(60.0, min(300.0, self.remaining() + 60)))
        except RuntimeError as e:
            self.error(f"{direction} {via}: {e}")
        else:
            size = transfer.SIZE
            ok = r.status == 200 and (
                r.size_download == size if direction == "download" else r.body.strip() == str(size)
            )
            if ok:
                self.done += 1
            else:
                self.error(f"{direction} {via}: HTTP {r.status}, {r.size_download} bytes")
            self.segments.append(
                {
                    "t": round(begin - self.started),
                    "kind": f"{direction} {via}",
                    "mbps": round(size / r.seconds / 1e6),
                    "ok": ok,
                }
            )
        self.stopping.wait(max(0.0, min(self.every - (time.monotonic() - begin), self.remaining())))


class WebSockets(Load):
    name_ = "websockets"

    def __init__(self, stack: Any, deadline: float, started: float, pause: float) -> None:
        super().__init__(stack, deadline, started)
        self.pause = pause
        self.latencies: list[float] = []

    def step(self) -> None:
        import websocket

        message = b"w" * 1024
        stack: Any = self.stack
        with websocket._connect(stack, "proxy", "/echo") as ws:
            while not self.stopping.is_set() and self.remaining() > 1.0:
                started = time.perf_counter()
                ws.send(message)
                if ws.recv(timeout=30) != message:
                    self.error("websocket: wrong echo")
                    return
                self.latencies.append((time.perf_counter() - started) * 1000)
                self.done += 1
                self.stopping.wait(self.pause)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        times = sorted(self.latencies)
        if times:
            out["p50_ms"] = round(times[len(times) // 2], 2)
            out["p99_ms"] = round(times[min(len(times) - 1, int(len(times) * 0.99))], 2)
        return out


class Abandoners(Load):
    """Clients that go away half way; none of this is an error of the service."""

    name_ = "abandoners"

    def __init__(self, stack: Stack, deadline: float, started: float, pause: float) -> None:
        super().__init__(stack, deadline, started)
        self.pause = pause
        self.kinds: dict[str, int] = {}
        self.ctx = harness.client_tls_context(stack, ["http/1.1"])

    def step(self) -> None:
        kind = ("tcp-only", "half-head", "half-body", "half-head-wait")[self.done % 4]
        raw = socket.create_connection(("127.0.0.1", self.stack.public_port), timeout=10)
        try:
            if kind != "tcp-only":
                sock = self.ctx.wrap_socket(raw, server_hostname=self.stack.app_host)
                raw = sock
                host = self.stack.host_header
                if kind == "half-body":
                    head = (
                        f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1048576\r\n\r\n"
                    )
                    sock.sendall(head.encode() + b"x" * 65536)
                else:
                    sock.sendall(f"GET /1k HTTP/1.1\r\nHost: {host}\r\nAccept: ".encode())
                if kind in ("half-body", "half-head-wait"):
                    self.stopping.wait(0.5)
        finally:
            with contextlib.suppress(OSError):
                raw.close()
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.done += 1
        self.stopping.wait(self.pause)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["kinds"] = self.kinds
        return out
