"""
Run every benchmark and print one table against the targets.

    python benchmarks/run_all.py [--quick] [--json] [--profile DIR] [--output FILE]

Runs L{throughput}, L{transfer}, L{idle_memory} and L{websocket} one after the other, each on
its own freshly started stack (so that one's memory peaks do not show in the
next), and writes all the figures as JSON to C{benchmarks/results/latest.json}
(or C{--output}).  C{make bench} calls this.  Takes about four minutes
(C{--quick}: about two).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import idle_memory
import throughput
import transfer
import websocket


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    t, x, m = results["throughput"], results["transfer"], results["idle_memory"]
    p, d = t["proxy"], t["direct"]
    p1, d1 = t["proxy_c1"], t["direct_c1"]
    rows = [
        [
            f"GET /1k requests/s (wrk {t['config']['wrk']})",
            f"{p['rps']:.0f}",
            f"{d['rps']:.0f}",
            f">= {throughput.TARGET_RPS}",
            _verdict(p["rps"] >= throughput.TARGET_RPS),
        ],
        [
            "GET /1k requests per CPU-second (service+connector)",
            f"{p['rps_per_cpu_daemons']:.0f}",
            f"{d['rps_per_cpu_backend']:.0f} (backend)",
            f">= {throughput.TARGET_RPS_PER_CPU}",
            _verdict(p["rps_per_cpu_daemons"] >= throughput.TARGET_RPS_PER_CPU),
        ],
        [
            "GET /1k latency p50 / p99, concurrency 1 (ms)",
            f"{p1['latency_ms']['p50']:.2f} / {p1['latency_ms']['p99']:.2f}",
            f"{d1['latency_ms']['p50']:.2f} / {d1['latency_ms']['p99']:.2f}",
            "",
            "",
        ],
    ]
    vias = [k.split("_", 1)[1] for k in x if k.startswith("download_") and k != "download_direct"]
    limit_kib = transfer.TARGET_PEAK_RSS_MIB * 1024
    for direction in ("download", "upload"):
        direct = x[f"{direction}_direct"]
        for via in vias:
            r = x[f"{direction}_{via}"]
            peak = r["peak_rss_kib"]
            rows.append(
                [
                    f"100 MiB {direction} (client {via}), MB/s",
                    f"{r['mbps']:.0f}",
                    f"{direct['mbps']:.0f}",
                    f">= {transfer.TARGET_MBPS:.0f}",
                    _verdict(r["mbps"] >= transfer.TARGET_MBPS),
                ]
            )
            rows.append(
                [
                    "  peak RSS service / connector (MiB)",
                    f"{peak['service'] / 1024:.1f} / {peak['connector'] / 1024:.1f}",
                    f"{direct['peak_rss_kib']['backend'] / 1024:.1f} (backend)",
                    f"< {transfer.TARGET_PEAK_RSS_MIB:.0f}",
                    _verdict(peak["service"] < limit_kib and peak["connector"] < limit_kib),
                ]
            )
    for protocol in idle_memory.ALPN:
        r = m.get(protocol)
        if r is None:
            continue
        for key, label in (
            ("kib_per_connection_handshake", "handshake only"),
            ("kib_per_connection_request", "after one request"),
        ):
            rows.append(
                [
                    f"KiB per idle {protocol} client connection ({label})",
                    f"{r[key]:.1f}",
                    "",
                    f"<= {idle_memory.TARGET_KIB:.0f}",
                    _verdict(r[key] <= idle_memory.TARGET_KIB),
                ]
            )
    rows += [
        [measure, value, "", target, verdict]
        for measure, value, target, verdict in throughput.target_rows(t)
    ]
    w = results.get("websocket")
    if w is not None:
        rows += [
            [measure, proxy, direct, f"ratio {ratio}" if ratio else "", ""]
            for measure, proxy, direct, ratio in websocket.rows(w)
        ]
    return rows


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=harness.ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def environment() -> dict[str, Any]:
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", "appproxy")),
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs, fewer repeats")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--profile", metavar="DIR", help="also profile the daemons with py-spy")
    ap.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "latest.json",
        help="where to write the JSON results",
    )
    args = ap.parse_args(argv)

    t_args = ["--duration", "5", "--latency-duration", "3"] if args.quick else []
    x_args = ["--runs", "1"] if args.quick else []
    m_args = ["--connections", "500"] if args.quick else []
    w_args = ["--messages", "500", "--mib", "32", "--runs", "1"] if args.quick else []
    if args.profile:
        t_args += ["--profile", str(Path(args.profile) / "throughput")]
        x_args += ["--profile", str(Path(args.profile) / "transfer")]

    results: dict[str, Any] = {"environment": environment()}
    print("== throughput", file=sys.stderr)
    results["throughput"] = throughput.run(throughput.parser().parse_args(t_args))
    print("== transfer", file=sys.stderr)
    results["transfer"] = transfer.run(transfer.parser().parse_args(x_args))
    print("== idle memory", file=sys.stderr)
    results["idle_memory"] = idle_memory.run(idle_memory.parser().parse_args(m_args))
    print("== websocket", file=sys.stderr)
    results["websocket"] = websocket.run(websocket.parser().parse_args(w_args))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(harness.dump_json(results) + "\n")
    if args.json:
        print(harness.dump_json(results))
        return 0
    header = ["measure", "full path", "direct", "target", ""]
    print(harness.fmt_table(summary_rows(results), header))
    print()
    print("details:")
    print(harness.fmt_table(throughput.rows(results["throughput"]), header[:4]))
    print()
    print(harness.fmt_table(transfer.rows(results["transfer"]), header[:4]))
    print()
    print(harness.fmt_table(websocket.rows(results["websocket"]), [*header[:3], "ratio"]))
    print()
    print(f"(JSON: {args.output})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
