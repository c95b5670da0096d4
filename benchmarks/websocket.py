"""
WebSocket through the whole path, beside a direct connection to the same app
in the same run.

    python benchmarks/websocket.py [--messages 2000] [--mib 128] [--runs 3] [--json]

    client (websockets, sync) --TLS, HTTP/1.1 upgrade--> service
        --HTTP/2 tunnel (an upgraded stream)--> connector --ws://--> app

The app is C{tests/websocket_app.py} (the C{websockets} library's asyncio
server) run as a subprocess on loopback, published as a passthrough app
C{ws} next to the harness's own (L{harness.Stack}); the client is the
C{websockets} library's sync client in this process.  Measured, through
appproxy (C{wss://}) and directly (C{ws://127.0.0.1:PORT}):

  - round trip: C{--messages} text messages of 32 bytes sent one at a time
    to C{/echo}, each answer awaited: p50 and p99 in ms;
  - app -> client: C{--mib} MiB pushed by C{/push} in 1 MiB binary
    messages, read as fast as the client can: MB/s (10^6 bytes/s);
  - client -> app: C{--mib} MiB sent to C{/sink} in 1 MiB binary messages,
    until the app has counted them all: MB/s.

The direct connection is plain C{ws://} (no TLS), as L{transfer}'s direct
figures are plain HTTP: the ratios include the cost of TLS to the client.
No compression (C{permessage-deflate} off), so that bytes are bytes.  Each
throughput figure is the median of C{--runs} (a run during which other
processes used more than 0.3 of a core is repeated once, as in
L{transfer}); the daemons' peak RSS during them is reported (sampled every
20 ms), and the CPU seconds of each process in the median run.  The ratios are appproxy / direct
(latency: direct / appproxy, so that 1.0 is "as good as direct" for all).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import CpuMeter, PeakSampler, Stack, StackOptions, least_disturbed, wait_quiet

APP_SCRIPT = harness.ROOT / "tests" / "websocket_app.py"
WS_APP = "ws"
MESSAGE = 1 << 20
#: Bound on any one receive.
RECV_TIMEOUT = 60.0


class WebSocketStack(Stack):
    """The harness's stack plus the app C{ws} in front of the WebSocket app."""

    ws_port: int = 0

    @property
    def ws_host(self) -> str:
        return f"{WS_APP}.{harness.DOMAIN}"

    @property
    def ws_origin(self) -> str:
        return f"https://{self.ws_host}:{self.public_port}"

    def _patch_configs(self) -> None:
        super()._patch_configs()
        service = self.tmp / "state" / "service.toml"
        service.write_text(
            service.read_text()
            + f"""
[[apps]]
name = "{WS_APP}"
external_url = "{self.ws_origin}/"
internal_url = "http://127.0.0.1:{self.ws_port}/"
connector_group = "default"
pre_authentication = "passthrough"
"""
        )


def start_app() -> tuple[subprocess.Popen[bytes], int]:
    """The WebSocket app, listening; its process and port."""
    proc = subprocess.Popen(
        [harness.PYTHON, str(APP_SCRIPT), "--max-seconds", str(harness.BACKEND_MAX_SECONDS)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + harness.START_TIMEOUT
    line = b""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(b"ready ") or proc.poll() is not None:
            break
    if not line.startswith(b"ready "):
        proc.kill()
        raise RuntimeError(f"the WebSocket app did not start: {line!r}")
    return proc, int(line.split()[1])


def _connect(stack: WebSocketStack, via: str, path: str) -> Any:
    import socket

    from websockets.sync.client import connect

    common: dict[str, Any] = {
        "compression": None,
        "max_size": None,
        "ping_interval": None,
        "proxy": None,
        "open_timeout": 30,
    }
    if via == "direct":
        return connect(f"ws://127.0.0.1:{stack.ws_port}{path}", **common)
    sock = socket.create_connection(("127.0.0.1", stack.public_port), timeout=30)
    return connect(
        f"wss://{stack.ws_host}:{stack.public_port}{path}",
        sock=sock,
        ssl=harness.client_tls_context(stack, ["http/1.1"]),
        origin=stack.ws_origin,
        **common,
    )


def round_trips(stack: WebSocketStack, via: str, count: int) -> dict[str, Any]:
    """C{count} small messages, one at a time: latency percentiles (ms)."""
    with _connect(stack, via, "/echo") as ws:
        for _ in range(min(50, count)):  # warm up
            ws.send("w" * 32)
            ws.recv(timeout=RECV_TIMEOUT)
        times = []
        for i in range(count):
            message = f"{i:032d}"
            started = time.perf_counter()
            ws.send(message)
            if ws.recv(timeout=RECV_TIMEOUT) != message:
                raise RuntimeError(f"round trip {i} via {via}: wrong answer")
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "messages": count,
        "p50_ms": round(times[len(times) // 2], 3),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(times), 3),
    }


def download(stack: WebSocketStack, via: str, total: int) -> float:
    """App -> client: seconds to receive C{total} bytes."""
    with _connect(stack, via, f"/push?bytes={total}&size={MESSAGE}") as ws:
        started = time.perf_counter()
        received = 0
        while True:
            message = ws.recv(timeout=RECV_TIMEOUT)
            if message == "done":
                break
            received += len(message)
        seconds = time.perf_counter() - started
    if received != total:
        raise RuntimeError(f"download via {via}: {received} bytes of {total}")
    return seconds


def upload(stack: WebSocketStack, via: str, total: int) -> float:
    """Client -> app: seconds until the app has counted C{total} bytes."""
    block = bytes(range(256)) * (MESSAGE // 256)
    with _connect(stack, via, "/sink") as ws:
        started = time.perf_counter()
        for _ in range(total // MESSAGE):
            ws.send(block)
        ws.send("count")
        counted = int(ws.recv(timeout=RECV_TIMEOUT))
        seconds = time.perf_counter() - started
    if counted != total:
        raise RuntimeError(f"upload via {via}: the app counted {counted} of {total} bytes")
    return seconds


def one_transfer(stack: WebSocketStack, via: str, direction: str, total: int) -> dict[str, Any]:
    transfer = download if direction == "download" else upload
    meter = CpuMeter(stack).start()
    with PeakSampler(stack.daemons) as sampler:
        seconds = transfer(stack, via, total)
    cpu = meter.stop()
    stack.check_alive()
    return {"mbps": round(total / seconds / 1e6, 1), "peak": dict(sampler.peak), "cpu": cpu}


def throughput(stack: WebSocketStack, via: str, direction: str, args: argparse.Namespace) -> Any:
    """C{--runs} transfers (each repeated once if others disturbed it): the median."""
    total = args.mib * MESSAGE
    samples = [
        least_disturbed(lambda: one_transfer(stack, via, direction, total), stack, attempts=2)
        for _ in range(args.runs)
    ]
    speeds = [s["mbps"] for s in samples]
    median = sorted(samples, key=lambda s: s["mbps"])[len(samples) // 2]
    return {
        "mbps": statistics.median(speeds),
        "mbps_runs": speeds,
        "peak_rss_kib": {name: max(s["peak"][name] for s in samples) for name in stack.daemons},
        "cpu_median_run": median["cpu"],
        "other_cores": max(s["other_cores"] for s in samples),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    app, port = start_app()
    results: dict[str, Any] = {
        "benchmark": "websocket",
        "messages": args.messages,
        "bytes": args.mib * MESSAGE,
        "runs": args.runs,
    }
    try:
        whatif = tuple(w for w in args.whatif.split(",") if w)
        stack = WebSocketStack(StackOptions(connections=2, keep=args.keep, whatif=whatif))
        stack.ws_port = port
        with stack:
            # Its CPU is the app's, not others' (and the stack stops it too).
            stack.procs["app"] = app
            results["background_load_cores"] = wait_quiet(stack)
            results["idle_rss_kib"] = {n: m["VmRSS"] for n, m in stack.memory().items()}
            for via in ("proxy", "direct"):
                results[f"round_trip_{via}"] = round_trips(stack, via, args.messages)
                for direction in ("download", "upload"):
                    results[f"{direction}_{via}"] = throughput(stack, via, direction, args)
    finally:
        if app.poll() is None:
            app.terminate()
        try:
            app.wait(5)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait(5)
        if app.stdout is not None:
            app.stdout.close()
    p, d = results["round_trip_proxy"], results["round_trip_direct"]
    results["ratios"] = {
        "round_trip_p50": round(d["p50_ms"] / p["p50_ms"], 3),
        "round_trip_p99": round(d["p99_ms"] / p["p99_ms"], 3),
        "download": round(
            results["download_proxy"]["mbps"] / results["download_direct"]["mbps"], 3
        ),
        "upload": round(results["upload_proxy"]["mbps"] / results["upload_direct"]["mbps"], 3),
    }
    return results


def rows(results: dict[str, Any]) -> list[list[str]]:
    """Table rows: measure, full path, direct, ratio."""
    p, d, r = results["round_trip_proxy"], results["round_trip_direct"], results["ratios"]
    out = [
        [
            f"WebSocket round trip p50 / p99 ({p['messages']} x 32 B, ms)",
            f"{p['p50_ms']:.3f} / {p['p99_ms']:.3f}",
            f"{d['p50_ms']:.3f} / {d['p99_ms']:.3f}",
            f"{r['round_trip_p50']:.2f} / {r['round_trip_p99']:.2f}",
        ]
    ]
    mib = results["bytes"] >> 20
    for direction, label in (("download", "app -> client"), ("upload", "client -> app")):
        proxy, direct = results[f"{direction}_proxy"], results[f"{direction}_direct"]
        peak = proxy["peak_rss_kib"]
        out.append(
            [
                f"WebSocket {label}, {mib} MiB in 1 MiB messages (MB/s)",
                f"{proxy['mbps']:.0f}",
                f"{direct['mbps']:.0f}",
                f"{r[direction]:.2f}",
            ]
        )
        idle = results.get("idle_rss_kib", {})
        out.append(
            [
                "  peak RSS service / connector (MiB)",
                f"{peak['service'] / 1024:.1f} / {peak['connector'] / 1024:.1f}",
                f"idle {idle.get('service', 0) / 1024:.1f} / {idle.get('connector', 0) / 1024:.1f}",
                "",
            ]
        )
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000, help="round trips measured")
    ap.add_argument("--mib", type=int, default=128, help="MiB per throughput run")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs (median)")
    harness.add_stack_options(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not (1 <= args.runs <= 20 and 10 <= args.messages <= 100_000 and 1 <= args.mib <= 4096):
        raise SystemExit("websocket: --runs 1..20, --messages 10..100000, --mib 1..4096")
    results = run(args)
    if args.json:
        print(harness.dump_json(results))
    else:
        print(
            harness.fmt_table(
                rows(results), ["websocket", "full path", "direct", "ratio (1.0 = direct)"]
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
