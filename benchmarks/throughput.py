"""
Small-request throughput and latency through the whole path, beside the
backend measured directly.

    python benchmarks/throughput.py [--duration 10] [--concurrency 50] [--json]
                                    [--profile DIR]

  - C{GET /1k} with C{wrk -c50 -t2 -d10s} over TLS (HTTP/1.1, keep-alive) to the
    service, routed by C{Host} to the app: requests/s, and requests per
    CPU-second of the service and the connector together (CPU time from
    C{/proc/PID/stat} over the measured run).
  - The same at concurrency 1 (C{wrk -c1 -t1 --latency}): p50 and p99 latency.
  - Both again against the backend directly (plain HTTP, no proxy).

wrk runs on the same 2 cores as the daemons, so the requests/s it reports
include its own CPU use; requests per CPU-second does not depend on it.
C{--profile DIR} adds a run under py-spy and prints where each daemon spends
its time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import CpuMeter, Stack, StackOptions, least_disturbed, wait_quiet, wrk

#: Targets from the design (full path, 2 cores).
TARGET_RPS = 2500
TARGET_RPS_PER_CPU = 2000


def _load(
    stack: Stack,
    url: str,
    host: str | None,
    args: argparse.Namespace,
    *,
    latency: bool,
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    if latency:
        c, t, seconds = 1, 1, args.latency_duration
    else:
        c, t, seconds = args.concurrency, args.threads, args.duration
    meter = CpuMeter(stack).start()
    result = wrk(
        url,
        connections=c,
        threads=t,
        seconds=seconds,
        host=host,
        latency=latency,
        headers=headers,
    )
    cpu = meter.stop()
    stack.check_alive()
    out = result.as_dict()
    out["cpu"] = cpu
    out["concurrency"] = c
    daemons = cpu["service"] + cpu["connector"]
    out["rps_per_cpu_daemons"] = round(result.requests / daemons, 1) if daemons > 0 else None
    out["rps_per_cpu_backend"] = (
        round(result.requests / cpu["backend"], 1) if cpu["backend"] > 0 else None
    )
    if result.errors or result.non_2xx:
        print(
            f"throughput: {result.errors} socket errors, {result.non_2xx} non-2xx responses "
            f"({url}, -c{c})",
            file=sys.stderr,
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    options = StackOptions(
        connections=args.tunnels,
        capacity=args.capacity,
        keep=args.keep,
        whatif=tuple(w for w in args.whatif.split(",") if w),
    )
    results: dict[str, Any] = {"benchmark": "throughput", "whatif": list(options.whatif)}
    with Stack(options) as stack:
        proxy_url = f"{stack.public_url}/1k"
        direct_url = f"{stack.backend_url}/1k"
        host = stack.host_header
        auth_host = stack.auth_host_header
        cookie = (f"Cookie: {stack.session_cookie()}",)
        results["background_load_cores"] = wait_quiet(stack)
        # Warm up: connections, pooled backend connections, code paths.
        wrk(proxy_url, connections=args.concurrency, threads=args.threads, seconds=2, host=host)
        wrk(
            proxy_url,
            connections=args.concurrency,
            threads=args.threads,
            seconds=1,
            host=auth_host,
            headers=cookie,
        )
        wrk(direct_url, connections=args.concurrency, threads=args.threads, seconds=1)
        time.sleep(0.5)
        runs: list[tuple[str, str, str | None, bool, tuple[str, ...]]] = [
            ("proxy", proxy_url, host, False, ()),
            ("proxy_c1", proxy_url, host, True, ()),
            # The same app path with sign-in: a valid session cookie on
            # every request (decrypted, policy evaluated, headers injected).
            ("signed_in", proxy_url, auth_host, False, cookie),
            ("signed_in_c1", proxy_url, auth_host, True, cookie),
            ("direct", direct_url, None, False, ()),
            ("direct_c1", direct_url, None, True, ()),
        ]
        for key, url, h, latency, headers in runs:
            results[key] = least_disturbed(
                lambda u=url, h=h, lat=latency, hd=headers: _load(
                    stack, u, h, args, latency=lat, headers=hd
                ),
                stack,
                args.attempts,
            )
        for key in ("", "_c1"):
            plain, signed = results[f"proxy{key}"], results[f"signed_in{key}"]
            if plain.get("rps"):
                results[f"signed_in_vs_proxy{key}"] = round(signed["rps"] / plain["rps"], 3)
        results["memory_kib"] = stack.memory()
        if args.profile:
            results["profile"] = profile(stack, proxy_url, host, args)
    results["config"] = {
        "wrk": f"-c{args.concurrency} -t{args.threads} -d{args.duration:g}s",
        "latency_wrk": f"-c1 -t1 -d{args.latency_duration:g}s --latency",
        "connector_connections": args.tunnels,
        "connector_capacity": args.capacity,
    }
    return results


def profile(stack: Stack, url: str, host: str, args: argparse.Namespace) -> dict[str, Any]:
    import profiling

    if not profiling.available():
        print("throughput: py-spy not installed; no profile", file=sys.stderr)
        return {}
    seconds = max(5, int(args.duration))
    out_dir = Path(args.profile)
    wait_quiet(stack)
    with profiling.Recorder(stack.daemons, seconds, out_dir) as recorder:
        time.sleep(0.5)  # py-spy attaches
        wrk(url, connections=args.concurrency, threads=args.threads, seconds=seconds, host=host)
    summaries = recorder.summaries()
    for name, summary in summaries.items():
        print(profiling.format_summary(f"{name} under GET /1k load", summary), file=sys.stderr)
    print(f"throughput: raw profiles (collapsed stacks) in {out_dir}", file=sys.stderr)
    return summaries


def rows(results: dict[str, Any]) -> list[list[str]]:
    """Table rows: measure, full path, direct, target."""
    p, d = results["proxy"], results["direct"]
    p1, d1 = results["proxy_c1"], results["direct_c1"]
    pc, dc = p["cpu"], d["cpu"]
    return [
        [
            f"GET /1k requests/s (c{p['concurrency']})",
            f"{p['rps']:.0f}",
            f"{d['rps']:.0f}",
            f">= {TARGET_RPS}",
        ],
        [
            "GET /1k requests per CPU-second",
            f"{p['rps_per_cpu_daemons']:.0f} (service+connector)",
            f"{d['rps_per_cpu_backend']:.0f} (backend)",
            f">= {TARGET_RPS_PER_CPU}",
        ],
        [
            "  CPU s: service / connector / backend / wrk",
            f"{pc['service']:.1f} / {pc['connector']:.1f} / {pc['backend']:.1f} / "
            f"{pc['client']:.1f}",
            f"- / - / {dc['backend']:.1f} / {dc['client']:.1f}",
            "",
        ],
        [
            "GET /1k latency p50 / p99 (c1)",
            f"{p1['latency_ms']['p50']:.2f} / {p1['latency_ms']['p99']:.2f} ms",
            f"{d1['latency_ms']['p50']:.2f} / {d1['latency_ms']['p99']:.2f} ms",
            "",
        ],
        [
            "GET /1k requests/s (c1)",
            f"{p1['rps']:.0f}",
            f"{d1['rps']:.0f}",
            "",
        ],
        [
            "signed in (session cookie): requests/s c50 / c1",
            f"{results['signed_in']['rps']:.0f} / {results['signed_in_c1']['rps']:.0f}"
            f" ({results['signed_in_vs_proxy'] * 100:.0f}% / "
            f"{results['signed_in_vs_proxy_c1'] * 100:.0f}% of passthrough)",
            "",
            ">= 90% of passthrough",
        ],
        [
            "signed in: latency p50 / p99 (c1)",
            f"{results['signed_in_c1']['latency_ms']['p50']:.2f} / "
            f"{results['signed_in_c1']['latency_ms']['p99']:.2f} ms",
            "",
            "",
        ],
        [
            "signed in: requests per CPU-second",
            f"{results['signed_in']['rps_per_cpu_daemons']:.0f} (service+connector)",
            "",
            "",
        ],
        [
            "  cores used by others (c50 / c1 runs)",
            f"{p['other_cores']:.2f} / {p1['other_cores']:.2f}",
            f"{d['other_cores']:.2f} / {d1['other_cores']:.2f}",
            "",
        ],
    ]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    ap.add_argument("--latency-duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--tunnels", type=int, default=2, help="connector connections")
    ap.add_argument("--capacity", type=int, default=200, help="streams per tunnel connection")
    ap.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="runs disturbed by other processes are repeated, up to this many times",
    )
    harness.add_stack_options(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.duration <= 300 or not 1 <= args.latency_duration <= 300:
        raise SystemExit("throughput: durations must be 1..300 seconds")
    results = run(args)
    if args.json:
        print(harness.dump_json(results))
    else:
        print(harness.fmt_table(rows(results), ["throughput", "full path", "direct", "target"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
