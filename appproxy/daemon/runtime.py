"""
What both daemons share: loading the configuration at start (one clear line
and exit status 78 on a bad file), systemd notifications and log output.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from twisted.logger import ILogObserver, jsonFileLogObserver

from appproxy.config.loader import ConfigError
from appproxy.daemon import sdnotify

#: sysexits.h EX_CONFIG; the systemd units do not restart on it.
EX_CONFIG = 78

T = TypeVar("T")


def load_or_exit(loader: Callable[[Path], T], path: str, stderr: IO[str] | None = None) -> T:
    """
    Load a configuration file, or stop the daemon with one line that names
    the file, the key and the problem.
    """
    try:
        return loader(Path(path))
    except ConfigError as e:
        (stderr or sys.stderr).write(f"appproxy: configuration error: {e}\n")
        raise SystemExit(EX_CONFIG) from None


def notify(state: bytes) -> None:
    sdnotify.notify(state)


def use_log_format(parent: Any, log_format: str) -> None:
    """
    Give twistd's application the configured log observer: twistd asks the
    application for an C{ILogObserver} when it starts logging (unless
    C{--logger} was given, which wins).
    """
    if log_format == "json" and hasattr(parent, "setComponent"):
        if parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, json_observer())


def on_sighup(reactor: Any, reload: Callable[[], object]) -> None:
    """
    Run C{reload} in the reactor thread on SIGHUP (C{systemctl reload}).
    """
    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))


def json_observer() -> ILogObserver:
    """
    A log observer writing one JSON object per line to standard output, for
    C{twistd --logger appproxy.daemon.runtime.json_observer}.
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
