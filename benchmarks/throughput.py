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
  - Both again through the naive tunnel of C{../shared/bench/tunnel_baseline.py}
    (asyncio + h2 + stdlib ssl, the same shape without identity; see
    L{naive}), in front of the same backend, started beside the daemons:
    appproxy's requests/s and requests per CPU-second (service + connector
    against edge + connector) are reported as ratios to it, measured in the
    same run.  C{--no-naive} leaves it out.

wrk runs on the same 2 cores as the daemons, so the requests/s it reports
include its own CPU use; requests per CPU-second does not depend on it.
C{--profile DIR} adds a run under py-spy and prints where each daemon spends
its time.  C{--callgrind N} measures only this instead: the service and the
connector run under valgrind's callgrind, and N GETs in turn on one
keep-alive connection give the instructions each daemon executes per request
(steady where CPU seconds are not, on a shared machine), to the passthrough
app and, signed in (a session cookie), to the app that signs users in.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import h2clients
import harness
import naive
import rounds
from harness import CpuMeter, Stack, StackOptions, least_disturbed, wait_quiet, wrk

#: Targets from the design (full path, 2 cores).
TARGET_RPS = 2500
TARGET_RPS_PER_CPU = 2000
#: The performance issue's target: requests per CPU-second against the naive tunnel.
TARGET_VS_NAIVE = 1.25


def _load(
    stack: Stack,
    url: str,
    host: str | None,
    args: argparse.Namespace,
    *,
    latency: bool,
    headers: tuple[str, ...] = (),
    seconds: float | None = None,
) -> dict[str, Any]:
    """One wrk run (C{seconds}: instead of the duration the arguments give)."""
    if latency:
        c, t, duration = 1, 1, args.latency_duration
    else:
        c, t, duration = args.concurrency, args.threads, args.duration
    seconds = duration if seconds is None else seconds
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
    if args.naive_url and url.split("/")[2] == args.naive_url.split("/")[2]:
        daemons = cpu["naive_edge"] + cpu["naive_connector"]
    else:
        daemons = cpu["service"] + cpu["connector"]
    out["daemon_cpu_s"] = round(daemons, 3)
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


#: Clients at once for the concurrent callgrind count (each its own connection).
CALLGRIND_CLIENTS = 16


def run_callgrind(args: argparse.Namespace) -> dict[str, Any]:
    """
    Instructions per request of each daemon (see the module doc): N GETs in
    turn on one connection (c1), N more signed in (C{signed_in_c1}), then N
    more from L{CALLGRIND_CLIENTS}
    clients at once, each with a fixed count (no request cut off by the end
    of a timed run, as wrk's would be) on a new connection of its own: the
    concurrent figure includes their TLS handshakes (use N >> 16).
    """
    from concurrent.futures import ThreadPoolExecutor

    import profiling

    n = args.callgrind
    per_client = max(1, n // CALLGRIND_CLIENTS)
    options = StackOptions(
        connections=args.tunnels,
        capacity=args.capacity,
        callgrind=True,
        keep=args.keep,
        whatif=tuple(w for w in args.whatif.split(",") if w),
    )
    results: dict[str, Any] = {"benchmark": "throughput-callgrind", "whatif": list(options.whatif)}
    with Stack(options) as stack:
        harness.https_gets(stack, "/1k", 20)  # warm up: pooled connections, code paths

        def sequential() -> int:
            return harness.https_gets(stack, "/1k", n)

        def signed_in() -> int:
            cookie = {"Cookie": stack.session_cookie()}
            return harness.https_gets(stack, "/1k", n, host=stack.auth_host_header, headers=cookie)

        def concurrent() -> int:
            with ThreadPoolExecutor(CALLGRIND_CLIENTS) as pool:
                futures = [
                    pool.submit(harness.https_gets, stack, "/1k", per_client)
                    for _ in range(CALLGRIND_CLIENTS)
                ]
                return sum(f.result() for f in futures)

        for key, load, expected in (
            ("c1", sequential, n),
            ("signed_in_c1", signed_in, n),
            (f"c{CALLGRIND_CLIENTS}", concurrent, per_client * CALLGRIND_CLIENTS),
        ):
            answered: list[int] = []
            counts = profiling.callgrind_counts(
                stack.daemons, stack.tmp, lambda f=load, a=answered: a.append(f())
            )
            if answered != [expected]:
                raise SystemExit(f"throughput: {answered} of {expected} requests answered 200")
            results[key] = {
                "requests": expected,
                "instructions_per_request": {
                    name: round(count / expected) for name, count in counts.items()
                },
            }
    return results


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
        args.naive_url = None if args.no_naive else naive.start(stack, Path(args.baseline))
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
        if args.naive_url:
            naive_url = f"{args.naive_url}/1k"
            wrk(naive_url, connections=args.concurrency, threads=args.threads, seconds=2)
        time.sleep(0.5)
        # The loads whose figures are compared as ratios, in interleaved
        # rounds (see rounds.py): passthrough, signed in (a valid session
        # cookie on every request: decrypted, policy evaluated, headers
        # injected), the naive tunnel, and h2load's HTTP/1.1 and HTTP/2
        # clients (see h2clients).
        seconds = args.duration / args.rounds
        compared: dict[str, rounds.Measure] = {
            "proxy": lambda: _load(stack, proxy_url, host, args, latency=False, seconds=seconds),
            "signed_in": lambda: _load(
                stack, proxy_url, auth_host, args, latency=False, headers=cookie, seconds=seconds
            ),
        }
        if args.naive_url:
            compared["naive"] = lambda: _load(
                stack, naive_url, None, args, latency=False, seconds=seconds
            )
        for key, h1 in (("h1_clients", True), ("h2_clients", False)):
            compared[key] = functools.partial(
                h2clients.measure,
                stack,
                proxy_url,
                host,
                clients=args.concurrency,
                seconds=seconds,
                h1=h1,
            )
        results.update(rounds.interleaved(compared, args.rounds, stack, args.attempts))
        runs: list[tuple[str, str, str | None, bool, tuple[str, ...]]] = [
            ("proxy_c1", proxy_url, host, True, ()),
            ("signed_in_c1", proxy_url, auth_host, True, cookie),
            ("direct", direct_url, None, False, ()),
            ("direct_c1", direct_url, None, True, ()),
        ]
        if args.naive_url:
            runs += [("naive_c1", naive_url, None, True, ())]
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
        if args.naive_url:
            results["vs_naive"] = vs_naive(results)
        results["targets"] = targets(results)
        results["memory_kib"] = stack.memory()
        if args.profile:
            results["profile"] = profile(stack, proxy_url, host, args)
    results["config"] = {
        "wrk": f"-c{args.concurrency} -t{args.threads}",
        "compared_loads": f"{args.rounds} interleaved rounds of {args.duration / args.rounds:g} s",
        "latency_wrk": f"-c1 -t1 -d{args.latency_duration:g}s --latency",
        "connector_connections": args.tunnels,
        "connector_capacity": args.capacity,
    }
    return results


def vs_naive(results: dict[str, Any]) -> dict[str, Any]:
    """appproxy's figures as ratios to the naive tunnel's, from the same run."""
    n, out = results["naive"], {}
    for key in ("proxy", "signed_in"):
        r = results[key]
        if n.get("rps"):
            out[f"{key}_rps"] = round(r["rps"] / n["rps"], 3)
        if n.get("rps_per_cpu_daemons") and r.get("rps_per_cpu_daemons"):
            out[f"{key}_rps_per_cpu"] = round(
                r["rps_per_cpu_daemons"] / n["rps_per_cpu_daemons"], 3
            )
        out[f"{key}_rps_per_cpu_rounds"] = rounds.round_ratios(r, n)
    n1, p1 = results["naive_c1"], results["proxy_c1"]
    out["proxy_c1_p50_ms_minus_naive"] = round(p1["latency_ms"]["p50"] - n1["latency_ms"]["p50"], 3)
    return out


#: The performance issue's targets measured here, each a figure from this run.
TARGET_C1_ADDED_MS = 1.0
TARGET_SIGNED_IN_SHARE = 0.90


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The performance issue's targets that this run measures, each as a ratio
    or a difference between two figures of the same run: measure, value,
    target and whether it is met.
    """
    out: list[dict[str, Any]] = []

    def add(
        measure: str,
        value: float | None,
        target: str,
        met: bool | None,
        per_round: list[float] | None = None,
    ) -> None:
        out.append(
            {
                "measure": measure,
                "value": value,
                "target": target,
                "met": met,
                "rounds": per_round or [],
            }
        )

    v = results.get("vs_naive")
    if v is not None:
        ratio = v.get("proxy_rps_per_cpu")
        add(
            "requests per CPU-second, appproxy / naive tunnel",
            ratio,
            f">= {TARGET_VS_NAIVE}",
            None if ratio is None else ratio >= TARGET_VS_NAIVE,
            v.get("proxy_rps_per_cpu_rounds"),
        )
    p1, d1 = results["proxy_c1"], results["direct_c1"]
    added = round(p1["latency_ms"]["p50"] - d1["latency_ms"]["p50"], 3)
    add(
        "c1 p50 latency added over direct (ms)",
        added,
        f"<= {TARGET_C1_ADDED_MS}",
        added <= TARGET_C1_ADDED_MS,
    )
    plain, signed = results["proxy"], results["signed_in"]
    share = None
    if plain.get("rps_per_cpu_daemons") and signed.get("rps_per_cpu_daemons"):
        share = round(signed["rps_per_cpu_daemons"] / plain["rps_per_cpu_daemons"], 3)
    add(
        "signed in / passthrough, requests per CPU-second",
        share,
        f">= {TARGET_SIGNED_IN_SHARE}",
        None if share is None else share >= TARGET_SIGNED_IN_SHARE,
        rounds.round_ratios(signed, plain),
    )
    h2 = h2clients.ratio(results)
    add(
        "HTTP/2 / HTTP/1.1 clients (h2load), requests per CPU-second",
        h2,
        f">= {h2clients.TARGET_H2_VS_H1}",
        None if h2 is None else h2 >= h2clients.TARGET_H2_VS_H1,
        rounds.round_ratios(results.get("h2_clients", {}), results.get("h1_clients", {})),
    )
    return out


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    """L{targets} as table rows: measure, value (with its rounds' spread), target, verdict."""
    rows = []
    for t in results.get("targets", []):
        value = "-" if t["value"] is None else f"{t['value']:g}"
        if rounds.spread(t.get("rounds", [])):
            value += f" ({rounds.spread(t['rounds'])})"
        verdict = "-" if t["met"] is None else ("met" if t["met"] else "NOT MET")
        rows.append([t["measure"], value, t["target"], verdict])
    return rows


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
        *naive_rows(results),
        *h2_rows(results),
    ]


def h2_rows(results: dict[str, Any]) -> list[list[str]]:
    """Rows for the h2load runs: HTTP/1.1 and HTTP/2 clients of the same client program."""
    out = []
    for key, label in (("h1_clients", "HTTP/1.1"), ("h2_clients", "HTTP/2")):
        r = results.get(key)
        if r is None:
            continue
        out.append(
            [
                f"h2load {label} clients: requests/s / per CPU-second",
                f"{r['rps']:.0f} / {r['rps_per_cpu_daemons']:.0f}",
                "",
                "",
            ]
        )
    return out


def naive_rows(results: dict[str, Any]) -> list[list[str]]:
    """Rows for the naive tunnel and appproxy's ratios to it."""
    if "vs_naive" not in results:
        return []
    n, n1, v = results["naive"], results["naive_c1"], results["vs_naive"]
    return [
        [
            "naive tunnel: requests/s c50 / per CPU-s (edge+connector)",
            f"{n['rps']:.0f} / {n['rps_per_cpu_daemons']:.0f}",
            "",
            "",
        ],
        [
            "naive tunnel: latency p50 / p99 (c1)",
            f"{n1['latency_ms']['p50']:.2f} / {n1['latency_ms']['p99']:.2f} ms",
            "",
            "",
        ],
        [
            "appproxy / naive: requests/s c50",
            f"{v['proxy_rps']:.2f}x (signed in {v['signed_in_rps']:.2f}x)",
            "",
            "",
        ],
        [
            "appproxy / naive: requests per CPU-second",
            f"{v['proxy_rps_per_cpu']:.2f}x (signed in {v['signed_in_rps_per_cpu']:.2f}x)",
            "",
            f">= {TARGET_VS_NAIVE}x",
        ],
    ]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--duration",
        type=float,
        default=12.0,
        help="seconds of each c50 load, all rounds together (the direct run: all in one)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds of the loads compared as ratios (see rounds.py)",
    )
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
    ap.add_argument(
        "--baseline",
        default=str(naive.DEFAULT_BASELINE),
        help="the naive tunnel to run beside appproxy (tunnel_baseline.py)",
    )
    ap.add_argument("--no-naive", action="store_true", help="do not run the naive tunnel")
    ap.add_argument(
        "--callgrind",
        type=int,
        metavar="N",
        help="only count instructions per request under callgrind, over N requests",
    )
    harness.add_stack_options(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    harness.QUIET_WAIT = max(0.0, args.quiet_wait)
    if not 1 <= args.duration <= 300 or not 1 <= args.latency_duration <= 300:
        raise SystemExit("throughput: durations must be 1..300 seconds")
    if not 1 <= args.rounds <= 10 or args.duration / args.rounds < 1:
        raise SystemExit("throughput: --rounds must be 1..10, with at least 1 s per round")
    if args.callgrind:
        print(harness.dump_json(run_callgrind(args)))
        return 0
    results = run(args)
    if args.json:
        print(harness.dump_json(results))
    else:
        print(harness.fmt_table(rows(results), ["throughput", "full path", "direct", "target"]))
        print(harness.fmt_table(target_rows(results), ["target (same run)", "value", "target", ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
