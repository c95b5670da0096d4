"""
C{make demo} as a person runs it: C{python -m appproxy.cli.demo run} in a
real subprocess (the installed code, like L{tests.test_daemons}), on ports
of its own so a developer's demo on 8443 is left alone.

  - the banner comes only once the app really answers a signed-in browser;
  - the connector registers through the enrolment API with a one-time token
    (its key made for it; init issues none);
  - C{kill} (SIGTERM) and Ctrl-C (SIGINT to the process group) stop every
    child, with no traceback;
  - a second demo on the same ports says so in one line, and exits non-zero;
  - a demo that never works end to end says so, with no banner;
  - the daemons' logs name endpoints as host:port, not as Python reprs.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import sqlite3
import stat
from contextlib import closing, redirect_stdout
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.cli import demo as demo_module
from appproxy.cli.demo import DEMO_APP, DEMO_DOMAIN, DEMO_USER
from appproxy.daemon import pki
from appproxy.state.connectors import list_connectors, list_tokens, read_audit
from appproxy.state.schema import DATABASE_NAME
from tests.browser import Browser
from tests.test_daemons import PYTHON, Process, free_ports, spawn, twistd

BANNER = "appproxy demo is running."
#: Bound on the demo's start (first run: keys, certificates, three processes).
START_TIMEOUT = 45.0
#: Bound on the demo's stop.
STOP_TIMEOUT = 30.0
#: What a Python object's default repr looks like in a log line.
REPRS = re.compile(r"object at 0x|<function |IPv4Address\(")

#: Runs the demo as the leader of a new session and process group, as a
#: shell runs a foreground job: a terminal's Ctrl-C is SIGINT to that group.
_SESSION_LEADER = (
    "import os, sys; os.setsid(); "
    "os.execv(sys.executable, [sys.executable, '-m', 'appproxy.cli.demo', *sys.argv[1:]])"
)


def _alive(pid: int) -> bool:
    """Whether C{pid} is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """The processes whose parent is C{pid} (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class DemoTests(TestCase):
    def start_demo(self, state: Path, ports: list[int], *extra: str) -> Process:
        public, tunnel, echo = ports
        return spawn(
            self,
            "demo",
            [
                PYTHON,
                "-c",
                _SESSION_LEADER,
                "run",
                "--state-dir",
                str(state),
                "--port",
                str(public),
                "--tunnel-port",
                str(tunnel),
                "--echo-port",
                str(echo),
                *extra,
            ],
            state.parent,
        )

    def new_state(self) -> Path:
        parent = Path(self.mktemp()).absolute()
        parent.mkdir(parents=True)
        return parent / "demo"

    def assertStopped(self, demo: Process, children: list[int], ports: list[int]) -> None:
        report = demo.describe()
        self.assertEqual(demo.status, (0, None), report)
        self.assertNotIn("Traceback", demo.output(), report)
        self.assertNotIn("ReactorNotRunning", demo.output(), report)
        self.assertEqual([pid for pid in children if _alive(pid)], [], report)
        self.assertEqual([p for p in ports if not _bindable(p)], [], report)

    def assertRegistered(self, state: Path, demo: Process) -> None:
        """
        The demo's connector registered with a one-time enrolment token, as
        one on another host does: a key of its own (0600), an id the service
        chose; init issued none.
        """
        self.assertIn("the connector registered with a one-time enrolment token", demo.output())
        key = state / "connector" / "connector.key"
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        self.assertFalse((state / "enrolment-token").exists())
        with closing(sqlite3.connect(state / "state" / DATABASE_NAME)) as connection:
            (record,) = list_connectors(connection)
            tokens = list_tokens(connection)
            events = [(e.event, e.actor) for e in read_audit(connection, since=None, limit=10)]
        self.assertRegex(record.id, r"\Acn-[0-9a-f]{16}\Z")
        self.assertEqual(record.group, "default")
        (token,) = tokens
        self.assertEqual(record.registered_by, f"token:{token.id}")
        self.assertEqual(token.uses_left, 0)
        self.assertEqual(
            events, [("token-create", "appproxy demo"), ("register", f"token:{token.id}")]
        )
        cert = x509.load_pem_x509_certificate((state / "connector" / "connector.pem").read_bytes())
        self.assertEqual(pki.certificate_serial(cert), record.serial)
        self.assertEqual(pki.connector_identity(cert).connector_id, record.id)

    @inlineCallbacks
    def test_banner_when_ready_second_demo_refused_sigterm_stops_all(self) -> Any:
        ports = free_ports(3)
        state = self.new_state()
        demo = self.start_demo(state, ports)
        yield demo.wait_for(BANNER, START_TIMEOUT)
        # At once, a browser signs in with what the banner says and sees the app.
        password = re.search(r"password '([^']+)'", demo.stdout())
        assert password is not None, demo.describe()
        url = f"https://{DEMO_APP}.{DEMO_DOMAIN}:{ports[0]}/"
        self.assertIn(f"Open:     {url}", demo.stdout())
        browser = Browser([(state / "ca.pem").read_bytes()], max_redirects=20)
        self.addCleanup(browser.pool.closeCachedConnections)
        page = yield browser.go(url)
        page = yield browser.submit(page, {"username": DEMO_USER, "password": password.group(1)})
        self.assertEqual(page.status, 200, page.text[:500])
        self.assertIn("Hello from the internal app", page.text)
        self.assertIn("<th>X-Remote-User</th><td>demo</td>", page.text)
        # init's instructions for a hand-made setup are not the demo's.
        self.assertNotIn("Add a user who may sign in", demo.output())
        self.assertRegistered(state, demo)
        # The daemons' logs name their endpoints for people.
        self.assertIn(f"HTTPS on 127.0.0.1:{ports[0]}", demo.output())
        self.assertIsNone(REPRS.search(demo.output()), demo.output())

        children = _children(demo.transport.pid)  # type: ignore[union-attr]
        self.assertEqual(len(children), 3, demo.describe())

        # A second demo on the same ports: one clear line, non-zero, nothing made.
        second_state = self.new_state()
        second = self.start_demo(second_state, ports)
        status = yield second.ended(20.0)
        self.assertEqual(status, (1, None), second.describe())
        self.assertEqual(second.stdout(), "", second.describe())
        lines = second.stderr().splitlines()
        self.assertEqual(len(lines), 1, second.describe())
        self.assertIn(f"port {ports[0]} on 127.0.0.1", lines[0])
        self.assertIn("already in use", lines[0])
        self.assertFalse(second_state.exists())
        self.assertTrue(demo.running, demo.describe())

        # kill PID: every child stops, the ports are free again.
        demo.signal("TERM")
        yield demo.ended(STOP_TIMEOUT)
        self.assertStopped(demo, children, ports)

    @inlineCallbacks
    def test_ctrl_c_stops_all_without_traceback(self) -> Any:
        ports = free_ports(3)
        demo = self.start_demo(self.new_state(), ports)
        yield demo.wait_for(BANNER, START_TIMEOUT)
        pid = demo.transport.pid  # type: ignore[union-attr]
        children = _children(pid)
        self.assertEqual(len(children), 3, demo.describe())
        # What a terminal does on Ctrl-C: SIGINT to the foreground group.
        os.killpg(pid, signal.SIGINT)
        yield demo.ended(STOP_TIMEOUT)
        self.assertStopped(demo, children, ports)

    @inlineCallbacks
    def test_never_ready_no_banner(self) -> Any:
        """A connector that cannot reach the service: an error, not a banner."""
        ports = free_ports(3)
        state = self.new_state()
        first = self.start_demo(state, ports, "--ready-timeout", "60")
        yield first.wait_for(BANNER, START_TIMEOUT)
        first.signal("TERM")
        yield first.ended(STOP_TIMEOUT)
        (dead_port,) = free_ports(1)
        connector_toml = state / "connector" / "connector.toml"
        text = connector_toml.read_text()
        self.assertIn(f"service_port = {ports[1]}\n", text)
        connector_toml.write_text(
            text.replace(f"service_port = {ports[1]}\n", f"service_port = {dead_port}\n")
        )

        demo = self.start_demo(state, ports, "--ready-timeout", "4")
        yield demo.wait_for("did not become ready", START_TIMEOUT)
        pid = demo.transport.pid  # type: ignore[union-attr]
        children = _children(pid)
        status = yield demo.ended(STOP_TIMEOUT)
        self.assertEqual(status, (1, None), demo.describe())
        self.assertNotIn(BANNER, demo.output())
        self.assertNotIn("Traceback", demo.output())
        self.assertIn("not ready after 4 s", demo.stderr())
        self.assertEqual([p for p in children if _alive(p)], [], demo.describe())
        self.assertEqual([p for p in ports if not _bindable(p)], [], demo.describe())


class DaemonLogTests(TestCase):
    @inlineCallbacks
    def test_connector_retry_names_the_service(self) -> Any:
        """The connector's redial lines name host:port, not an endpoint's repr."""
        parent = Path(self.mktemp()).absolute()
        parent.mkdir(parents=True)
        state = parent / "state"
        (tunnel,) = free_ports(1)
        init = spawn(
            self,
            "init",
            [
                PYTHON,
                "-m",
                "appproxy",
                "init",
                "--state-dir",
                str(state),
                "--domain",
                "example.test",
                "--tunnel-port",
                str(tunnel),
            ],
            parent,
        )
        self.assertEqual((yield init.ended()), (0, None), init.describe())
        # No service listens on the tunnel port: the connector redials.
        connector = twistd(
            self, "appproxy-connector", state / "connector" / "connector.toml", parent
        )
        # Its first step, pulling its configuration, is retried.
        yield connector.wait_for("Cannot pull the configuration from")
        connector.signal("TERM")
        yield connector.ended()
        self.assertIn(
            f"Cannot pull the configuration from tunnel.example.test:{tunnel} (via 127.0.0.1)",
            connector.output(),
        )
        self.assertIsNone(REPRS.search(connector.output()), connector.output())


class OlderDemoDirectoryTests(SynchronousTestCase):
    """
    A demo directory made before connectors registered (its connector was
    never recorded, so the service would refuse it) is moved aside and made
    afresh; one made by this demo is kept.
    """

    def test_moved_aside(self) -> None:
        parent = Path(self.mktemp()).absolute()
        state = parent / "demo"
        state.mkdir(parents=True)
        old = '[tunnel]\nlisten = "tcp:9444:interface=127.0.0.1"\n[builtin_provider]\n'
        (state / "service.toml").write_text(old)
        with redirect_stdout(io.StringIO()) as out:
            ports = demo_module._ports(state, None)
        self.assertIn("moved the old demo directory to", out.getvalue())
        self.assertEqual(ports, demo_module.Ports())
        self.assertFalse(state.exists())
        (moved,) = parent.iterdir()
        self.assertTrue(moved.name.startswith("demo.old-"), moved)
        self.assertEqual((moved / "service.toml").read_text(), old)

    def test_current_kept(self) -> None:
        state = Path(self.mktemp()).absolute() / "demo"
        state.parent.mkdir(parents=True)
        demo_module._create(state, demo_module.Ports(public=9443, tunnel=9444, echo=9080))
        self.assertFalse((state / "connector").exists())  # it registers
        self.assertEqual(
            demo_module._ports(state, None), demo_module.Ports(public=9443, tunnel=9444, echo=9080)
        )
        self.assertTrue((state / "service.toml").exists())
