"""
What an HTTP/2 client costs the service beside an HTTP/1.1 client, counted
in instructions per request under callgrind.

    python benchmarks/h2_cost.py [--requests 400] [--clients 16] [--json]

The service and the connector run under valgrind's callgrind (see
L{harness.StackOptions.callgrind}); the same client, C{h2load}, sends
C{GET /1k} from C{--clients} connections, one request at a time on each
(C{-m1}): once over HTTP/1.1 (C{--h1}) and once over HTTP/2; then both
again from one connection (C{h1 c1}, C{h2 c1}).  Counters are
zeroed before each run and dumped after it (L{profiling.callgrind_counts}),
so each figure is the daemons' instructions for that run alone, handshakes
included (use many more requests than clients).  The tunnel and the
connector do the same work for both; the service's ratio, h2 / h1, is what
the performance issue asks to bring within 1.10.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import profiling
from harness import Stack, StackOptions

#: The loads, by name: extra h2load arguments, and whether from one
#: connection only (C{c1}) or from C{--clients}.
LOADS = {
    "h1": (["--h1"], False),
    "h2": ([], False),
    "h1 c1": (["--h1"], True),
    "h2 c1": ([], True),
}


def h2load(stack: Stack, requests: int, clients: int, extra: list[str]) -> int:
    """Run h2load once; the number of requests answered 2xx (all, or it raises)."""
    argv = [
        "h2load",
        *extra,
        f"--requests={requests}",
        f"--clients={clients}",
        "--threads=1",
        "--max-concurrent-streams=1",
        f"--connect-to=127.0.0.1:{stack.public_port}",
        f"https://{stack.host_header}/1k",
    ]
    # Under callgrind the daemons are ~50 times slower: a generous bound.
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    codes = re.search(r"status codes: (\d+) 2xx", proc.stdout)
    if proc.returncode != 0 or codes is None or int(codes.group(1)) != requests:
        raise SystemExit(f"h2_cost: h2load {extra} failed:\n{proc.stdout[-600:]}{proc.stderr}")
    return int(codes.group(1))


def run(args: argparse.Namespace) -> dict[str, Any]:
    options = StackOptions(keep=args.keep, callgrind=True)
    results: dict[str, Any] = {"benchmark": "h2-cost-callgrind", "requests": args.requests}
    with Stack(options) as stack:
        for extra, _ in LOADS.values():  # warm up: code paths, pooled tunnel streams
            h2load(stack, 2 * args.clients, args.clients, extra)
        for name, (extra, one) in LOADS.items():
            clients = 1 if one else args.clients
            counts = profiling.callgrind_counts(
                stack.daemons,
                stack.tmp,
                lambda e=extra, c=clients: h2load(stack, args.requests, c, e),
            )
            results[name] = {
                daemon: round(count / args.requests) for daemon, count in counts.items()
            }
    for h1, h2, key in (("h1", "h2", "h2_over_h1"), ("h1 c1", "h2 c1", "h2_over_h1 c1")):
        results[key] = {
            daemon: round(results[h2][daemon] / results[h1][daemon], 3) for daemon in results[h1]
        }
    return results


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--requests", type=int, default=400, help="requests per load")
    ap.add_argument("--clients", type=int, default=16, help="connections per load")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.clients <= args.requests <= 100_000:
        raise SystemExit("h2_cost: need 1 <= clients <= requests <= 100000")
    results = run(args)
    if args.json:
        print(harness.dump_json(results))
    else:
        rows = [
            [
                name,
                f"{results[name]['service'] / 1e6:.3f}M",
                f"{results[name]['connector'] / 1e6:.3f}M",
            ]
            for name in LOADS
        ]
        for key in ("h2_over_h1", "h2_over_h1 c1"):
            ratio = results[key]
            label = key.replace("_over_", " / ")
            rows.append([label, f"{ratio['service']:.3f}", f"{ratio['connector']:.3f}"])
        print(harness.fmt_table(rows, ["instructions per request", "service", "connector"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
