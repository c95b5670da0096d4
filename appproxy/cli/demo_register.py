"""
The demo's connector registers as any connector on another host does: once
the service listens, the demo makes a one-time enrolment token in the
service's state database (as C{appproxy connectors token create} does) and
runs C{appproxy-connector register} with it, pinned to the demo CA's
fingerprint.  The connector's key is made by the registration, in the
connector's directory; no key is copied.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from appproxy.daemon import pki
from appproxy.state.connectors import create_token
from appproxy.state.schema import BUSY_TIMEOUT_MS, DATABASE_NAME, configure_connection

__all__ = ["ACTOR", "RegistrationFailed", "register_connector"]

#: Who made the enrolment token, in the audit log.
ACTOR = "appproxy demo"
#: Seconds the one-time token is valid.
TOKEN_TTL = 300.0
#: Seconds between polls.
POLL = 0.05


class RegistrationFailed(Exception):
    """The demo's connector could not register; told in one line."""


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_listening(port: int, deadline: float, stop: Callable[[], str | None]) -> None:
    """Until the service listens on C{port}, unless C{stop()} names a reason to give up."""
    while not _listening(port):
        reason = stop()
        if reason is not None:
            raise RegistrationFailed(reason)
        if time.monotonic() > deadline:
            raise RegistrationFailed(f"the service's tunnel port {port} did not open in time")
        time.sleep(POLL)


def _token(database: Path, group: str) -> str:
    """A one-time enrolment token for C{group}, made in the service's database."""
    connection = sqlite3.connect(str(database), timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        configure_connection(connection)
        return create_token(
            connection, group=group, ttl=TOKEN_TTL, uses=1, actor=ACTOR, now=time.time()
        )
    finally:
        connection.close()


def _command() -> list[str]:
    """C{appproxy-connector} from this interpreter's environment."""
    script = Path(sys.executable).parent / "appproxy-connector"
    if script.exists():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "from appproxy.cli.connector_main import main; raise SystemExit(main())",
    ]


def register_connector(
    state_dir: Path,
    *,
    tunnel_host: str,
    tunnel_port: int,
    group: str,
    timeout: float,
    stop: Callable[[], str | None],
) -> str:
    """
    Register the demo's connector into C{state_dir/connector} once the
    service (its state in C{state_dir/state}) listens on C{tunnel_port}.

    @param stop: why to give up now (the service ended, a signal), or L{None}.
    @return: what the registration printed.
    @raise RegistrationFailed: with the reason in one line.
    """
    deadline = time.monotonic() + timeout
    _wait_listening(tunnel_port, deadline, stop)
    fingerprint = pki.ca_fingerprint((state_dir / "ca.pem").read_bytes())
    token_file = state_dir / "enrolment-token"
    token_file.unlink(missing_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_token(state_dir / "state" / DATABASE_NAME, group) + "\n")
    connector_dir = state_dir / "connector"
    argv = [
        *_command(),
        "register",
        *("--service", f"https://{tunnel_host}:{tunnel_port}"),
        *("--address", "127.0.0.1"),
        *("--ca-fingerprint", fingerprint),
        *("--state-dir", str(connector_dir)),
        *("--token-file", str(token_file)),
        *("--group", group),
    ]
    if connector_dir.exists():
        argv.append("--force")  # what an interrupted registration left
    try:
        return _run(argv, state_dir, deadline, stop)
    finally:
        token_file.unlink(missing_ok=True)


def _run(argv: list[str], cwd: Path, deadline: float, stop: Callable[[], str | None]) -> str:
    """Run the registration, bounded in time; its output, or why it failed."""
    with subprocess.Popen(  # noqa: S603
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        while True:
            try:
                output, _ = process.communicate(timeout=POLL)
                break
            except subprocess.TimeoutExpired:
                reason = stop()
                if reason is None and time.monotonic() > deadline:
                    reason = "appproxy-connector register did not finish in time"
                if reason is not None:
                    process.kill()
                    process.communicate()
                    raise RegistrationFailed(reason) from None
    if process.returncode != 0:
        lines = output.strip().splitlines() or [f"exit status {process.returncode}"]
        raise RegistrationFailed(f"appproxy-connector register failed: {lines[-1]}")
    return output
