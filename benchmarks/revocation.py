"""
The cost of session revocation per signed-in request.

    python benchmarks/revocation.py [--duration 5] [--revocations 10000] [--json]

Every signed-in request is checked against the revoked sessions held in the
service's memory (C{appproxy.gate.sessions}).  This measures C{GET /1k} with a
valid session cookie (C{wrk -c50 -t2}) first with no revocation, then after
C{--revocations} revocations (half session ids, half users, none of them the
benchmark's session) were written to the state database by another process
and read by the service, and reports the ratio of the two in the same run: of requests/s, and of
requests per CPU-second of the daemons, which the machine's other load
disturbs less (target: at least 0.97, the check being two dictionary
lookups).  Then the check alone, timed in this process with both sets.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import Stack, StackOptions, least_disturbed, wait_quiet, wrk
from throughput import _load

#: The ratio the check should keep (full set / empty set, requests/s).
TARGET_RATIO = 0.97

#: Bound on the service reading the revocations written.
READ_TIMEOUT = 30.0


def write_revocations(database: Path, count: int) -> None:
    """C{count} revocations in one transaction, as C{appproxy sessions revoke} writes them."""
    from appproxy.state.sessions import USER_REVOCATION_LIFETIME, insert_revocation

    now = int(time.time())
    with sqlite3.connect(database, timeout=10) as connection:
        cursor = connection.cursor()
        for i in range(count):
            if i % 2:
                expires = now + USER_REVOCATION_LIFETIME
                insert_revocation(cursor, "user", f"user-{i}@example.com", now, expires)
            else:
                insert_revocation(cursor, "session", secrets.token_urlsafe(16), now, now + 3600)


def wait_until_read(stack: Stack, count: int) -> float:
    """Wait (bounded) until the service's log says it holds C{count}; the seconds taken."""
    log = stack.tmp / "service.log"
    started = time.monotonic()
    pattern = re.compile(r"Session revocations read: \d+ new, (\d+) in force")
    while time.monotonic() - started < READ_TIMEOUT:
        held = [int(m.group(1)) for m in pattern.finditer(log.read_text(errors="replace"))]
        if held and held[-1] >= count:
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"the service did not read {count} revocations within {READ_TIMEOUT} s")


def check_cost(count: int, rounds: int = 200_000) -> dict[str, float]:
    """
    The gate's check alone, in this process: nanoseconds per call of
    C{SessionRegistry.standing} with no revocation and with C{count}.
    """
    from appproxy.access.session import Session
    from appproxy.gate.sessions import SessionRegistry
    from appproxy.state.sessions import Revocation

    now = int(time.time())
    session = Session(
        app="bench", user="u", subject="u", issuer="i", auth_time=now, issued_at=now,
        expires_at=now + 3600,
    )  # fmt: skip
    out: dict[str, float] = {}
    for label, size in (("empty", 0), ("full", count)):
        registry = SessionRegistry(database=None, clock=None)  # type: ignore[arg-type]
        registry._read_at = now
        for i in range(size):
            kind = "user" if i % 2 else "session"
            registry.revocations.add(Revocation(seq=i + 1, kind=kind, subject=f"s{i}",
                                                revoked_at=now, expires_at=now + 3600))  # fmt: skip
        started = time.perf_counter()
        for _ in range(rounds):
            registry.standing(session, now)
        out[label] = round((time.perf_counter() - started) / rounds * 1e9, 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    options = StackOptions(connections=args.tunnels, keep=args.keep)
    results: dict[str, Any] = {"benchmark": "revocation", "revocations": args.revocations}
    with Stack(options) as stack:
        url = f"{stack.public_url}/1k"
        host = stack.auth_host_header
        cookie = (f"Cookie: {stack.session_cookie()}",)
        results["background_load_cores"] = wait_quiet(stack)
        wrk(url, connections=args.concurrency, threads=args.threads, seconds=2, host=host)

        def measure() -> dict[str, Any]:
            return least_disturbed(
                lambda: _load(stack, url, host, args, latency=False, headers=cookie),
                stack,
                args.attempts,
            )

        results["empty"] = measure()
        write_revocations(stack.tmp / "state" / "state" / "appproxy.sqlite", args.revocations)
        results["read_seconds"] = round(wait_until_read(stack, args.revocations), 2)
        results["full"] = measure()
        empty, full = results["empty"], results["full"]
        for result in (empty, full):
            if result["non_2xx"] or result["errors"]:
                raise RuntimeError(f"refused or failed requests during a run: {result}")
        if empty.get("rps"):
            results["full_vs_empty"] = round(full["rps"] / empty["rps"], 3)
        if empty.get("rps_per_cpu_daemons") and full.get("rps_per_cpu_daemons"):
            results["full_vs_empty_per_cpu"] = round(
                full["rps_per_cpu_daemons"] / empty["rps_per_cpu_daemons"], 3
            )
        results["memory_kib"] = stack.memory()
    results["check_ns"] = check_cost(args.revocations)
    results["config"] = {"wrk": f"-c{args.concurrency} -t{args.threads} -d{args.duration:g}s"}
    return results


def rows(results: dict[str, Any]) -> list[list[str]]:
    empty, full = results["empty"], results["full"]
    ratio = results.get("full_vs_empty")
    per_cpu = results.get("full_vs_empty_per_cpu")
    check = results["check_ns"]
    return [
        ["signed in, no revocation: requests/s", f"{empty['rps']:.0f}", ""],
        [
            f"signed in, {results['revocations']:,} revocations: requests/s",
            f"{full['rps']:.0f}",
            "",
        ],
        ["ratio, requests/s (same run)", f"{ratio:.3f}" if ratio is not None else "-", ""],
        ["requests per CPU-second, empty / full", _per_cpu(empty) + " / " + _per_cpu(full), ""],
        [
            "ratio, requests per CPU-second",
            f"{per_cpu:.3f}" if per_cpu is not None else "-",
            f">= {TARGET_RATIO}",
        ],
        [
            "the check alone, empty / full",
            f"{check['empty']:.0f} / {check['full']:.0f} ns",
            "",
        ],
        ["revocations read by the service after", f"{results['read_seconds']:.1f} s", "< 5 s"],
    ]


def _per_cpu(result: dict[str, Any]) -> str:
    value = result.get("rps_per_cpu_daemons")
    return f"{value:.0f}" if value else "-"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--revocations", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--tunnels", type=int, default=2, help="connector connections")
    ap.add_argument("--attempts", type=int, default=3, help="repeat disturbed runs up to this")
    harness.add_stack_options(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.duration <= 300 or not 0 < args.revocations <= 1_000_000:
        raise SystemExit("revocation: duration 1..300 s, revocations 1..1,000,000")
    args.latency_duration = args.duration
    results = run(args)
    if args.json:
        print(harness.dump_json(results))
    else:
        print(harness.fmt_table(rows(results), ["revocation", "measured", "target"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
