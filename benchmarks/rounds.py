"""
Loads compared as ratios, run in interleaved rounds.

A ratio of two figures measured a minute apart moves with whatever the
machine did in that minute: on a shared 2-core guest the same program's
requests per CPU-second vary by up to 15% between runs minutes apart, and
so did the ratio to the naive tunnel when each ran once, one after the
other.  Here every load of a group runs once per round, a round's runs
back to back, the order rotated from one round to the next (so that no
load always runs first, after the warm-up, or last); each load's figures
are then its rounds' together (requests over the sum of seconds and of CPU
seconds), and each ratio is also given per round, so that its spread shows
how far one figure can be trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from harness import Stack, least_disturbed

__all__ = ["interleaved", "merge", "round_ratios", "spread"]

Measure = Callable[[], dict[str, Any]]


def interleaved(
    measures: Mapping[str, Measure], rounds: int, stack: Stack | None, attempts: int
) -> dict[str, dict[str, Any]]:
    """
    Run each of C{measures} once per round for C{rounds} rounds, the order
    rotated by one each round; each run is L{least_disturbed}.  Each load's
    runs merged (L{merge}).
    """
    keys = list(measures)
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    for n in range(rounds):
        shift = n % len(keys)
        for key in keys[shift:] + keys[:shift]:
            runs[key].append(least_disturbed(measures[key], stack, attempts))
    return {key: merge(runs[key]) for key in keys}


def _count(run: Mapping[str, Any]) -> int:
    """The requests a run completed: h2load's succeeded ones, or wrk's."""
    return int(run["succeeded"] if "succeeded" in run else run["requests"])


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    One load's runs as one: requests, seconds, CPU seconds (per process)
    and errors added up, the rates made from the sums; C{other_cores} the
    most any run saw; C{rounds}, each run's requests per CPU-second of the
    daemons, in order.
    """
    if not runs:
        raise ValueError("no runs to merge")
    out = dict(runs[0])
    requests = sum(_count(run) for run in runs)
    seconds = sum(float(run["seconds"]) for run in runs)
    daemon_cpu = sum(float(run["daemon_cpu_s"]) for run in runs)
    cpu: dict[str, float] = {}
    for run in runs:
        for name, value in run["cpu"].items():
            cpu[name] = round(cpu.get(name, 0.0) + value, 3)
    out["succeeded" if "succeeded" in out else "requests"] = requests
    for key in ("requests", "failed", "errors", "non_2xx"):
        if key in out:
            out[key] = sum(int(run.get(key, 0)) for run in runs)
    out["seconds"] = round(seconds, 3)
    out["rps"] = round(requests / seconds, 2) if seconds > 0 else 0.0
    out["cpu"] = cpu
    out["daemon_cpu_s"] = round(daemon_cpu, 3)
    out["rps_per_cpu_daemons"] = round(requests / daemon_cpu, 1) if daemon_cpu > 0 else None
    if "rps_per_cpu_backend" in out:
        backend = cpu.get("backend", 0.0)
        out["rps_per_cpu_backend"] = round(requests / backend, 1) if backend > 0 else None
    out["other_cores"] = max(float(run.get("other_cores", 0.0)) for run in runs)
    out["attempts"] = sum(int(run.get("attempts", 1)) for run in runs)
    out["rounds"] = [run["rps_per_cpu_daemons"] for run in runs]
    return out


def round_ratios(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[float]:
    """C{a}'s requests per CPU-second over C{b}'s, round by round (both L{merge}d)."""
    return [
        round(x / y, 3)
        for x, y in zip(a.get("rounds", ()), b.get("rounds", ()), strict=False)
        if x and y
    ]


def spread(ratios: list[float]) -> str:
    """C{ratios} as text: C{"rounds 0.95-1.08"}, or nothing for fewer than two."""
    if len(ratios) < 2:
        return ""
    return f"rounds {min(ratios):.2f}-{max(ratios):.2f}"
