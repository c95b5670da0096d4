"""
Python calls per request in each daemon, counted by cProfile: deterministic
where CPU time is not.

    python benchmarks/calls.py [--requests N] [--top N] [--match REGEX]

The daemons run with the C{cprofile} observer of C{whatif/sitecustomize.py};
after a warm-up, cProfile is switched on in both (C{SIGUSR2}), N GETs of
C{/1k} are made in turn on one keep-alive connection, and it is switched off
again.  Prints, for each daemon, the calls per request in all, by layer
(L{profiling.LAYERS}, by the called function's file; a builtin by its
caller's) and the functions called
most (C{--match}: only those whose file or name matches).
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import re
import signal
import time
from pathlib import Path
from typing import Any

import harness
import profiling
from harness import Stack, StackOptions


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _layer(filename: str) -> str:
    for pattern, name in profiling.LAYERS:
        if re.search(pattern, filename):
            return name
    return "builtins (C)" if filename == "~" else "other"


def count(stats_file: Path, requests: int, top: int, match: str | None) -> dict[str, Any]:
    """Calls per request in all, by layer, and the functions called most."""
    stats: Any = pstats.Stats(str(stats_file)).stats
    layers: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    total = 0
    for (filename, line, name), (_cc, ncalls, _tt, _ct, callers) in stats.items():
        short = _short(filename)
        total += ncalls
        if short == "~":
            # A builtin counts in the layer of the code that called it.
            for (caller_file, _line, _name), (_ccc, caller_calls, *_) in callers.items():
                layers[_layer(_short(caller_file))] += caller_calls
        else:
            layers[_layer(short)] += ncalls
        label = name if short == "~" else f"{short}:{line}({name})"
        if match is None or re.search(match, label):
            functions[label] += ncalls
    return {
        "calls_per_request": round(total / requests, 1),
        "layers": {k: round(v / requests, 1) for k, v in layers.most_common()},
        "functions": {k: round(v / requests, 2) for k, v in functions.most_common(top)},
    }


def run(requests: int, top: int, match: str | None) -> dict[str, Any]:
    options = StackOptions(whatif=("cprofile",))
    with Stack(options) as stack:
        harness.https_gets(stack, "/1k", 50)  # warm up: pooled connections, code paths
        time.sleep(0.5)
        for pid in stack.daemons.values():
            os.kill(pid, signal.SIGUSR2)
        time.sleep(0.5)
        answered = harness.https_gets(stack, "/1k", requests)
        time.sleep(0.5)
        for pid in stack.daemons.values():
            os.kill(pid, signal.SIGUSR2)
        if answered != requests:
            raise SystemExit(f"calls: {answered} of {requests} requests answered 200")
        results = {}
        for name, pid in stack.daemons.items():
            path = stack.tmp / f"cprofile.{pid}"
            deadline = time.monotonic() + 30
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            results[name] = count(path, requests, top, match)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--match", help="only functions whose file:line(name) matches this")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = run(args.requests, args.top, args.match)
    if args.json:
        print(harness.dump_json(results))
        return 0
    for name, figures in results.items():
        print(f"== {name}: {figures['calls_per_request']} calls per request")
        for layer, n in figures["layers"].items():
            print(f"  {n:8.1f}  {layer}")
        print("  -- functions")
        for label, n in figures["functions"].items():
            print(f"  {n:8.2f}  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
