"""
Sampling profiles of the running daemons with py-spy, and their summary.

    python benchmarks/profiling.py summarize FILE.raw [--top N]

L{Recorder} runs C{py-spy record --format raw} on each daemon for a bounded
time while a benchmark loads it; L{summarize} reads the collapsed stacks and
gives, for each daemon, how busy it was, the functions with the most samples
of their own ("self") and including what they call ("inclusive"), and the
self time grouped by layer (TLS, HTTP/2, twisted.web, logging, ...).

py-spy is optional: C{pip install py-spy} into the virtualenv.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

#: Layers, by the file of the innermost Python frame of a sample.
LAYERS: list[tuple[str, str]] = [
    (r"^OpenSSL/|^twisted/protocols/tls\.py|^twisted/internet/_sslverify", "TLS (pyOpenSSL)"),
    (r"^(h2|hpack|hyperframe|priority)/", "HTTP/2 (h2, hpack, hyperframe)"),
    (r"^twisted/web/_http2\.py", "twisted.web HTTP/2 server"),
    (r"^twisted/web/(_newclient|client)\.py", "twisted.web client (Agent)"),
    (r"^twisted/web/", "twisted.web HTTP/1.1 server"),
    (r"^twisted/logger/|^twisted/python/log\.py|^logging/|^string\.py", "logging"),
    (r"^twisted/internet/defer\.py", "Deferreds"),
    (r"^twisted/internet/endpoints\.py|^idna/|^twisted/internet/_idna", "endpoints + IDNA"),
    (r"^twisted/internet/|^twisted/python/", "reactor + socket I/O"),
    (r"^appproxy/", "appproxy"),
]


def _which_py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def available() -> bool:
    return _which_py_spy() is not None


class Recorder:
    """
    C{with Recorder({"service": pid, ...}, seconds, out_dir):} samples each
    process for C{seconds} (py-spy stops by itself; we wait at most a little
    longer and then kill it).
    """

    def __init__(self, pids: dict[str, int], seconds: float, out_dir: Path, rate: int = 250):
        self.pids = pids
        self.seconds = seconds
        self.out_dir = out_dir
        self.rate = rate
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: dict[str, Path] = {}

    def __enter__(self) -> Recorder:
        exe = _which_py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            path = self.out_dir / f"{name}.raw"
            argv = [exe, "record", "--pid", str(pid), "--duration", str(int(self.seconds))]
            argv += ["--rate", str(self.rate), "--format", "raw", "--output", str(path)]
            argv += ["--nonblocking"]
            self.procs[name] = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self.files[name] = path
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            try:
                proc.wait(self.seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()

    def summaries(self, top: int = 15) -> dict[str, dict[str, Any]]:
        out = {}
        for name, path in self.files.items():
            if path.exists():
                out[name] = summarize(path, top, expected=self.rate * int(self.seconds))
        return out


def _frame(text: str) -> tuple[str, str]:
    """C{"func (path:line)"} -> C{("func", "short/path.py")}."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", text)
    if not m:
        return text, ""
    func, path = m.groups()
    path = re.sub(r".*site-packages/", "", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    return func, path


def _layer(path: str) -> str:
    for pattern, name in LAYERS:
        if re.search(pattern, path):
            return name
    return "other (stdlib, ...)"


def summarize(path: Path, top: int = 15, expected: int | None = None) -> dict[str, Any]:
    """
    Summarize a py-spy raw file (one C{frame;frame;... COUNT} line per stack,
    outermost first).
    """
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        func, file = frames[-1]
        self_time[f"{func} ({file})"] += count
        layers[_layer(file)] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            inclusive[name] += count

    def share(counter: collections.Counter[str], n: int) -> list[tuple[str, float]]:
        return (
            [(k, round(100.0 * v / total, 1)) for k, v in counter.most_common(n)] if total else []
        )

    # Inclusive entries that are only the reactor's plumbing say little.
    plumbing = re.compile(
        r"^(<module>|run|runApp|runReactorWithLogging|callWithLogger|callWithContext|"
        r"\w*ApplicationRunner\.\w+|ReactorBase\.\w+|EPollReactor\.doPoll|"
        r"\w*ContextTracker\.callWithContext|_PollLikeMixin\._doReadOrWrite) "
    )
    useful = collections.Counter({k: v for k, v in inclusive.items() if not plumbing.match(k)})
    return {
        "samples": total,
        "busy": round(total / expected, 2) if expected else None,
        "self": share(self_time, top),
        "inclusive": share(useful, top * 2),
        "layers": share(layers, len(LAYERS) + 1),
    }


def format_summary(name: str, summary: dict[str, Any], top: int = 15) -> str:
    lines = [f"== {name}: {summary['samples']} samples"]
    if summary.get("busy") is not None:
        lines[0] += f" (busy {100 * summary['busy']:.0f}% of the sampled time)"
    lines.append("  self time by layer:")
    lines += [f"    {pct:5.1f}%  {layer}" for layer, pct in summary["layers"]]
    lines.append("  top functions, self:")
    lines += [f"    {pct:5.1f}%  {func}" for func, pct in summary["self"][:top]]
    lines.append("  top functions, inclusive:")
    lines += [f"    {pct:5.1f}%  {func}" for func, pct in summary["inclusive"][: top * 2]]
    return "\n".join(lines)


def callgrind_counts(pids: dict[str, int], out_dir: Path, run: Any) -> dict[str, int]:
    """
    Instructions each daemon (running under callgrind: see
    C{harness.StackOptions.callgrind}) executes during C{run()}: counters
    zeroed before, dumped after (C{callgrind_control}).
    """
    for pid in pids.values():
        subprocess.run(
            ["callgrind_control", "-z", str(pid)], check=True, capture_output=True, timeout=120
        )
    run()
    counts: dict[str, int] = {}
    for name, pid in pids.items():
        before = set(out_dir.glob(f"callgrind.{pid}*"))
        subprocess.run(
            ["callgrind_control", "-d", str(pid)], check=True, capture_output=True, timeout=120
        )
        dumps = sorted(set(out_dir.glob(f"callgrind.{pid}*")) - before) or sorted(before)
        for line in dumps[-1].read_text(errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                counts[name] = int(line.split()[1])
                break
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarize py-spy raw profiles.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize")
    s.add_argument("files", nargs="+", type=Path)
    s.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    for path in args.files:
        print(format_summary(path.name, summarize(path, args.top), args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
