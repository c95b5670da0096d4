"""
Directories a systemd unit can see, for the tests of C{appproxy install} and
of what C{appproxy init} prints about it.

C{appproxy install} refuses paths under C{/tmp}, C{/var/tmp}, C{/home} and
C{/root} (the units hide them), and a checkout, so trial's temporary
directory, may well be under one of them.  These tests therefore work in a
fresh directory under C{/srv}, removed when the test ends.  Creating it needs
root, as the install tests do (C{.ci/run} runs as root).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

#: Where the directories go: seen by a unit, and not a system directory.
BASE = Path("/srv")


def visible_directory(testcase: SynchronousTestCase) -> Path:
    """A new empty directory under L{BASE}, every user may search, removed after."""
    try:
        BASE.mkdir(exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="appproxy-test-", dir=BASE))
    except PermissionError:
        testcase.fail(f"cannot create a directory under {BASE}: run the tests as root, as CI does")
    path.chmod(0o755)
    testcase.addCleanup(shutil.rmtree, path, True)
    return path
