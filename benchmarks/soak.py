"""
Soak: memory, file descriptors and tunnel streams of both daemons under
a long mixed load, and whether they come back once it stops.

    python benchmarks/soak.py [--minutes 60] [--quick] [--tracemalloc N] [--json]

Phases, each sampled every C{--interval} seconds (10):

  1. warm-up: a few requests of each kind below (code paths, pools);
  2. idle (C{--idle} s): the baseline every other figure is compared with;
  3. load (C{--minutes}; C{--quick}: 4 minutes), all at once:
     - C{wrk} keep-alive GET /1k, passthrough app (C{--clients} x 0.6);
     - C{wrk} GET /1k on the app that signs users in, with a valid session
       cookie (x 0.2);
     - C{h2load} HTTP/2 clients, one stream each (x 0.2);
     - a 100 MiB download or upload (curl, HTTP/1.1 and HTTP/2 in turn)
       every C{--transfer-every} s;
     - C{--websockets} WebSockets to C{tests/websocket_app.py}'s C{/echo},
       a 1 KiB message each every 0.2 s;
     - clients that go away half way (after TCP connect, after half a
       request head, after 64 KiB of a 1 MiB upload), 5 per second;
  4. cool-down (C{--cooldown} s, 60): no load;
  5. a lone 100 MiB download on the quiet daemons, then 20 s.

Each sample: each daemon's RSS (C{/proc/PID/status}), open fds
(C{/proc/PID/fd}), and its heap report (C{appproxy.daemon.heap}, asked by
SIGUSR2): tunnel connections and streams, Python's allocated blocks, glibc's
arena in use and free.  Diagnosis only (each changes what it measures):
C{--tracemalloc FRAMES}, the Python allocation sites grown most since idle
(1 frame is slow enough); C{--types}, objects by type; C{--collect}, a full
garbage collection before each sample and what it freed.

Reported against the targets (issue 13): RSS over idle at the peak of load
(<= 16 MiB each), the slope over the second half of the load (none upward),
RSS over idle at the end of the cool-down (<= 8 MiB), failed requests (0),
fds and tunnel streams left behind (0); latency p50/p99 per wrk segment.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import soak_load
import transfer
import websocket
from harness import StackOptions

TARGET_LOAD_MIB = 16.0
TARGET_AFTER_MIB = 8.0
DAEMONS = ("service", "connector")
#: The report's rows for each daemon: label, the analysis keys shown (joined
#: by " / "), target.
REPORT_ROWS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("idle RSS (MiB) / fds", ("idle_mib", "idle_fds"), ""),
    ("load, max RSS over idle (MiB)", ("load_max_over_idle_mib",), f"<= {TARGET_LOAD_MIB:g}"),
    ("  per quarter of the load", ("load_quarters_max_over_idle_mib",), ""),
    ("slope, 2nd half of load (MiB/h)", ("second_half_slope_mib_per_hour",), "none upward"),
    (
        "cool-down end, RSS over idle (MiB)",
        ("after_load_over_idle_mib",),
        f"<= {TARGET_AFTER_MIB:g}",
    ),
    ("  seconds to within 8 MiB", ("cooldown_seconds_to_within_8mib",), "<= 60"),
    ("lone download after, max over idle (MiB)", ("lone-download_max_over_idle_mib",), ""),
    (
        "fds / tunnel streams left, cool-down end",
        ("fds_left_behind", "streams_left_behind"),
        "0 / 0",
    ),
    ("fds / tunnel streams left, end", ("end_fds_left_behind", "end_streams"), "0 / 0"),
)
MAX_MINUTES = 24 * 60


class Sampler(threading.Thread):
    """Samples both daemons every C{interval} s, tagged with the current phase."""

    def __init__(self, stack: Any, heap_dir: Path, interval: float, started: float) -> None:
        super().__init__(daemon=True, name="sampler")
        self.stack = stack
        self.heap_dir = heap_dir
        self.interval = interval
        self.started = started
        self.phase = "warm-up"
        self.samples: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def heap(self, name: str, pid: int) -> dict[str, Any]:
        path = self.heap_dir / f"heap-{name}-{pid}.jsonl"
        before = path.stat().st_size if path.exists() else 0
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_size > before:
                with open(path) as f:
                    f.seek(before)
                    line = f.readline()
                if line.endswith("\n"):
                    import json

                    report: dict[str, Any] = json.loads(line)
                    return report
            time.sleep(0.05)
        return {}

    def sample(self) -> dict[str, Any]:
        with self.lock:
            return self._sample()

    def _sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": round(time.monotonic() - self.started, 1), "phase": self.phase}
        for name in DAEMONS:
            pid = self.stack.pid(name)
            report = self.heap(name, pid)
            out[name] = {
                "rss_kib": harness.rss_kib(pid),
                "fds": len(os.listdir(f"/proc/{pid}/fd")),
                **report.get("probes", {}),
                "python_blocks": report.get("python_blocks"),
                "malloc": report.get("malloc", {}),
            }
            for key in ("collected", "gc_collections"):
                if key in report:
                    out[name][key] = report[key]
            if "types" in report:
                out[name]["types"] = report["types"]
            if "grown" in report:
                out[name]["grown"] = report["grown"][:12]
                out[name]["traced_kib"] = report.get("traced_kib")
        return out

    def run(self) -> None:
        while not self.stopping.is_set():
            begin = time.monotonic()
            try:
                self.samples.append(self.sample())
            except (OSError, KeyError) as e:
                print(f"soak: sample failed: {e}", file=sys.stderr)
            self.stopping.wait(max(0.1, self.interval - (time.monotonic() - begin)))

    def now(self, phase: str) -> None:
        """Take one sample at once (a phase boundary) and switch phase."""
        self.samples.append(self.sample())
        self.phase = phase


def slope_mib_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, KiB) points, in MiB per hour."""
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 3600 / 1024


def warm_up(stack: Any, loads: dict[str, Any]) -> None:
    harness.https_gets(stack, "/1k", 20)
    cookie = (f"Cookie: {stack.session_cookie()}",)
    harness.wrk(
        f"{stack.public_url}/1k",
        connections=5,
        threads=1,
        seconds=1,
        host=stack.auth_host_header,
        headers=cookie,
    )
    with websocket._connect(stack, "proxy", "/echo") as ws:
        ws.send("warm")
        ws.recv(timeout=30)
    harness.curl(
        [
            "-k",
            "--http2",
            "--resolve",
            stack.resolve,
            "-o",
            "/dev/null",
            f"{stack.external_url}/bytes/1048576",
        ],
        timeout=60,
    )


def start_load(stack: Any, args: argparse.Namespace, started: float, upload: Path) -> list[Any]:
    deadline = time.monotonic() + args.minutes * 60
    c = args.clients
    cookie = (f"Cookie: {stack.session_cookie(lifetime=int(args.minutes * 60) + 3600)}",)
    loads: list[Any] = [
        soak_load.WrkLoad(
            stack,
            deadline,
            started,
            name="wrk",
            host=stack.host_header,
            connections=max(1, round(c * 0.6)),
            threads=2,
        ),
        soak_load.WrkLoad(
            stack,
            deadline,
            started,
            name="wrk-signed-in",
            host=stack.auth_host_header,
            connections=max(1, round(c * 0.2)),
            threads=1,
            headers=cookie,
        ),
        soak_load.H2Load(stack, deadline, started, clients=max(1, round(c * 0.2))),
        soak_load.Transfers(stack, deadline, started, args.transfer_every, upload),
        soak_load.Abandoners(stack, deadline, started, pause=0.2),
    ]
    loads += [
        soak_load.WebSockets(stack, deadline, started, pause=0.2) for _ in range(args.websockets)
    ]
    for load in loads:
        load.start()
    return loads


def log_problems(stack: Any) -> dict[str, int]:
    out = {}
    for name in DAEMONS:
        text = (stack.tmp / f"{name}.log").read_text(errors="replace")
        out[name] = sum(
            1 for line in text.splitlines() if "Traceback" in line or "Unhandled" in line
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    # The backend and the WebSocket app stop by themselves after this long (a
    # safety net): never before the soak is over.
    harness.BACKEND_MAX_SECONDS = max(
        harness.BACKEND_MAX_SECONDS, args.minutes * 60 + args.idle + args.cooldown + 600
    )
    app, port = websocket.start_app()
    heap_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"appproxy-soak-heap-{os.getpid()}"
    heap_dir.mkdir(exist_ok=True)
    os.environ["APPPROXY_HEAP_DIR"] = str(heap_dir)
    if args.tracemalloc:
        os.environ["APPPROXY_HEAP_TRACEMALLOC"] = str(args.tracemalloc)
    if args.types:
        os.environ["APPPROXY_HEAP_TYPES"] = "1"
    if args.collect:
        os.environ["APPPROXY_HEAP_COLLECT"] = "1"
    harness.raise_fd_limit(4096)
    results: dict[str, Any] = {
        "benchmark": "soak",
        "minutes": args.minutes,
        "clients": args.clients,
        "tracemalloc": args.tracemalloc,
    }
    try:
        stack = websocket.WebSocketStack(StackOptions(connections=args.tunnels, keep=args.keep))
        stack.ws_port = port
        with stack:
            upload = transfer.make_file(stack.tmp / "upload.bin")
            results["background_load_cores"] = harness.wait_quiet(stack, max_wait=30)
            started = time.monotonic()
            sampler = Sampler(stack, heap_dir, args.interval, started)
            warm_up(stack, {})
            sampler.now("idle")
            sampler.start()
            time.sleep(args.idle)
            sampler.now("load")
            loads = start_load(stack, args, started, upload)
            load_end = time.monotonic() + args.minutes * 60 + 120
            for load in loads:
                load.join(max(1.0, load_end - time.monotonic()))
                stack.check_alive()
            for load in loads:  # any still running (a stuck WebSocket): stop them
                load.stop()
                load.join(40)
            sampler.now("cool-down")
            time.sleep(args.cooldown)
            sampler.now("lone-download")
            harness.curl(transfer._curl_args(stack, "download", "http1.1", upload), timeout=300)
            time.sleep(20)
            sampler.stopping.set()
            sampler.join(60)
            sampler.now("end")
            stack.check_alive()
            results["loads"] = {load.name_: load.summary() for load in loads}
            results["log_problems"] = log_problems(stack)
            results["samples"] = sampler.samples
    finally:
        app.terminate()
        try:
            app.wait(5)
        except Exception:
            app.kill()
        if app.stdout is not None:
            app.stdout.close()
        for f in heap_dir.glob("*.jsonl"):
            f.unlink()
        heap_dir.rmdir()
    results["analysis"] = analyse(results["samples"], args.cooldown)
    return results


def _rss(samples: list[dict[str, Any]], name: str) -> list[int]:
    return [s[name]["rss_kib"] for s in samples]


def analyse(samples: list[dict[str, Any]], cooldown: float) -> dict[str, Any]:
    """Figures per daemon against the targets."""
    out: dict[str, Any] = {}
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        by_phase.setdefault(s["phase"], []).append(s)
    load = by_phase.get("load", [])
    cool = by_phase.get("cool-down", [])
    for name in DAEMONS:
        idle_samples = by_phase.get("idle", [])
        idle = statistics.median(_rss(idle_samples, name))
        idle_fds = min(s[name]["fds"] for s in idle_samples)
        d: dict[str, Any] = {"idle_mib": round(idle / 1024, 1), "idle_fds": idle_fds}
        for phase, rows in by_phase.items():
            rss = _rss(rows, name)
            d[f"{phase}_max_over_idle_mib"] = round((max(rss) - idle) / 1024, 1)
            d[f"{phase}_last_over_idle_mib"] = round((rss[-1] - idle) / 1024, 1)
        if load:
            t0, t1 = load[0]["t"], load[-1]["t"]
            half = [(s["t"], s[name]["rss_kib"]) for s in load if s["t"] >= (t0 + t1) / 2]
            d["second_half_slope_mib_per_hour"] = round(slope_mib_per_hour(half), 2)
            quarters = []
            for q in range(4):
                lo, hi = t0 + (t1 - t0) * q / 4, t0 + (t1 - t0) * (q + 1) / 4
                rss = [s[name]["rss_kib"] for s in load if lo <= s["t"] <= hi]
                if rss:
                    quarters.append(round((max(rss) - idle) / 1024, 1))
            d["load_quarters_max_over_idle_mib"] = quarters
            d["load_max_streams"] = max(s[name].get("tunnel_streams", 0) for s in load)
            d["load_max_fds"] = max(s[name]["fds"] for s in load)
        if cool:
            start = cool[0]["t"]
            within = [
                s["t"] - start for s in cool if s[name]["rss_kib"] - idle <= TARGET_AFTER_MIB * 1024
            ]
            d["cooldown_seconds_to_within_8mib"] = round(within[0], 1) if within else None
            last = cool[-1][name]
            d["after_load_over_idle_mib"] = round((last["rss_kib"] - idle) / 1024, 1)
            d["fds_left_behind"] = last["fds"] - idle_fds
            d["streams_left_behind"] = last.get("tunnel_streams")
            d["after_load_malloc"] = last.get("malloc")
        end = samples[-1][name]
        d["end_over_idle_mib"] = round((end["rss_kib"] - idle) / 1024, 1)
        d["end_streams"] = end.get("tunnel_streams")
        d["end_fds_left_behind"] = end["fds"] - idle_fds
        grown = [s[name]["grown"] for s in load if "grown" in s[name]]
        if grown:
            d["grown_at_end_of_load"] = grown[-1]
        if "grown" in end:
            d["grown_at_end"] = end["grown"]
        out[name] = d
    return out


def report(results: dict[str, Any]) -> str:
    a = results["analysis"]
    lines = []
    rows = [
        [f"{name}: {label}", " / ".join(str(a[name].get(key)) for key in keys), target]
        for name in DAEMONS
        for label, keys, target in REPORT_ROWS
    ]
    lines.append(harness.fmt_table(rows, ["soak", "measured", "target"]))
    lines.append("")
    for kind, s in results["loads"].items():
        extra = f", p50/p99 {s['p50_ms']}/{s['p99_ms']} ms" if "p50_ms" in s else ""
        lines.append(
            f"{kind}: {s['done']} done, {s['errors']} errors{extra}"
            + (f" {s['error_samples'][:3]}" if s["errors"] else "")
        )
    lines.append(f"log lines with Traceback/Unhandled: {results['log_problems']}")
    lines.append("\nlatency over time (wrk passthrough segments: t s, req/s, p50, p99 ms):")
    for seg in results["loads"].get("wrk", {}).get("segments", []):
        lines.append(
            f"  t={seg['t']:>5}  {seg['rps']:>5}/s  p50 {seg.get('p50', '-')}  "
            f"p99 {seg.get('p99', '-')}  errors {seg['errors']}"
        )
    lines.append(
        "\nsamples (t, phase, service RSS MiB/fds/streams, connector RSS MiB/fds/streams):"
    )
    for s in results["samples"]:
        sv, cn = s["service"], s["connector"]
        lines.append(
            f"  {s['t']:>7} {s['phase']:<13} {sv['rss_kib'] / 1024:6.1f} {sv['fds']:>4} "
            f"{sv.get('tunnel_streams', '-'):>4}   {cn['rss_kib'] / 1024:6.1f} "
            f"{cn['fds']:>4} {cn.get('tunnel_streams', '-'):>4}"
        )
    for name in DAEMONS:
        for when in ("end_of_load", "end"):
            grown = a[name].get(f"grown_at_{when}")
            if grown:
                lines.append(
                    f"\n{name}: Python allocation sites grown from idle to the "
                    f"{when.replace('_', ' ')} (KiB, blocks):"
                )
                lines += [f"  {kib:>7} {count:>7}  {site}" for site, kib, count in grown]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the load")
    ap.add_argument("--quick", action="store_true", help="4 minutes of load, 20 s idle")
    ap.add_argument("--clients", type=int, default=50, help="busy small-request clients")
    ap.add_argument("--websockets", type=int, default=4)
    ap.add_argument("--transfer-every", type=float, default=60.0, help="seconds between transfers")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle baseline")
    ap.add_argument("--cooldown", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--tunnels", type=int, default=2)
    ap.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace the daemons' Python allocations, FRAMES deep "
        "(diagnosis: slows them down and inflates RSS)",
    )
    ap.add_argument(
        "--types",
        action="store_true",
        help="count the daemons' objects by type in each sample (diagnosis)",
    )
    ap.add_argument(
        "--collect",
        action="store_true",
        help="a full garbage collection in the daemons before each sample "
        "(diagnosis: what was garbage not yet collected)",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--save", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        args.minutes, args.idle, args.transfer_every = 4.0, 20.0, 40.0
    if not (
        0.5 <= args.minutes <= MAX_MINUTES
        and 1 <= args.clients <= 1000
        and 0 <= args.websockets <= 100
        and 1 <= args.interval <= 600
    ):
        raise SystemExit("soak: --minutes 0.5..1440, --clients 1..1000, --websockets 0..100")
    results = run(args)
    if args.save:
        Path(args.save).write_text(harness.dump_json(results))
    print(harness.dump_json(results) if args.json else report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
