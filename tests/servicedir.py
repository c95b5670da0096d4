"""
A service directory as C{appproxy init} makes it, for the tests of the
commands that work on one (C{users}, C{keys}, C{logs}, C{policy}).
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

from appproxy.cli.main import main
from appproxy.config import ServiceConfig, load_service_config

__all__ = ["init_service_dir", "service_config"]


def init_service_dir(path: Path, *extra: str) -> Path:
    """
    Run C{appproxy init --state-dir PATH} in this process (its output
    dropped); return C{path}, absolute.  Its metrics listener is off unless
    C{extra} sets one (a fixed port would clash between services).
    """
    path = path.absolute()
    if not any(arg.startswith("--metrics-listen") for arg in extra):
        extra = (*extra, "--metrics-listen=none")
    with redirect_stdout(io.StringIO()):
        code = main(["init", "--state-dir", str(path), "--domain", "example.test", *extra])
    if code != 0:
        raise AssertionError(f"appproxy init --state-dir {path} failed with status {code}")
    return path


def service_config(directory: Path) -> ServiceConfig:
    """The configuration the service started on C{directory} would read."""
    return load_service_config(directory / "service.toml")
