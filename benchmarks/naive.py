"""
The naive tunnel of C{../shared/bench/tunnel_baseline.py} (asyncio, h2,
stdlib ssl: appproxy's shape without identity), started beside a running
L{harness.Stack} and in front of the same backend, so that one benchmark
run measures both and reports appproxy's figures as ratios to it.

Its two processes join the stack's (C{naive_edge}, C{naive_connector}): the
stack's CPU meter counts them, its liveness check watches them, and it
stops them with the rest.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from harness import PYTHON, Stack, free_port

#: Where the baseline lives, from a checkout at /work/main: /work/shared/bench.
DEFAULT_BASELINE = Path(__file__).resolve().parents[2] / "shared" / "bench" / "tunnel_baseline.py"
#: Seconds the baseline may take to listen and connect its tunnel.
START_TIMEOUT = 20.0
NAMES = ("naive_edge", "naive_connector")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> None:
    """A CA, the edge's server certificate and the connector's client one."""
    d = str(directory)
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-days", "2", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-subj", "/CN=bench-ca"),
    )
    for name, cn, ext in (
        ("srv", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("cli", "bench-connector", "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{name}.ext").write_text(ext)
        _openssl(
            *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj", f"/CN={cn}"),
        )
        _openssl(
            *("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem"),
            *("-CAkey", f"{d}/ca.key", "-CAcreateserial", "-days", "2"),
            *("-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.pem"),
        )


def _tunnel_established(pid: int, port: int) -> bool:
    """The edge holds an established connection on its tunnel port."""
    wanted = f":{port:04X}"
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            lines = f.readlines()[1:]
    except OSError:
        return False
    return any(line.split()[1].endswith(wanted) and line.split()[3] == "01" for line in lines)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(stack: Stack, baseline: Path = DEFAULT_BASELINE) -> str:
    """
    Start the naive edge and connector for C{stack}'s backend; return the
    URL of the edge (C{https://127.0.0.1:PORT}).
    """
    if not baseline.exists():
        raise SystemExit(f"throughput: no naive tunnel at {baseline} (see --baseline)")
    directory = stack.tmp / "naive"
    directory.mkdir()
    make_certificates(directory)
    listen, tunnel = free_port(), free_port()
    while tunnel == listen:
        tunnel = free_port()
    d = str(directory)
    stack._spawn(
        "naive_edge",
        [
            *(PYTHON, str(baseline), "edge", "--listen", f"127.0.0.1:{listen}"),
            *("--tunnel-listen", f"127.0.0.1:{tunnel}", "--cert", f"{d}/srv.pem"),
            *("--key", f"{d}/srv.key", "--ca", f"{d}/ca.pem"),
        ],
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not _listening(tunnel):
        if time.monotonic() > deadline:
            raise RuntimeError("the naive edge did not listen")
        stack.check_alive()
        time.sleep(0.1)
    stack._spawn(
        "naive_connector",
        [
            *(PYTHON, str(baseline), "connector", "--edge", f"127.0.0.1:{tunnel}"),
            *("--backend", f"127.0.0.1:{stack.backend_port}", "--cert", f"{d}/cli.pem"),
            *("--key", f"{d}/cli.key", "--ca", f"{d}/ca.pem"),
        ],
    )
    while not _tunnel_established(stack.pid("naive_edge"), tunnel):
        if time.monotonic() > deadline:
            raise RuntimeError("the naive connector did not connect")
        stack.check_alive()
        time.sleep(0.1)
    return f"https://127.0.0.1:{listen}"
