"""
Heap reports on demand, for finding where a daemon's memory goes (the soak
benchmark, C{benchmarks/soak.py}).  Off by default, and then nothing is
installed: no signal handler, no tracing, no cost.

Switched on by the environment at start:

  - C{APPPROXY_HEAP_DIR=DIR}: on C{SIGUSR2} the daemon appends one JSON line
    to C{DIR/heap-NAME-PID.jsonl}: its RSS, the blocks Python has allocated
    (C{sys.getallocatedblocks}), the C allocator's view (glibc
    C{mallinfo2}: arena bytes in use and free), and the daemon's own counts
    (tunnel connections and streams, given as C{probes}).
  - C{APPPROXY_HEAP_COLLECT=1} as well: each report first runs a full
    garbage collection and says what it freed (objects, blocks, RSS), to tell
    garbage not yet collected from memory still in use.
  - C{APPPROXY_HEAP_TYPES=1} as well: each report also counts the objects
    the garbage collector tracks, by type (the 30 most numerous), walking
    them all: a fraction of a second of the reactor's time per report.
  - C{APPPROXY_HEAP_TRACEMALLOC=FRAMES} as well: Python allocations are
    traced from the start (C{tracemalloc}, FRAMES frames deep), and each
    report also holds the 25 allocation sites that grew most since the first
    report (size and count), so a quiet daemon's report and one under load
    compare directly.  Tracing costs CPU and memory: for diagnosis only.

The report is made in the reactor thread (C{call}, e.g.
C{reactor.callFromThread}), so the counts read consistent state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tracemalloc

__all__ = [
    "ENV_COLLECT",
    "ENV_DIR",
    "ENV_TRACE",
    "ENV_TYPES",
    "HeapReporter",
    "install",
    "tunnel_counts",
]

ENV_DIR = "APPPROXY_HEAP_DIR"
ENV_TRACE = "APPPROXY_HEAP_TRACEMALLOC"
ENV_TYPES = "APPPROXY_HEAP_TYPES"
ENV_COLLECT = "APPPROXY_HEAP_COLLECT"
#: Object types listed in each report with L{ENV_TYPES}.
TOP_TYPES = 30
#: Allocation sites listed in each traced report.
TOP_SITES = 25
#: Deepest traceback traced (tracemalloc's cost grows with it).
MAX_FRAMES = 16


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> dict[str, int]:
    """glibc's heap figures in KiB (empty where C{mallinfo2} is missing)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        call = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    call.restype = _MallInfo2
    info = call()
    return {
        "arena_kib": info.arena // 1024,
        "mmap_kib": info.hblkhd // 1024,
        "in_use_kib": info.uordblks // 1024,
        "free_kib": info.fordblks // 1024,
    }


def _rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _site(stat: tracemalloc.StatisticDiff) -> str:
    frame = stat.traceback[0]
    name = frame.filename
    for marker in ("site-packages/", "lib/python"):
        if marker in name:
            name = name.split(marker, 1)[1]
            break
    return f"{name}:{frame.lineno}"


class HeapReporter:
    """
    Appends a heap report to C{path} on each L{report}.

    @param probes: the daemon's own counts (e.g. tunnel streams), read at
        each report.
    @param trace: whether C{tracemalloc} runs (then each report lists the
        allocation sites grown most since the first).
    """

    def __init__(
        self,
        path: Path,
        probes: Callable[[], Mapping[str, int]],
        trace: bool,
        types: bool = False,
        collect: bool = False,
    ) -> None:
        self.path = path
        self.probes = probes
        self.trace = trace
        self.types = types
        self.collect = collect
        self.reports = 0
        self._first: tracemalloc.Snapshot | None = None

    def report(self) -> dict[str, Any]:
        """Write one report (one JSON line) and return it."""
        self.reports += 1
        collected: dict[str, int] = {}
        if self.collect:
            blocks, rss = sys.getallocatedblocks(), _rss_kib()
            collected["objects"] = gc.collect()
            collected["blocks"] = blocks - sys.getallocatedblocks()
            collected["rss_kib"] = rss - _rss_kib()
        out: dict[str, Any] = {
            "n": self.reports,
            "time": round(time.time(), 3),
            "rss_kib": _rss_kib(),
            "python_blocks": sys.getallocatedblocks(),
            "malloc": _mallinfo(),
            "gc_counts": list(gc.get_count()),
            "gc_collections": [g["collections"] for g in gc.get_stats()],
        }
        if collected:
            out["collected"] = collected
        try:
            out["probes"] = dict(self.probes())
        except Exception as e:  # a probe must not stop the report
            out["probes"] = {"error": repr(e)}
        if self.types:
            counts = Counter(type(o).__qualname__ for o in gc.get_objects())
            out["types"] = counts.most_common(TOP_TYPES)
        if self.trace:
            out.update(self._traced())
        with open(self.path, "a") as f:
            f.write(json.dumps(out, sort_keys=True) + "\n")
        return out

    def _traced(self) -> dict[str, Any]:
        """The traced memory, and the sites grown most since the first report."""
        import tracemalloc

        out: dict[str, Any] = {}
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            out["traced_kib"] = current // 1024
            out["traced_peak_kib"] = peak // 1024
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            if self._first is None:
                self._first = snapshot
            diffs = snapshot.compare_to(self._first, "lineno")
            out["grown"] = [
                [_site(d), d.size_diff // 1024, d.count_diff] for d in diffs[:TOP_SITES]
            ]
        return out


def tunnel_counts(protocols: Iterable[Any]) -> dict[str, int]:
    """Tunnel connections and the streams open on them, for the probes."""
    connected = list(protocols)
    return {
        "tunnel_connections": len(connected),
        "tunnel_streams": sum(len(p.streams) for p in connected),
    }


def install(
    name: str,
    probes: Callable[[], Mapping[str, int]],
    call: Callable[[Callable[[], object]], object],
    environ: Mapping[str, str] = os.environ,
) -> HeapReporter | None:
    """
    Install the C{SIGUSR2} heap report if the environment asks for it
    (L{ENV_DIR}); otherwise do nothing and return L{None}.

    @param name: the daemon (C{"service"}), part of the report file's name.
    @param call: runs the report where the daemon's state may be read
        (C{reactor.callFromThread}).
    """
    directory = environ.get(ENV_DIR)
    if not directory:
        return None
    frames = environ.get(ENV_TRACE, "")
    trace = frames.isdigit() and int(frames) > 0
    if trace:
        # Imported only when asked for: a daemon that does not trace
        # does not carry the module (docs/performance.md, its memory).
        import tracemalloc

        if not tracemalloc.is_tracing():
            tracemalloc.start(min(int(frames), MAX_FRAMES))
    path = Path(directory) / f"heap-{name}-{os.getpid()}.jsonl"
    reporter = HeapReporter(
        path,
        probes,
        trace,
        types=environ.get(ENV_TYPES, "") == "1",
        collect=environ.get(ENV_COLLECT, "") == "1",
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        call(reporter.report)

    signal.signal(signal.SIGUSR2, on_signal)
    return reporter
