"""
Memory per idle client connection on the service.

    python benchmarks/idle_memory.py [--connections 1000] [--protocols http1.1,h2] [--json]

For each client protocol, on a freshly started stack:

 1. warm up: 20 connections, one request each, closed;
 2. baseline: the service's C{VmRSS};
 3. open N TLS connections to the service and complete the handshake
    (certificate verified, ALPN offering only that protocol): C{VmRSS} again;
 4. make one C{GET /1k} on each connection (so the HTTP channel has handled a
    request; the connection stays open, keep-alive): C{VmRSS} again;
 5. close them all.

KiB per connection = (RSS after - baseline) / N, after step 3 ("handshake
only") and after step 4 ("after one request").  The service's own idle
timeout (120 s) is far longer than the measurement.  The fd limit is raised
within the hard limit (the daemons inherit it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import Stack, StackOptions, client_tls_context, raise_fd_limit, rss_kib

TARGET_KIB = 30.0
MAX_CONNECTIONS = 5000
ALPN = {"http1.1": "http/1.1", "h2": "h2"}


def settle(pid: int, seconds: float = 1.0) -> int:
    """The RSS of C{pid} once it has stopped moving (bounded wait)."""
    time.sleep(seconds)
    return rss_kib(pid)


class Client:
    """One client connection: TLS, then HTTP/1.1 or HTTP/2."""

    def __init__(self, stack: Stack, ctx: ssl.SSLContext, protocol: str) -> None:
        self.stack = stack
        self.protocol = protocol
        raw = socket.create_connection(("127.0.0.1", stack.public_port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=stack.app_host)
        negotiated = self.sock.selected_alpn_protocol()
        if negotiated != ALPN[protocol]:
            raise RuntimeError(f"ALPN: asked for {ALPN[protocol]}, got {negotiated}")

    def request(self) -> None:
        if self.protocol == "h2":
            self._request_h2()
        else:
            self._request_h1()

    def _request_h1(self) -> None:
        self.sock.sendall(
            f"GET /1k HTTP/1.1\r\nHost: {self.stack.host_header}\r\n\r\n".encode("ascii")
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed before the response")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response: {head[:80]!r}")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed in the body")
            body += chunk

    def _request_h2(self) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection
        from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset

        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", self.stack.host_header.encode("ascii")),
            (b":path", b"/1k"),
        ]
        conn.send_headers(1, headers, end_stream=True)
        self.sock.sendall(conn.data_to_send())
        status = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("connection closed before the response")
            done = False
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    status = dict(event.headers).get(b":status")
                elif isinstance(event, DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded | StreamReset):
                    done = True
            out = conn.data_to_send()
            if out:
                self.sock.sendall(out)
            if done:
                break
        if status != b"200":
            raise RuntimeError(f"h2 request: status {status!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _snapshot(stack: Stack, number: int) -> Path:
    """Ask the service (with the C{tracemalloc} what-if patch) for a snapshot."""
    # The daemons run in the temporary directory; see whatif/sitecustomize.py.
    path = stack.tmp / f"tracemalloc.{number}"
    os.kill(stack.pid("service"), signal.SIGUSR2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists():
            return path
        time.sleep(0.2)
    raise RuntimeError("the service wrote no tracemalloc snapshot")


def _compare(before: Path, after: Path, n: int, top: int = 15) -> dict[str, Any]:
    import tracemalloc

    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    diffs = new.compare_to(old, "lineno")
    total = sum(d.size_diff for d in diffs)

    def where(d: tracemalloc.StatisticDiff) -> str:
        frame = d.traceback[0]
        name = frame.filename.split("site-packages/")[-1]
        return f"{name}:{frame.lineno}"

    return {
        "python_kib_per_connection": round(total / 1024 / n, 1),
        "top_sites": [
            (where(d), round(d.size_diff / 1024 / n, 2), round(d.count_diff / n, 1))
            for d in diffs[:top]
        ],
    }


def measure(protocol: str, n: int, keep: bool, trace: bool = False) -> dict[str, Any]:
    options = StackOptions(keep=keep, whatif=("tracemalloc",) if trace else ())
    with Stack(options) as stack:
        pid = stack.pid("service")
        ctx = client_tls_context(stack, [ALPN[protocol]])
        # Warm-up: code paths, TLS session machinery, allocator pools.
        warm = [Client(stack, ctx, protocol) for _ in range(20)]
        for c in warm:
            c.request()
            c.close()
        baseline = settle(pid, 1.5)
        snapshots = [_snapshot(stack, 1)] if trace else []
        clients: list[Client] = []
        try:
            started = time.monotonic()
            for _ in range(n):
                clients.append(Client(stack, ctx, protocol))
            handshake_seconds = time.monotonic() - started
            stack.check_alive()
            after_handshake = settle(pid)
            for c in clients:
                c.request()
            stack.check_alive()
            # A connection gives its buffers back once idle from one of the
            # service's idle sweeps to the next (appproxy.frontend.idle:
            # between 1 and 2 s): what an idle connection keeps is measured
            # after that.
            after_request = settle(pid, 2.5)
            peak = harness.hwm_kib(pid)
            if trace:
                snapshots.append(_snapshot(stack, 2))
        finally:
            for c in clients:
                c.close()
        result = {
            "connections": n,
            "baseline_rss_kib": baseline,
            "rss_after_handshake_kib": after_handshake,
            "rss_after_request_kib": after_request,
            "peak_rss_kib": peak,
            "kib_per_connection_handshake": round((after_handshake - baseline) / n, 1),
            "kib_per_connection_request": round((after_request - baseline) / n, 1),
            "handshakes_per_second": round(n / handshake_seconds, 1),
        }
        if trace:
            result["tracemalloc"] = _compare(snapshots[0], snapshots[1], n)
        return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.connections
    limit = raise_fd_limit(2 * n + 256)
    if limit < n + 128:
        raise SystemExit(f"idle_memory: the fd limit ({limit}) is too low for {n} connections")
    results: dict[str, Any] = {"benchmark": "idle_memory", "fd_limit": limit}
    for protocol in [p.strip() for p in args.protocols.split(",") if p.strip()]:
        if protocol not in ALPN:
            raise SystemExit(f"idle_memory: unknown protocol {protocol!r} (http1.1, h2)")
        results[protocol] = measure(protocol, n, args.keep)
        if args.tracemalloc:
            # A second stack with allocations traced: where the Python part goes.
            # (tracemalloc's own bookkeeping inflates RSS: not used for the figure.)
            traced = measure(protocol, n, args.keep, trace=True)
            results[protocol]["tracemalloc"] = traced["tracemalloc"]
    return results


def rows(results: dict[str, Any]) -> list[list[str]]:
    out = []
    for protocol in ALPN:
        r = results.get(protocol)
        if r is None:
            continue
        out.append(
            [
                f"idle {protocol} connection, handshake only (KiB)",
                f"{r['kib_per_connection_handshake']:.1f}",
                f"<= {TARGET_KIB:.0f}",
            ]
        )
        out.append(
            [
                f"idle {protocol} connection, after one request (KiB)",
                f"{r['kib_per_connection_request']:.1f}",
                f"<= {TARGET_KIB:.0f}",
            ]
        )
        out.append(
            [
                f"  service RSS: baseline -> {r['connections']} connections (MiB)",
                f"{r['baseline_rss_kib'] / 1024:.1f} -> {r['rss_after_request_kib'] / 1024:.1f}",
                "",
            ]
        )
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--protocols", default="http1.1,h2", help="client protocols: http1.1,h2")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ap.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also show where the service's Python allocations per connection go",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        raise SystemExit(f"idle_memory: --connections must be 1..{MAX_CONNECTIONS}")
    results = run(args)
    if args.json:
        print(harness.dump_json(results))
        return 0
    print(harness.fmt_table(rows(results), ["idle memory (service)", "measured", "target"]))
    for protocol in ALPN:
        traced = results.get(protocol, {}).get("tracemalloc")
        if traced:
            print(
                f"\n{protocol}: Python allocations per connection (tracemalloc, after one "
                f"request): {traced['python_kib_per_connection']} KiB; top sites (KiB, blocks):"
            )
            for site, kib, blocks in traced["top_sites"]:
                print(f"  {kib:7.2f} KiB {blocks:6.1f}  {site}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
