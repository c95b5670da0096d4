"""
The demo's child processes and the signals that stop them.

Each child (the echo app, the service, the connector) runs in a process
group of its own: a Ctrl-C at the terminal reaches only the demo, which then
stops each child exactly once (SIGTERM to its group, the last started
first), waits a bounded time and kills what is left (SIGKILL).  On Linux a
child is also told to stop if the demo itself dies without cleaning up
(C{PR_SET_PDEATHSIG}).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType

__all__ = ["Children", "StopSignals", "port_in_use"]

#: Seconds children get to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 20.0
#: Seconds between polls.
POLL = 0.05

_PR_SET_PDEATHSIG = 1


class StopSignals:
    """
    Remembers SIGINT, SIGTERM and SIGHUP instead of letting them interrupt
    the program (no C{KeyboardInterrupt}, no traceback).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> None:
        for number in self.SIGNALS:
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.received = number

    def __bool__(self) -> bool:
        return self.received is not None


def _parent_death_signal() -> Callable[[], None] | None:
    """A C{preexec_fn} that asks Linux to SIGTERM the child when the demo dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


class Children:
    """Named child processes, each the leader of its own process group."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self._preexec = _parent_death_signal()

    def start(self, name: str, argv: list[str]) -> None:
        self.running[name] = subprocess.Popen(  # noqa: S603
            argv, cwd=self.cwd, process_group=0, preexec_fn=self._preexec
        )

    def exited(self) -> list[tuple[str, int]]:
        """The children that have ended, with their exit statuses."""
        return [
            (name, code)
            for name, child in self.running.items()
            if (code := child.poll()) is not None
        ]

    def stop(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        """
        Stop the children in the reverse order of their start (the connector
        drains before the service goes): SIGTERM to each one's group, then
        wait for it; after C{timeout} seconds in all, SIGKILL what is left.

        @return: the names of the children that had to be killed.
        """
        deadline = time.monotonic() + timeout
        for child in reversed(list(self.running.values())):
            _signal_group(child, signal.SIGTERM)
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(POLL)
        killed = [name for name, child in self.running.items() if child.poll() is None]
        for child in self.running.values():
            _signal_group(child, signal.SIGKILL)
            child.wait()
        return killed


def _signal_group(child: subprocess.Popen[bytes], number: int) -> None:
    if child.poll() is None:
        try:
            os.killpg(child.pid, number)
        except ProcessLookupError:
            pass


def port_in_use(ports: Iterable[int], host: str = "127.0.0.1") -> int | None:
    """
    The first of C{ports} that cannot be bound on C{host} (as Twisted binds:
    with C{SO_REUSEADDR}, so a closed connection's TIME_WAIT does not
    count), or C{None}.
    """
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    return port
                raise
    return None
