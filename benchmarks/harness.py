"""
The benchmark harness: the whole appproxy path on loopback, as real daemons.

    client --TLS--> service (twistd appproxy) --HTTP/2 tunnel, mutual TLS-->
        connector (twistd appproxy-connector) --HTTP/1.1--> backend.py

L{Stack} creates a temporary state directory with C{appproxy init}, picks free
loopback ports (binding port 0), starts L{backend <benchmarks.backend>}, the
service and the connector as C{twistd --nodaemon --pidfile=} subprocesses with
their logs going to files in the temporary directory, waits until a request
goes through the whole path, and stops everything again (SIGTERM, then SIGKILL
after a few seconds) when the C{with} block ends, also on an error, Ctrl-C or
SIGTERM.  Every wait is bounded.

Also here: per-process CPU time and memory from C{/proc}, and runners for
C{wrk} and C{curl} that parse their output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
DOMAIN = "bench.localhost"
APP = "bench"
AUTH_APP = "benchauth"
#: The interpreter of the virtualenv the package is installed in.
PYTHON = os.environ.get("APPPROXY_BENCH_PYTHON", sys.executable)
#: twistd with that interpreter.  (Not "python -m twisted": that is the newer
#: "twist" runner, which has no --nodaemon/--pidfile options.)
TWISTD = [PYTHON, "-c", "from twisted.scripts.twistd import run; run()"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Upper bound for waiting on anything to start.
START_TIMEOUT = 60.0
#: valgrind's callgrind, counting instructions (see L{StackOptions.callgrind}).
CALLGRIND = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--quiet"]
#: Seconds a daemon gets between SIGTERM and SIGKILL.
STOP_GRACE = 5.0
#: Safety net: the backend stops itself after this long whatever happens.
BACKEND_MAX_SECONDS = 3600.0


# ---------------------------------------------------------------------------
# /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (utime + stime)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces; fields resume after ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """C{VmRSS} (current) and C{VmHWM} (peak) of a process, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def add_stack_options(ap: argparse.ArgumentParser) -> None:
    """
    The options every benchmark that starts a L{Stack} takes.
    """
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ap.add_argument(
        "--whatif",
        default="",
        metavar="PATCH,...",
        help="experiment: run the daemons with patches from whatif/sitecustomize.py",
    )
    ap.add_argument("--profile", metavar="DIR", help="also profile the daemons with py-spy")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=QUIET_WAIT,
        metavar="SECONDS",
        help="wait at most this long for other processes to calm down before a run",
    )


def disk_write_bytes(pid: int) -> int:
    """
    Bytes the process caused to be sent to storage (C{write_bytes} in
    C{/proc/PID/io}).
    """
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    return memory_kib(pid)["VmRSS"]


def hwm_kib(pid: int) -> int:
    return memory_kib(pid)["VmHWM"]


def reset_peak_rss(pid: int) -> bool:
    """
    Reset a process's C{VmHWM} to its current RSS (C{echo 5 >
    /proc/PID/clear_refs}, Linux 4.0+).  Returns whether it worked.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class PeakSampler:
    """
    Samples the RSS of some processes every C{interval} seconds in a thread
    and keeps the largest seen (a cross-check of C{VmHWM}).
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.02) -> None:
        self.pids = pids
        self.interval = interval
        self.peak: dict[str, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, KeyError):
                    self.peak[name] = max(self.peak[name], rss_kib(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _proc_stat() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, steal / CLK_TCK


def system_busy_seconds() -> float:
    """
    CPU seconds the whole machine spent busy so far (all cores; not idle or
    iowait).  Includes steal: time the hypervisor gave our vCPUs to others.
    """
    return _proc_stat()[0]


def _client_cpu() -> float:
    """CPU of this process and of its reaped children (wrk, curl)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class CpuMeter:
    """
    CPU used between C{start()} and C{stop()}: per daemon, by the client side
    (this process and the wrk/curl it ran) and by everything else on the
    machine ("other": other people's processes, plus kernel time that no
    process is charged for, such as loopback softirqs).
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._procs: dict[str, float] = {}
        self._system = self._steal = self._client = self._wall = 0.0

    def start(self) -> CpuMeter:
        self._procs = self.stack.cpu()
        self._system, self._steal = _proc_stat()
        self._client = _client_cpu()
        self._wall = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        procs = self.stack.cpu()
        out = {name: round(procs[name] - self._procs[name], 3) for name in procs}
        out["client"] = round(_client_cpu() - self._client, 3)
        system, steal = _proc_stat()
        out["other"] = round(max(0.0, system - self._system - sum(out.values())), 3)
        out["steal"] = round(steal - self._steal, 3)
        out["wall"] = round(time.monotonic() - self._wall, 3)
        return out


def other_cores(cpu: dict[str, float]) -> float:
    """Average number of cores that others used during a L{CpuMeter} run."""
    return cpu["other"] / cpu["wall"] if cpu.get("wall") else 0.0


#: A run during which others used more than this many cores is repeated.
MAX_OTHER_CORES = 0.3


def least_disturbed(
    measure: Callable[[], dict[str, Any]], stack: Stack | None, attempts: int = 3
) -> dict[str, Any]:
    """
    Run C{measure} (which returns a dict with a L{CpuMeter} result under
    C{"cpu"}) up to C{attempts} times until others used at most
    L{MAX_OTHER_CORES} during it; return the least disturbed run, with
    C{"other_cores"} and C{"attempts"} added.
    """
    best: dict[str, Any] | None = None
    for attempt in range(1, attempts + 1):
        result = measure()
        result["other_cores"] = round(other_cores(result["cpu"]), 2)
        result["attempts"] = attempt
        if best is None or result["other_cores"] < best["other_cores"]:
            best = result
        if result["other_cores"] <= MAX_OTHER_CORES:
            break
        print(
            f"harness: other processes used {result['other_cores']:.2f} cores during the run; "
            + ("repeating it" if attempt < attempts else "keeping the least disturbed run"),
            file=sys.stderr,
        )
        if attempt < attempts:
            wait_quiet(stack, max_wait=min(60.0, QUIET_WAIT))
    assert best is not None
    return best


def background_load(seconds: float = 1.0, exclude: tuple[int, ...] = ()) -> float:
    """
    Cores kept busy by others over C{seconds}: the machine's busy time minus
    that of the processes in C{exclude} and of this process.
    """
    before_sys = system_busy_seconds()
    before = {pid: cpu_seconds(pid) for pid in exclude}
    before_self = _client_cpu()
    time.sleep(seconds)
    ours = sum(cpu_seconds(pid) - before[pid] for pid in exclude) + _client_cpu() - before_self
    return max(0.0, (system_busy_seconds() - before_sys - ours) / seconds)


#: Seconds L{wait_quiet} waits at most for a quiet machine (C{--quiet-wait}).
QUIET_WAIT = 120.0


def wait_quiet(
    stack: Stack | None = None, threshold: float = 0.15, max_wait: float | None = None
) -> float:
    """
    Wait (at most C{max_wait} seconds) until other processes use less than
    C{threshold} of a core, so they do not skew the figures; return the last
    background load seen (in cores), which the reports show.
    """
    exclude = tuple(stack.procs[n].pid for n in stack.procs) if stack is not None else ()
    if max_wait is None:
        max_wait = QUIET_WAIT
    deadline = time.monotonic() + max_wait
    load = background_load(1.0, exclude)
    warned = False
    while load > threshold and time.monotonic() < deadline:
        if not warned:
            print(
                f"harness: the machine is busy ({load:.2f} cores used by other processes); "
                f"waiting up to {max_wait:g}s for it to calm down",
                file=sys.stderr,
            )
            warned = True
        load = background_load(1.0, exclude)
    if load > threshold:
        print(f"harness: still busy ({load:.2f} cores); measuring anyway", file=sys.stderr)
    return round(load, 2)


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards C{wanted}, within the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------
# signals: make SIGTERM unwind like Ctrl-C so that every `with Stack()` cleans up


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGHUP, _terminate)


# ---------------------------------------------------------------------------
# the stack


@dataclass
class StackOptions:
    #: connector: tunnel connections and streams per connection.
    connections: int = 2
    capacity: int = 200
    #: the app's backend_timeout (seconds).
    backend_timeout: int = 120
    #: service queue_timeout (seconds).
    queue_timeout: int = 30
    #: keep the temporary directory (logs) afterwards.
    keep: bool = False
    #: experiments only: patches from whatif/sitecustomize.py for the daemons.
    whatif: tuple[str, ...] = ()
    #: run the service and the connector under valgrind's callgrind (counting
    #: instructions; about 50 times slower), for L{profiling.callgrind_counts}.
    callgrind: bool = False


@dataclass
class Stack:
    """
    The service, a connector and the benchmark backend, running.  Use as a
    context manager.
    """

    options: StackOptions = field(default_factory=StackOptions)
    tmp: Path = field(init=False)
    public_port: int = field(init=False, default=0)
    tunnel_port: int = field(init=False, default=0)
    backend_port: int = field(init=False, default=0)
    procs: dict[str, subprocess.Popen[bytes]] = field(init=False, default_factory=dict)
    _owns_tmp: bool = field(init=False, default=False)

    # -- addresses ----------------------------------------------------------

    @property
    def app_host(self) -> str:
        return f"{APP}.{DOMAIN}"

    @property
    def host_header(self) -> str:
        """The Host the service routes by (the external URL's netloc)."""
        return f"{self.app_host}:{self.public_port}"

    @property
    def auth_host_header(self) -> str:
        """The Host of the app that signs users in."""
        return f"{AUTH_APP}.{DOMAIN}:{self.public_port}"

    def session_cookie(self, lifetime: int = 3600) -> str:
        """
        A valid session cookie (C{name=value}) for the signing-in app, made
        with the service's own key ring, as a signed-in browser would hold.
        """
        from appproxy.access.cookie import SessionCookieCodec
        from appproxy.access.keyring_file import load_keyring
        from appproxy.access.session import Session

        codec = SessionCookieCodec(load_keyring(self.tmp / "state" / "state" / "session-keys.json"))
        now = int(time.time())
        session = Session(
            app=AUTH_APP,
            user="bench.user@example.com",
            subject="7f9c2a1e-bench",
            issuer=f"https://login.{DOMAIN}:{self.public_port}",
            name="Bench User",
            email="bench.user@example.com",
            groups=("staff", "engineering", "vpn-users", "wiki-editors"),
            amr=("pwd",),
            auth_time=now,
            issued_at=now,
            expires_at=now + lifetime,
        )
        name = f"__Host-appproxy-{AUTH_APP}"
        return f"{name}={codec.encode(session, name)}"

    @property
    def public_url(self) -> str:
        """What C{wrk} dials (with C{-H 'Host: ...'}): loopback, by address."""
        return f"https://127.0.0.1:{self.public_port}"

    @property
    def external_url(self) -> str:
        """What C{curl --resolve} dials: the app's real name."""
        return f"https://{self.host_header}"

    @property
    def resolve(self) -> str:
        return f"{self.app_host}:{self.public_port}:127.0.0.1"

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}"

    @property
    def ca(self) -> Path:
        return self.tmp / "state" / "ca.pem"

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    @property
    def daemons(self) -> dict[str, int]:
        return {"service": self.pid("service"), "connector": self.pid("connector")}

    # -- life ---------------------------------------------------------------

    def __enter__(self) -> Stack:
        install_signal_handlers()
        self.tmp = Path(tempfile.mkdtemp(prefix="appproxy-bench-"))
        self._owns_tmp = True
        try:
            self._start()
        except BaseException:
            self._dump_logs()
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._owns_tmp:
            self._owns_tmp = False
            if self.options.keep:
                print(f"harness: kept {self.tmp}", file=sys.stderr)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _start(self) -> None:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.public_port, self.tunnel_port, backend_hint = sorted(ports)
        self._init()
        self.backend_port = self._start_backend(backend_hint)
        self._patch_configs()
        state = self.tmp / "state"
        twistd = [*TWISTD, "--nodaemon", "--pidfile="]
        if self.options.callgrind:
            twistd = [*CALLGRIND, f"--callgrind-out-file={self.tmp}/callgrind.%p", *twistd]
        svc = str(state / "service.toml")
        con = str(state / "connector" / "connector.toml")
        self._spawn(
            "service",
            [*twistd, f"--logfile={self.tmp / 'service.log'}", "appproxy", "--config", svc],
        )
        # The connector dials at once and backs off if nobody answers.
        self._wait_listening()
        self._spawn(
            "connector",
            [
                *twistd,
                f"--logfile={self.tmp / 'connector.log'}",
                "appproxy-connector",
                "--config",
                con,
            ],
        )
        self._wait_ready()

    def _init(self) -> None:
        state = self.tmp / "state"
        argv = [PYTHON, "-m", "appproxy", "init", "--state-dir", str(state)]
        argv += ["--domain", DOMAIN, "--app-name", APP]
        argv += ["--port", str(self.public_port), "--tunnel-port", str(self.tunnel_port)]
        # The backend's port is only known once it listens; patched below.
        argv += ["--internal-url", "http://127.0.0.1:1/"]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)

    def _patch_configs(self) -> None:
        o = self.options
        state = self.tmp / "state"
        service = state / "service.toml"
        text = service.read_text()
        text = _sub(text, r'^internal_url = ".*"$', f'internal_url = "{self.backend_url}/"')
        text = _sub(text, r"^queue_timeout = .*$", f"queue_timeout = {o.queue_timeout}")
        text = _sub(
            text, r'^# backend_timeout = "default"$', f"backend_timeout = {o.backend_timeout}"
        )
        # The first app is published without sign-in (the plain data path);
        # a second app on the same backend signs users in.
        text = _sub(text, r'^pre_authentication = "oidc"$', 'pre_authentication = "passthrough"')
        # Metrics on a free port, not the default 9464: another stack on the
        # machine (a benchmark, the tests) may hold that one.
        text = text.replace(
            '"tcp:9464:interface=127.0.0.1"', f'"tcp:{free_port()}:interface=127.0.0.1"'
        )
        # The abuse limits would refuse the load generator (one address):
        # the budgets off, the connection caps out of the way (idle_memory.py
        # holds 1000 connections that have sent no request yet).
        text += """
[limits]
anonymous_rate = 0
signin_rate = 0
signed_in_rate = 0
connections_per_address = 1000000
connections_total = 10000000
client_header_connections_per_address = 100000
"""
        text += f"""
[[apps]]
name = "{AUTH_APP}"
external_url = "https://{self.auth_host_header}/"
internal_url = "{self.backend_url}/"
connector_group = "default"
backend_timeout = {o.backend_timeout}

[apps.headers]
X-Remote-User = "preferred_username"
X-Remote-Name = "name"
X-Remote-Email = "email"
X-Remote-Groups = "groups"
"""
        service.write_text(text)
        connector = state / "connector" / "connector.toml"
        text = connector.read_text()
        text = _sub(text, r"^connections = \d+$", f"connections = {o.connections}")
        text = _sub(text, r"^capacity = \d+$", f"capacity = {o.capacity}")
        connector.write_text(text)

    def _spawn(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{name}.out", "wb")
        env = dict(os.environ)
        if self.options.whatif and name != "backend":
            env["APPPROXY_BENCH_WHATIF"] = ",".join(self.options.whatif)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(BENCH_DIR / "whatif"), *filter(None, [env.get("PYTHONPATH")])]
            )
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=kwargs.pop("stdout", out),
                stderr=out,
                # Its own session: a Ctrl-C in the terminal reaches only us,
                # and we stop the children in order.
                start_new_session=True,
                env=env,
                **kwargs,
            )
        finally:
            out.close()
        self.procs[name] = proc
        return proc

    def _start_backend(self, port: int) -> int:
        argv = [PYTHON, str(BENCH_DIR / "backend.py"), "--port", str(port)]
        argv += ["--max-seconds", str(BACKEND_MAX_SECONDS)]
        proc = self._spawn("backend", argv, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith(b"ready ") or proc.poll() is not None:
                break
        if not line.startswith(b"ready "):
            raise RuntimeError(f"the backend did not start: {line!r}")
        return int(line.split()[1])

    def _sockets(self, port: int, state: str) -> int:
        """Loopback TCP sockets on local C{port} in C{state} (01 established, 0A listen)."""
        count = 0
        port_hex = f":{port:04X}"
        with contextlib.suppress(OSError):
            with open(f"/proc/{self.pid('service')}/net/tcp") as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if parts[1].endswith(port_hex) and parts[3] == state:
                        count += 1
        return count

    def _tunnels_up(self) -> int:
        """Established tunnel connections, counted on the service's side."""
        return self._sockets(self.tunnel_port, "01")

    @property
    def start_timeout(self) -> float:
        return START_TIMEOUT * (6 if self.options.callgrind else 1)

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            self._check_started()
            if self._sockets(self.tunnel_port, "0A") and self._sockets(self.public_port, "0A"):
                return
            time.sleep(0.05)
        raise RuntimeError("the service did not start listening")

    def _check_started(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            self._check_started()
            if self._tunnels_up() >= self.options.connections:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the connector's tunnel connections did not come up")
        # Then a request through the whole path (the settings exchange on each
        # tunnel connection follows the TLS handshake closely).
        last: object = None
        while time.monotonic() < deadline:
            try:
                status, body = https_get(self, "/1k", timeout=10)
                if status == 200 and len(body) == 1024:
                    time.sleep(0.3)
                    return
                last = status
            except OSError as e:
                last = e
            time.sleep(0.2)
        raise RuntimeError(f"no answer through the full path: {last}")

    def stop(self) -> None:
        procs = list(self.procs.items())
        for _name, proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for _name, proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()

    def _dump_logs(self) -> None:
        for name in ("service.log", "connector.log", "service.out", "connector.out", "backend.out"):
            path = self.tmp / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {name} (last lines) ---", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)

    # -- measurements -------------------------------------------------------

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(proc.pid) for name, proc in self.procs.items()}

    def memory(self) -> dict[str, dict[str, int]]:
        return {name: memory_kib(proc.pid) for name, proc in self.procs.items()}

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                self._dump_logs()
                raise RuntimeError(f"{name} exited with status {proc.returncode}")


def _sub(text: str, pattern: str, replacement: str) -> str:
    new, n = re.subn(pattern, replacement, text, count=1, flags=re.M)
    if n != 1:
        raise RuntimeError(f"appproxy init output changed: no line matches {pattern!r}")
    return new


# ---------------------------------------------------------------------------
# clients


def client_tls_context(stack: Stack, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(stack.ca))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def https_gets(
    stack: Stack,
    path: str,
    count: int,
    timeout: float = 60.0,
    *,
    host: str | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    """
    C{count} HTTP/1.1 GETs in turn on one keep-alive connection through the
    service, to C{host} (the passthrough app's by default) with C{headers};
    the number answered 200.
    """
    import http.client

    host = host or stack.host_header
    ctx = client_tls_context(stack, ["http/1.1"])
    sock = socket.create_connection(("127.0.0.1", stack.public_port), timeout=timeout)
    conn = http.client.HTTPConnection("127.0.0.1", stack.public_port, timeout=timeout)
    conn.sock = ctx.wrap_socket(sock, server_hostname=host.rpartition(":")[0])
    ok = 0
    try:
        for _ in range(count):
            conn.request("GET", path, headers={"Host": host, **(headers or {})})
            response = conn.getresponse()
            response.read()
            ok += response.status == 200
    finally:
        conn.close()
    return ok


def https_get(stack: Stack, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.1 GET through the service (certificate verified)."""
    import http.client

    ctx = client_tls_context(stack, ["http/1.1"])
    sock = socket.create_connection(("127.0.0.1", stack.public_port), timeout=timeout)
    # Dial 127.0.0.1, verify the certificate against the app's name.
    conn = http.client.HTTPConnection("127.0.0.1", stack.public_port, timeout=timeout)
    conn.sock = ctx.wrap_socket(sock, server_hostname=stack.app_host)
    try:
        conn.request("GET", path, headers={"Host": stack.host_header})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    errors: int
    non_2xx: int
    latency_ms: dict[str, float]
    output: str

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d.pop("output")
        return d


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(
    url: str,
    *,
    connections: int,
    threads: int,
    seconds: float,
    host: str | None = None,
    latency: bool = False,
    headers: tuple[str, ...] = (),
) -> WrkResult:
    """Run C{wrk} (bounded by its duration, plus a margin) and parse its report."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    argv = ["wrk", f"-c{connections}", f"-t{threads}", f"-d{seconds:g}s", "--timeout", "10s"]
    if latency:
        argv.append("--latency")
    if host:
        argv += ["-H", f"Host: {host}"]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    out = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or out}")
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or not rps:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = 0
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if e:
        errors = sum(int(x) for x in e.groups())
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latencies: dict[str, float] = {}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M):
        latencies[f"p{pct}"] = _ms(value)
    return WrkResult(
        requests=int(m.group(1)),
        seconds=_ms(m.group(2) + m.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        errors=errors,
        non_2xx=int(non.group(1)) if non else 0,
        latency_ms=latencies,
        output=out,
    )


@dataclass
class CurlResult:
    status: int
    size_download: int
    size_upload: int
    seconds: float
    http_version: str
    body: str


def curl(args: list[str], timeout: float = 300.0) -> CurlResult:
    """Run C{curl} with C{args} (bounded) and parse C{--write-out}."""
    marker = "\n@@curl@@"
    fmt = marker + "%{http_code} %{size_download} %{size_upload} %{time_total} %{http_version}"
    argv = ["curl", "-sS", "--max-time", str(int(timeout)), "-w", fmt, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed ({proc.returncode}): {proc.stderr.strip()}")
    body, _, tail = proc.stdout.rpartition(marker)
    status, down, up, total, version = tail.split()
    return CurlResult(int(status), int(down), int(up), float(total), version, body)


def fmt_table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with columns aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(out)


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """C{with timed() as t: ...} then C{t[0]} is the elapsed wall time."""
    out: list[float] = []
    start = time.monotonic()
    try:
        yield out
    finally:
        out.append(time.monotonic() - start)


if __name__ == "__main__":
    # Smoke test: start the stack, make one request, show the processes.
    with Stack(StackOptions(keep="--keep" in sys.argv)) as s:
        status, body = https_get(s, "/1k")
        print(f"GET {s.external_url}/1k -> {status}, {len(body)} bytes")
        for name, mem in s.memory().items():
            print(f"{name}: pid {s.pid(name)}, RSS {mem['VmRSS']} KiB, peak {mem['VmHWM']} KiB")
