"""
The daemons as operators run them: C{twistd appproxy} and
C{twistd appproxy-connector} in real subprocesses, configured by the files
C{appproxy init} writes.

Install the package first (C{.venv/bin/pip install -q .}): the subprocesses
run from a directory outside the source tree, so they use the installed code.

About exit statuses after SIGTERM: twistd (and twist) stop the reactor, run
the services' shutdown, log "Server Shut Down." and then re-raise the signal
so that the process is reported as terminated by SIGTERM (a clean stop for
systemd).  A clean stop is therefore exit status 0 or death by SIGTERM after
that last log line; anything else (SIGKILL by the test's timeout, a non-zero
status, a traceback) fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from appproxy.idp.users import add_user
from tests.browser import Browser
from tests.deployment import LoopbackTLS

_REPO = Path(__file__).resolve().parents[1]
_VENV_BIN = _REPO / ".venv" / "bin"
#: The virtualenv the package is installed into (the running one otherwise).
BIN = _VENV_BIN if (_VENV_BIN / "python").exists() else Path(sys.executable).parent
PYTHON = str(BIN / "python")
TWISTD = str(BIN / "twistd")

DOMAIN = "example.test"
APP = "demo"
EX_CONFIG = 78
CONFIG_ERROR = "appproxy: configuration error: "
#: Bound on any single wait for a subprocess.
PROCESS_TIMEOUT = 10.0
#: Bound on the whole "request through service and connector" wait.
END_TO_END_TIMEOUT = 15.0
POLL = 0.05
#: Clean stops (see the module docstring): (exit code, signal).
CLEAN_STOPS = ((0, None), (None, signal.SIGTERM))


def free_ports(count: int) -> list[int]:
    """
    Distinct TCP ports that are free on 127.0.0.1 right now (bound to port
    0 together, then released).
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def subprocess_env(**extra: str) -> dict[str, str]:
    """
    The environment of the daemons: installed code only (no C{PYTHONPATH}
    into the source tree), and never the real systemd's notify socket.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


class Process(protocol.ProcessProtocol):
    """
    A subprocess: its output so far and, once it has ended, its status as
    C{(exit code, signal)}.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.out = bytearray()
        self.err = bytearray()
        self.status: tuple[int | None, int | None] | None = None
        self._waiters: list[Deferred[tuple[int | None, int | None]]] = []

    @property
    def running(self) -> bool:
        return self.status is None

    def output(self) -> str:
        return (bytes(self.out) + bytes(self.err)).decode("utf-8", "replace")

    def stdout(self) -> str:
        return bytes(self.out).decode("utf-8", "replace")

    def stderr(self) -> str:
        return bytes(self.err).decode("utf-8", "replace")

    def describe(self) -> str:
        return (
            f"{self.name}: status {self.status}\n"
            f"--- stdout ---\n{self.stdout()}\n--- stderr ---\n{self.stderr()}"
        )

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        ended: Any = reason.value  # ProcessDone or ProcessTerminated
        self.status = (ended.exitCode, ended.signal)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.status)

    def ended(self, timeout: float = PROCESS_TIMEOUT) -> Deferred[tuple[int | None, int | None]]:
        """
        Fire with the status when the process has ended; fail after
        C{timeout} seconds (the process is killed by the cleanup).
        """
        d: Deferred[tuple[int | None, int | None]] = Deferred()
        if self.status is not None:
            d.callback(self.status)
            return d
        self._waiters.append(d)

        def timed_out(failure: Failure) -> Failure:
            if d in self._waiters:
                self._waiters.remove(d)
            raise AssertionError(f"did not exit within {timeout} s\n{self.describe()}")

        d.addTimeout(timeout, reactor)
        d.addErrback(timed_out)
        return d

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except ProcessExitedAlready:
            pass

    @inlineCallbacks
    def wait_for(self, needle: str, timeout: float = PROCESS_TIMEOUT) -> Any:
        """
        Wait until C{needle} appears in the output; fail if the process
        ends first or after C{timeout} seconds.
        """
        for _ in range(int(timeout / POLL)):
            if needle in self.output():
                return
            if not self.running:
                break
            yield deferLater(reactor, POLL, lambda: None)
        if needle in self.output():
            return
        raise AssertionError(f"{needle!r} not in the output within {timeout} s\n{self.describe()}")


def spawn(testcase: TestCase, name: str, argv: list[str], cwd: Path, **env: str) -> Process:
    """
    Start C{argv}; the test's cleanup kills it if it is still running and
    waits (bounded) for it to end.
    """
    process = Process(name)
    reactor.spawnProcess(process, argv[0], argv, env=subprocess_env(**env), path=str(cwd))

    def reap() -> Deferred[Any] | None:
        if not process.running:
            return None
        process.signal("KILL")
        return process.ended(5.0)

    testcase.addCleanup(reap)
    return process


@inlineCallbacks
def init(testcase: TestCase, *extra: str) -> Any:
    """
    C{python -m appproxy init} into a new directory; return the directory.
    Its metrics listener is off unless C{extra} sets one (a fixed port would
    clash between services).
    """
    if not any(arg.startswith("--metrics-listen") for arg in extra):
        extra = (*extra, "--metrics-listen=none")
    parent = Path(testcase.mktemp()).absolute()
    parent.mkdir(parents=True)
    state = parent / "state"
    process = spawn(
        testcase,
        "appproxy init",
        [PYTHON, "-m", "appproxy", "init", "--state-dir", str(state), "--domain", DOMAIN, *extra],
        parent,
    )
    status = yield process.ended()
    testcase.assertEqual(status, (0, None), process.describe())
    return state


def twistd(testcase: TestCase, plugin: str, config: Path | str, cwd: Path, **env: str) -> Process:
    return spawn(
        testcase,
        f"twistd {plugin}",
        [TWISTD, "--nodaemon", "--pidfile=", plugin, "--config", str(config)],
        cwd,
        **env,
    )


def replace_once(path: Path, old: str, new: str) -> None:
    """Edit a configuration file as text; C{old} must occur exactly once."""
    text = path.read_text()
    if text.count(old) != 1:
        raise AssertionError(f"{old!r} occurs {text.count(old)} times in {path}")
    path.write_text(text.replace(old, new))


def line_with(path: Path, prefix: str) -> str:
    """The one line of a file that starts with C{prefix}."""
    lines = [line for line in path.read_text().splitlines() if line.startswith(prefix)]
    if len(lines) != 1:
        raise AssertionError(f"{len(lines)} lines start with {prefix!r} in {path}")
    return lines[0]


class ConfigErrorTests(TestCase):
    """
    A bad configuration stops the daemon at start: exit status 78 and one
    line on stderr naming the file, the key and the problem; no traceback.
    """

    @inlineCallbacks
    def run_daemon(self, plugin: str, config: Path | str, cwd: Path | None = None) -> Any:
        cwd = cwd if cwd is not None else Path(self.mktemp()).absolute()
        cwd.mkdir(parents=True, exist_ok=True)
        process = twistd(self, plugin, config, cwd)
        yield process.ended()
        return process

    def assertConfigError(self, process: Process, file: Path | str, key: str, problem: str) -> None:
        report = process.describe()
        self.assertEqual(process.status, (EX_CONFIG, None), report)
        self.assertNotIn("Traceback", process.output(), report)
        lines = [line for line in process.stderr().splitlines() if line.strip()]
        self.assertTrue(lines, report)
        last = lines[-1]
        self.assertEqual([line for line in lines if line.startswith(CONFIG_ERROR)], [last], report)
        self.assertNotIn(CONFIG_ERROR, process.stdout(), report)
        where = f"{CONFIG_ERROR}{file}: {key}: " if key else f"{CONFIG_ERROR}{file}: "
        self.assertTrue(last.startswith(where), f"{last!r} does not start with {where!r}")
        self.assertIn(problem, last[len(where) :])

    @inlineCallbacks
    def service_error(self, edit: Any, key: str, problem: str) -> Any:
        state = yield init(self)
        config = state / "service.toml"
        edit(state, config)
        tomllib.loads(config.read_text())  # still valid TOML: the schema is at fault
        process = yield self.run_daemon("appproxy", config)
        self.assertConfigError(process, config, key, problem)

    @inlineCallbacks
    def connector_error(self, edit: Any, key: str, problem: str) -> Any:
        state = yield init(self)
        config = state / "connector" / "connector.toml"
        edit(state, config)
        tomllib.loads(config.read_text())
        process = yield self.run_daemon("appproxy-connector", config)
        self.assertConfigError(process, config, key, problem)

    def test_missing_key(self) -> Any:
        def edit(state: Path, config: Path) -> None:
            replace_once(config, line_with(config, "external_url =") + "\n", "")

        return self.service_error(edit, "apps[0].external_url", "is required")

    def test_wrong_type(self) -> Any:
        def edit(state: Path, config: Path) -> None:
            replace_once(config, "queue_timeout = 10\n", 'queue_timeout = "ten"\n')

        return self.service_error(edit, "service.queue_timeout", "must be a number, not string")

    def test_bad_url(self) -> Any:
        def edit(state: Path, config: Path) -> None:
            replace_once(
                config, line_with(config, "internal_url ="), 'internal_url = "ftp://intranet/"'
            )

        return self.service_error(
            edit, "apps[0].internal_url", "'ftp://intranet/' is not an http or https URL"
        )

    @inlineCallbacks
    def test_missing_certificate_file(self) -> Any:
        """
        The line names the certificate file, resolved against the
        configuration file's directory.
        """
        state = yield init(self)
        config = state / "service.toml"
        replace_once(config, 'cert = "tls/service.pem"', 'cert = "tls/missing.pem"')
        process = yield self.run_daemon("appproxy", config)
        self.assertConfigError(
            process,
            config,
            "service.certificates[0].cert",
            f"cannot read certificate file '{state / 'tls' / 'missing.pem'}':"
            " No such file or directory",
        )

    def test_certificate_not_pem(self) -> Any:
        def edit(state: Path, config: Path) -> None:
            (state / "tls" / "junk.pem").write_text("this is not a certificate\n")
            replace_once(config, 'cert = "tls/service.pem"', 'cert = "tls/junk.pem"')

        return self.service_error(
            edit, "service.certificates[0].cert", "does not contain a PEM certificate"
        )

    def test_unknown_key(self) -> Any:
        def edit(state: Path, config: Path) -> None:
            replace_once(config, "\nexternal_url =", "\nextrnal_url =")

        return self.service_error(
            edit, "apps[0].extrnal_url", "unknown key (did you mean 'external_url'?)"
        )

    @inlineCallbacks
    def test_missing_file(self) -> Any:
        """
        A configuration file that does not exist; a relative path is shown
        made absolute.
        """
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir(parents=True)
        process = yield self.run_daemon("appproxy", "nowhere/service.toml", cwd)
        shown = Path(os.path.realpath(cwd)) / "nowhere" / "service.toml"
        self.assertConfigError(process, shown, "", "cannot read: No such file or directory")

    @inlineCallbacks
    def test_invalid_toml(self) -> Any:
        state = yield init(self)
        config = state / "service.toml"
        replace_once(config, "queue_timeout = 10\n", "queue_timeout = \n")
        process = yield self.run_daemon("appproxy", config)
        self.assertConfigError(process, config, "", "invalid TOML")

    def test_connector_missing_service_host(self) -> Any:
        def edit(state: Path, config: Path) -> None:
            replace_once(config, line_with(config, "service_host =") + "\n", "")

        return self.connector_error(edit, "connector.service_host", "is required")

    def test_connector_unknown_key(self) -> Any:
        def edit(state: Path, config: Path) -> None:
            replace_once(config, "\nconnections = 4\n", "\nconections = 4\n")

        return self.connector_error(
            edit, "connector.conections", "unknown key (did you mean 'connections'?)"
        )

    @inlineCallbacks
    def test_connector_missing_file(self) -> Any:
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir(parents=True)
        missing = cwd / "connector.toml"
        process = yield self.run_daemon("appproxy-connector", missing, cwd)
        self.assertConfigError(process, missing, "", "cannot read: No such file or directory")


class PortInUseTests(TestCase):
    """
    A listener that cannot be bound stops the service with one line naming
    the setting, and no traceback.
    """

    @inlineCallbacks
    def check_port_in_use(self, setting: str) -> Any:
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        busy = held.getsockname()[1]
        public, tunnel = free_ports(2)
        if setting == "service.listen":
            public = busy
        else:
            tunnel = busy
        state = yield init(self, "--port", str(public), "--tunnel-port", str(tunnel))
        process = twistd(self, "appproxy", state / "service.toml", state.parent)
        status = yield process.ended()
        report = process.describe()
        self.assertNotEqual(status, (0, None), report)
        self.assertNotIn(status, ((EX_CONFIG, None),), report)
        self.assertNotIn("Traceback", process.output(), report)
        lines = [line for line in process.output().splitlines() if setting in line]
        self.assertEqual(len(lines), 1, report)
        self.assertIn(f"cannot listen on {setting} 'tcp:{busy}:interface=127.0.0.1'", lines[0])
        self.assertIn(str(state / "service.toml"), lines[0])
        self.assertIn("in use", lines[0])
        self.assertNotIn("appproxy service ready", process.output(), report)

    def test_public_port_in_use(self) -> Any:
        return self.check_port_in_use("service.listen")

    def test_tunnel_port_in_use(self) -> Any:
        return self.check_port_in_use("tunnel.listen")


class _Backend(resource.Resource):
    """The internal app: a known body and the request's headers, as JSON."""

    isLeaf = True
    BODY = "hello from the internal app"

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "body": self.BODY,
                "uri": request.uri.decode(),
                "headers": {
                    k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                },
            }
        ).encode()


class _Notifications(protocol.DatagramProtocol):
    """Datagrams received on a C{NOTIFY_SOCKET}."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append(data)

    @inlineCallbacks
    def wait_for(self, message: bytes, timeout: float = PROCESS_TIMEOUT) -> Any:
        for _ in range(int(timeout / POLL)):
            if message in self.received:
                return
            yield deferLater(reactor, POLL, lambda: None)
        raise AssertionError(f"{message!r} not received within {timeout} s: {self.received}")


def notify_socket(testcase: TestCase) -> tuple[str, _Notifications]:
    """
    An AF_UNIX datagram socket in a short temporary directory (socket paths
    are limited to about 100 bytes): its path and what it receives.
    """
    directory = tempfile.mkdtemp(prefix="appproxy-notify-")
    testcase.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, "notify")
    notifications = _Notifications()
    port = reactor.listenUNIXDatagram(path, notifications)  # type: ignore[attr-defined]
    testcase.addCleanup(port.stopListening)
    return path, notifications


def assertCleanStop(testcase: TestCase, process: Process) -> None:
    report = process.describe()
    testcase.assertIn(process.status, CLEAN_STOPS, report)
    testcase.assertIn("Received SIGTERM, shutting down.", process.output(), report)
    testcase.assertIn("Server Shut Down.", process.output(), report)
    testcase.assertNotIn("Traceback", process.output(), report)
    testcase.assertNotIn("Unhandled error", process.output(), report)
    testcase.assertNotIn("Drain incomplete", process.output(), report)


class EndToEndTests(TestCase):
    """
    C{appproxy init}, then the service and the connector as twistd daemons
    in front of a backend run by this test, reached over verified HTTPS.
    """

    @inlineCallbacks
    def test_request_through_daemons_and_clean_stop(self) -> Any:
        site: Any = server.Site(_Backend())
        backend = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        backend_port = backend.getHost().port  # type: ignore[attr-defined]
        public, tunnel = free_ports(2)
        state = yield init(
            self,
            "--port",
            str(public),
            "--tunnel-port",
            str(tunnel),
            "--listen",
            f"tcp:{public}:interface=127.0.0.1",
            "--internal-url",
            f"http://127.0.0.1:{backend_port}/",
        )
        config = tomllib.loads((state / "service.toml").read_text())
        external_url = config["apps"][0]["external_url"]
        self.assertEqual(external_url, f"https://{APP}.{DOMAIN}:{public}/")

        service = twistd(self, "appproxy", state / "service.toml", state.parent)
        yield service.wait_for("appproxy service ready")
        self.assertIn(
            f"HTTPS on 127.0.0.1:{public}, tunnel on 127.0.0.1:{tunnel}", service.output()
        )

        notify_path, notifications = notify_socket(self)
        connector = twistd(
            self,
            "appproxy-connector",
            state / "connector" / "connector.toml",
            state.parent,
            NOTIFY_SOCKET=notify_path,
        )
        yield connector.wait_for("appproxy connector started")
        yield notifications.wait_for(b"READY=1")

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(
            Agent.usingEndpointFactory(
                reactor, LoopbackTLS(public, (state / "ca.pem").read_bytes()), pool=pool
            )
        )
        url = f"{external_url}some/path?q=1"
        # Sign in with the service's built-in provider, as a browser would.
        add_user(state / "state" / "users.json", "alice", "correct horse", groups=("staff",))
        browser = Browser([(state / "ca.pem").read_bytes()])
        self.addCleanup(browser.pool.closeCachedConnections)
        page = yield browser.go(url)
        self.assertIn(f"login.{DOMAIN}:{public}", page.url)
        yield browser.submit(page, {"username": "alice", "password": "correct horse"})
        cookies = browser.cookies(f"{APP}.{DOMAIN}")
        self.assertIn(f"__Host-appproxy-{APP}", cookies)
        cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        echo = yield self.get_through(client, url, service, connector, cookie)
        self.assertEqual(echo["headers"].get("x-remote-user"), ["alice"])
        self.assertEqual(echo["headers"].get("x-remote-groups"), ["staff"])
        self.assertNotIn("cookie", echo["headers"])
        self.assertEqual(echo["body"], _Backend.BODY)
        self.assertEqual(echo["uri"], "/some/path?q=1")
        headers = echo["headers"]
        self.assertEqual(headers.get("x-test-marker"), ["end-to-end"])
        self.assertEqual(headers.get("x-forwarded-proto"), ["https"])
        self.assertEqual(headers.get("x-forwarded-host"), [f"{APP}.{DOMAIN}:{public}"])

        # The connector drains its tunnels and stops cleanly.
        connector.signal("TERM")
        yield connector.ended(10.0)
        assertCleanStop(self, connector)
        yield notifications.wait_for(b"STOPPING=1")
        self.assertLess(
            notifications.received.index(b"READY=1"),
            notifications.received.index(b"STOPPING=1"),
        )
        # The service saw the tunnels close, not fail.
        yield service.wait_for("disconnected")
        self.assertTrue(service.running, service.describe())

        service.signal("TERM")
        yield service.ended(10.0)
        assertCleanStop(self, service)

    @inlineCallbacks
    def get_through(
        self, client: HTTPClient, url: str, service: Process, connector: Process, cookie: str
    ) -> Any:
        """
        GET C{url} until the backend's answer comes back (the connector may
        still be dialling); bounded by L{END_TO_END_TIMEOUT}.
        """
        deadline = reactor.seconds() + END_TO_END_TIMEOUT
        attempts: list[str] = []
        while reactor.seconds() < deadline:
            for process in (service, connector):
                if not process.running:
                    raise AssertionError(f"exited early\n{process.describe()}")
            try:
                response = yield client.get(
                    url,
                    headers=Headers(
                        {b"X-Test-Marker": [b"end-to-end"], b"Cookie": [cookie.encode()]}
                    ),
                    timeout=max(0.5, deadline - reactor.seconds()),
                )
                body = yield treq.content(response)
            except Exception as e:
                attempts.append(f"{type(e).__name__}: {e}")
            else:
                if response.code == 200:
                    return json.loads(body)
                attempts.append(f"{response.code}: {body[:200]!r}")
            yield deferLater(reactor, 0.2, lambda: None)
        raise AssertionError(
            f"no answer from the backend through the daemons within {END_TO_END_TIMEOUT} s:"
            f" {attempts}\n{service.describe()}\n{connector.describe()}"
        )


class SdNotifyTests(TestCase):
    """
    Under systemd (C{Type=notify}) the service says READY=1 once it listens
    and STOPPING=1 when it is told to stop.
    """

    @inlineCallbacks
    def test_ready_and_stopping(self) -> Any:
        public, tunnel = free_ports(2)
        state = yield init(self, "--port", str(public), "--tunnel-port", str(tunnel))
        notify_path, notifications = notify_socket(self)
        service = twistd(
            self, "appproxy", state / "service.toml", state.parent, NOTIFY_SOCKET=notify_path
        )
        yield notifications.wait_for(b"READY=1")
        # READY=1 comes once the listeners are bound.
        with socket.create_connection(("127.0.0.1", public), timeout=5):
            pass
        self.assertNotIn(b"STOPPING=1", notifications.received)

        service.signal("TERM")
        yield notifications.wait_for(b"STOPPING=1")
        yield service.ended()
        assertCleanStop(self, service)
        self.assertEqual(notifications.received.count(b"READY=1"), 1, notifications.received)
        self.assertLess(
            notifications.received.index(b"READY=1"),
            notifications.received.index(b"STOPPING=1"),
        )
