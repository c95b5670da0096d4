"""
HTTP/2 clients against HTTP/1.1 clients, with the same load generator.

The performance issue asks that HTTP/2 clients get within 10% of HTTP/1.1
clients' requests per CPU-second.  wrk speaks only HTTP/1.1, so comparing an
h2load HTTP/2 run with a wrk run would compare two clients as well as two
protocols: both runs here are C{h2load} (C{-m1}: one request at a time per
connection, as a browser's page of small requests is closer to than a deep
pipeline), once over HTTP/2 (ALPN h2) and once with C{--h1}, against the
same service, app and path.  L{throughput} calls L{measure} within its run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from harness import CpuMeter, Stack

#: HTTP/2 clients' requests per CPU-second at least this share of HTTP/1.1's.
TARGET_H2_VS_H1 = 0.90


@dataclass
class H2loadResult:
    requests: int
    succeeded: int
    failed: int
    seconds: float
    rps: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def h2load(
    url: str,
    *,
    clients: int,
    seconds: float,
    authority: str | None = None,
    h1: bool = False,
) -> H2loadResult:
    """Run C{h2load} for C{seconds} (bounded, plus a margin) and parse its report."""
    if shutil.which("h2load") is None:
        raise RuntimeError("h2load is not installed (apt-get install -y nghttp2-client)")
    argv = ["h2load", f"-c{clients}", "-m1", f"-D{seconds:g}", "-t1"]
    if h1:
        argv.append("--h1")
    if authority:
        argv += ["-H", f":authority: {authority}"]
    argv.append(url)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    out = proc.stdout
    done = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", out)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out
    )
    if proc.returncode != 0 or not done or not counts:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stderr or out}")
    unit = {"s": 1.0, "ms": 0.001, "us": 0.000001}.get(done.group(2), 1.0)
    return H2loadResult(
        requests=int(counts.group(3)),
        succeeded=int(counts.group(4)),
        failed=int(counts.group(5)),
        seconds=float(done.group(1)) * unit,
        rps=float(done.group(3)),
    )


def measure(
    stack: Stack, url: str, authority: str, *, clients: int, seconds: float, h1: bool
) -> dict[str, Any]:
    """One h2load run with the daemons' CPU time measured around it."""
    meter = CpuMeter(stack).start()
    result = h2load(url, clients=clients, seconds=seconds, authority=authority, h1=h1)
    cpu = meter.stop()
    stack.check_alive()
    out = result.as_dict()
    out["cpu"] = cpu
    daemons = cpu["service"] + cpu["connector"]
    out["daemon_cpu_s"] = round(daemons, 3)
    out["rps_per_cpu_daemons"] = round(result.succeeded / daemons, 1) if daemons > 0 else None
    out["service_us_per_request"] = (
        round(cpu["service"] / result.succeeded * 1e6, 1) if result.succeeded else None
    )
    return out


def ratio(results: dict[str, Any]) -> float | None:
    """HTTP/2 clients' requests per CPU-second over HTTP/1.1 clients' (same client, same run)."""
    h2, h1 = results.get("h2_clients"), results.get("h1_clients")
    if not h2 or not h1 or not h2.get("rps_per_cpu_daemons") or not h1.get("rps_per_cpu_daemons"):
        return None
    return round(h2["rps_per_cpu_daemons"] / h1["rps_per_cpu_daemons"], 3)
