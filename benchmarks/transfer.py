"""
Bulk transfer through the whole path: a 100 MiB download and a 100 MiB upload,
with the peak RSS of each daemon, beside the backend measured directly.

    python benchmarks/transfer.py [--runs 3] [--protocols http1.1,http2] [--json]
                                  [--profile DIR]

  - download: C{curl -k --resolve APP:PORT:127.0.0.1 https://APP:PORT/100m -o /dev/null}
  - upload: C{curl -k ... -X POST -T FILE https://APP:PORT/upload} (a 100 MiB file
    generated in the temporary directory; curl streams it with Content-Length,
    C{Expect: 100-continue} switched off); the backend counts the bytes and the
    count is checked.

MB/s is decimal (10^6 bytes per second) over curl's total time for the
transfer.  Each transfer runs C{--runs} times; the median speed is reported
and the peak RSS is the largest over the runs.  Peak RSS is the kernel's
C{VmHWM}, reset (C{/proc/PID/clear_refs}) before each transfer, and
cross-checked by sampling C{VmRSS} every 20 ms.

The client (curl) talks HTTP/1.1 or HTTP/2 to the service (C{--protocols});
the tunnel is HTTP/2 either way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import (
    CpuMeter,
    PeakSampler,
    Stack,
    StackOptions,
    curl,
    least_disturbed,
    reset_peak_rss,
    wait_quiet,
)

SIZE = 100 * 1024 * 1024
TARGET_MBPS = 190.0
TARGET_PEAK_RSS_MIB = 64.0
PROTOCOL_FLAGS = {"http1.1": "--http1.1", "http2": "--http2"}


def make_file(path: Path, size: int = SIZE) -> Path:
    block = bytes(range(256)) * 4096  # 1 MiB
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)])
    return path


def _curl_args(stack: Stack, direction: str, via: str, upload_file: Path) -> list[str]:
    if via == "direct":
        base = stack.backend_url
        args: list[str] = ["--http1.1"]
    else:
        base = stack.external_url
        args = ["-k", "--resolve", stack.resolve, PROTOCOL_FLAGS[via]]
    if direction == "download":
        return [*args, "-o", "/dev/null", f"{base}/bytes/{SIZE}"]
    return [*args, "-X", "POST", "-H", "Expect:", "-T", str(upload_file), f"{base}/upload"]


def one_transfer(stack: Stack, direction: str, via: str, upload_file: Path) -> dict[str, Any]:
    pids = {name: stack.pid(name) for name in ("service", "connector", "backend")}
    written_before = {name: harness.disk_write_bytes(pid) for name, pid in pids.items()}
    for pid in pids.values():
        reset_peak_rss(pid)
    before = {name: harness.memory_kib(pid) for name, pid in pids.items()}
    meter = CpuMeter(stack).start()
    with PeakSampler(pids) as sampler:
        result = curl(_curl_args(stack, direction, via, upload_file), timeout=300)
    cpu = meter.stop()
    stack.check_alive()
    after = {name: harness.memory_kib(pid) for name, pid in pids.items()}
    if result.status != 200:
        raise RuntimeError(f"{direction} via {via}: HTTP {result.status}: {result.body[:200]}")
    if direction == "download" and result.size_download != SIZE:
        raise RuntimeError(f"download via {via}: got {result.size_download} bytes")
    if direction == "upload" and result.body.strip() != str(SIZE):
        raise RuntimeError(f"upload via {via}: backend counted {result.body.strip()!r} bytes")
    peak = {
        # VmHWM after a reset is the peak since; the sampler may catch a higher
        # value only if the reset did not work.
        name: max(after[name]["VmHWM"], sampler.peak[name])
        for name in pids
    }
    return {
        "seconds": result.seconds,
        "mbps": round(SIZE / result.seconds / 1e6, 1),
        "http_version": result.http_version,
        "peak_rss_kib": peak,
        "rss_before_kib": {n: m["VmRSS"] for n, m in before.items()},
        "rss_after_kib": {n: m["VmRSS"] for n, m in after.items()},
        "cpu": cpu,
        # Bytes each process caused to be written to storage (/proc/PID/io):
        # logs only; no body may be spooled to disk.
        "disk_written_bytes": {
            name: harness.disk_write_bytes(pid) - written_before[name] for name, pid in pids.items()
        },
    }


def measure(
    stack: Stack, direction: str, via: str, upload_file: Path, runs: int, attempts: int
) -> dict[str, Any]:
    samples = [
        least_disturbed(lambda: one_transfer(stack, direction, via, upload_file), stack, attempts)
        for _ in range(runs)
    ]
    speeds = [s["mbps"] for s in samples]
    peak = {
        name: max(s["peak_rss_kib"][name] for s in samples)
        for name in ("service", "connector", "backend")
    }
    median = sorted(samples, key=lambda s: s["mbps"])[len(samples) // 2]
    return {
        "mbps": round(statistics.median(speeds), 1),
        "mbps_runs": speeds,
        "http_version": samples[0]["http_version"],
        "peak_rss_kib": peak,
        "cpu_median_run": median["cpu"],
        "other_cores": max(s["other_cores"] for s in samples),
        "disk_written_bytes": {
            name: max(s["disk_written_bytes"][name] for s in samples)
            for name in ("service", "connector", "backend")
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    global SIZE
    SIZE = args.size_mib * 1024 * 1024
    options = StackOptions(
        connections=args.tunnels,
        capacity=args.capacity,
        keep=args.keep,
        whatif=tuple(w for w in args.whatif.split(",") if w),
    )
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    for p in protocols:
        if p not in PROTOCOL_FLAGS:
            raise SystemExit(f"transfer: unknown protocol {p!r} (http1.1, http2)")
    results: dict[str, Any] = {
        "benchmark": "transfer",
        "size_bytes": SIZE,
        "runs": args.runs,
        "whatif": list(options.whatif),
    }
    with Stack(options) as stack:
        upload_file = make_file(stack.tmp / "upload.bin", SIZE)
        results["background_load_cores"] = wait_quiet(stack)
        results["idle_rss_kib"] = {n: m["VmRSS"] for n, m in stack.memory().items()}
        for via in [*protocols, "direct"]:
            for direction in ("download", "upload"):
                results[f"{direction}_{via}"] = measure(
                    stack, direction, via, upload_file, args.runs, args.attempts
                )
        if args.profile:
            results["profile"] = profile(stack, upload_file, protocols[0], args)
    return results


def profile(stack: Stack, upload_file: Path, via: str, args: argparse.Namespace) -> dict[str, Any]:
    import profiling

    if not profiling.available():
        print("transfer: py-spy not installed; no profile", file=sys.stderr)
        return {}
    out: dict[str, Any] = {}
    for direction in ("download", "upload"):
        out_dir = Path(args.profile) / direction
        # Repeat the transfer for the whole sampling window (bounded).
        seconds = 6
        with profiling.Recorder(stack.daemons, seconds, out_dir) as recorder:
            deadline = time.monotonic() + seconds
            for _ in range(20):
                if time.monotonic() >= deadline:
                    break
                curl(_curl_args(stack, direction, via, upload_file), timeout=120)
        out[direction] = summaries = recorder.summaries()
        for name, summary in summaries.items():
            title = f"{name} during {SIZE >> 20} MiB {direction}s ({via})"
            print(profiling.format_summary(title, summary), file=sys.stderr)
    print(f"transfer: raw profiles (collapsed stacks) in {args.profile}", file=sys.stderr)
    return out


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def rows(results: dict[str, Any]) -> list[list[str]]:
    out = []
    vias = [k.split("_", 1)[1] for k in results if k.startswith("download_")]
    for direction in ("download", "upload"):
        direct = results[f"{direction}_direct"]
        for via in vias:
            if via == "direct":
                continue
            r = results[f"{direction}_{via}"]
            peak = r["peak_rss_kib"]
            out.append(
                [
                    f"{SIZE >> 20} MiB {direction}, client {via} (MB/s)",
                    f"{r['mbps']:.0f}",
                    f"{direct['mbps']:.0f}",
                    f">= {TARGET_MBPS:.0f}",
                ]
            )
            out.append(
                [
                    "  peak RSS service / connector (MiB)",
                    f"{_mib(peak['service'])} / {_mib(peak['connector'])}",
                    f"backend {_mib(direct['peak_rss_kib']['backend'])}",
                    f"< {TARGET_PEAK_RSS_MIB:.0f} each",
                ]
            )
            written = r["disk_written_bytes"]
            out.append(
                [
                    "  written to disk service / connector (KiB)",
                    f"{written['service'] / 1024:.0f} / {written['connector'] / 1024:.0f}",
                    "",
                    "logs only",
                ]
            )
            cpu = r["cpu_median_run"]
            out.append(
                [
                    "  CPU s service / connector / curl",
                    f"{cpu['service']:.2f} / {cpu['connector']:.2f} / {cpu['client']:.2f}",
                    f"backend {direct['cpu_median_run']['backend']:.2f}",
                    "",
                ]
            )
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="transfers of each kind (median)")
    ap.add_argument(
        "--size-mib", type=int, default=100, help="size of each transfer in MiB (1024 for 1 GiB)"
    )
    ap.add_argument("--protocols", default="http1.1,http2", help="client protocols: http1.1,http2")
    ap.add_argument("--tunnels", type=int, default=2, help="connector connections")
    ap.add_argument("--capacity", type=int, default=200, help="streams per tunnel connection")
    ap.add_argument("--attempts", type=int, default=2, help="repeats of a disturbed transfer")
    harness.add_stack_options(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.runs <= 20:
        raise SystemExit("transfer: --runs must be 1..20")
    results = run(args)
    if args.json:
        print(harness.dump_json(results))
    else:
        print(harness.fmt_table(rows(results), ["transfer", "full path", "direct", "target"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
