"""
A change measured beside the code without it: two stacks side by side, the
second with what-if patches (C{whatif/sitecustomize.py}) that undo the
change (or stand for a proposed one), taking the same load in interleaved
rounds (L{rounds}).

    python benchmarks/ab.py --whatif keep-cycles [--rounds 4] [--seconds 4]
                            [--clients wrk|wrk-signed-in|h2load] [--json]

Prints each stack's requests per CPU-second of the service and the
connector together, the daemons' CPU microseconds per request, and the
ratio plain / patched with its spread over the rounds.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import h2clients
import harness
import rounds
from harness import CpuMeter, Stack, StackOptions, wrk

CLIENTS = ("wrk", "wrk-signed-in", "h2load")


def one_run(stack: Stack, clients: str, seconds: float) -> dict[str, Any]:
    """One load of C{seconds} on C{stack}, 50 clients, with the daemons' CPU."""
    url = f"{stack.public_url}/1k"
    if clients == "h2load":
        return h2clients.measure(
            stack, url, stack.host_header, clients=50, seconds=seconds, h1=False
        )
    signed_in = clients == "wrk-signed-in"
    meter = CpuMeter(stack).start()
    result = wrk(
        url,
        connections=50,
        threads=2,
        seconds=seconds,
        host=stack.auth_host_header if signed_in else stack.host_header,
        headers=(f"Cookie: {stack.session_cookie()}",) if signed_in else (),
    )
    cpu = meter.stop()
    stack.check_alive()
    out = result.as_dict()
    daemons = cpu["service"] + cpu["connector"]
    out.update(cpu=cpu, daemon_cpu_s=round(daemons, 3))
    out["rps_per_cpu_daemons"] = round(result.requests / daemons, 1) if daemons > 0 else None
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    patches = tuple(p for p in args.whatif.split(",") if p)
    with Stack(StackOptions()) as plain, Stack(StackOptions(whatif=patches)) as patched:
        for stack in (plain, patched):  # warm up
            one_run(stack, args.clients, 2)
        results = rounds.interleaved(
            {
                "plain": functools.partial(one_run, plain, args.clients, args.seconds),
                "patched": functools.partial(one_run, patched, args.clients, args.seconds),
            },
            args.rounds,
            None,
            args.attempts,
        )
    out: dict[str, Any] = {"benchmark": "ab", "whatif": list(patches), "clients": args.clients}
    for key, result in results.items():
        count = result.get("succeeded", result.get("requests", 0))
        out[key] = {
            "requests": count,
            "rps_per_cpu_daemons": result["rps_per_cpu_daemons"],
            "service_us_per_request": round(result["cpu"]["service"] / count * 1e6, 1),
            "connector_us_per_request": round(result["cpu"]["connector"] / count * 1e6, 1),
            "rounds": result["rounds"],
        }
    out["plain_vs_patched"] = round(
        results["plain"]["rps_per_cpu_daemons"] / results["patched"]["rps_per_cpu_daemons"], 3
    )
    out["per_round"] = rounds.round_ratios(results["plain"], results["patched"])
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    ap.add_argument(
        "--whatif", required=True, help="patches for the second stack (comma-separated)"
    )
    ap.add_argument("--clients", choices=CLIENTS, default="wrk")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per load, per round")
    ap.add_argument("--attempts", type=int, default=2, help="repeats of a disturbed run")
    ap.add_argument("--json", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 1 <= args.seconds <= 60:
        raise SystemExit("ab: --rounds must be 1..20 and --seconds 1..60")
    results = run(args)
    if args.json:
        print(harness.dump_json(results))
        return 0
    rows = [
        [
            key,
            f"{r['rps_per_cpu_daemons']:.0f}",
            f"{r['service_us_per_request']:.0f} / {r['connector_us_per_request']:.0f}",
        ]
        for key, r in ((k, results[k]) for k in ("plain", "patched"))
    ]
    print(harness.fmt_table(rows, ["stack", "requests per CPU-s", "CPU us/request svc / conn"]))
    spread = rounds.spread(results["per_round"])
    print(f"plain / patched: {results['plain_vs_patched']:.3f} {f'({spread})' if spread else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
