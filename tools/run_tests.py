"""
Run the trial suite and end with one line "N passed, N failed" (trial's own
summary stays above it).  Exit status is trial's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys


def summarise(output: str) -> tuple[int, int, int]:
    """
    Read trial's closing "PASSED (...)" / "FAILED (...)" line.
    """
    matches = list(re.finditer(r"^(PASSED|FAILED) \(([^)]*)\)\s*$", output, re.M))
    if not matches:
        return 0, 0, 0
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", matches[-1].group(2))}
    passed = counts.get("successes", 0)
    failed = counts.get("failures", 0) + counts.get("errors", 0)
    failed += counts.get("unexpectedSuccesses", 0)
    skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
    return passed, failed, skipped


def main() -> int:
    jobs = os.environ.get("TRIAL_JOBS", "2")
    args = [sys.executable, "-m", "twisted.trial", f"--jobs={jobs}", *(sys.argv[1:] or ["tests"])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # noqa: S603
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    code = proc.wait()
    passed, failed, skipped = summarise("".join(lines))
    if passed + failed == 0 and code == 0:
        code = 1
    if code and failed == 0:
        failed = 1  # trial failed without a summary (import error, crash)
    line = f"{passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    print(line, flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
