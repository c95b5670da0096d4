"""
Tests for C{appproxy install service|connector} and the units it writes
(L{appproxy.cli.install}, L{appproxy.cli.systemd_units}).

L{DeploymentTests} is the README's sequence on this host, inside the test's
temporary directory: C{appproxy init} with C{--data-dir}, then C{appproxy
install service} and C{install connector}, which create a real system user
(C{appproxy-test}, removed afterwards when the test created it: the daemons
must run as an unprivileged user for the test to mean anything, and
C{setpriv} needs the user in the real C{/etc/passwd}). The installed units
pass C{systemd-analyze verify}; a renewal's writes (C{install_renewal}) into
the connector's directory succeed as the connector unit's user (the directory
is its state, and the unit's one writable path); then each unit's exact
C{ExecStart} line runs
as the unit's C{User}/C{Group} (C{setpriv}, with C{NoNewPrivileges}), from
C{/}, with the environment systemd gives a system service and a
C{NOTIFY_SOCKET} of the test's: both daemons must send C{READY=1}, the
service must answer HTTPS with the keys it was given, the connector must
connect, and both must stop cleanly on SIGTERM. It needs root (it fails
otherwise, saying so; .ci/run runs as root). C{systemd-analyze verify} needs
no running systemd: it loads the unit files and checks their syntax and that
C{ExecStart}'s program exists.

The virtualenv: the units refuse an interpreter under C{/root} or C{/home}
(C{ProtectHome=yes} would hide it); when this checkout's C{.venv} runs such
an interpreter (pyenv), the test makes C{PREFIX} a virtualenv of the
system's C{python3} of the same version whose site-packages points at
C{.venv}'s (the installed appproxy, as in the other daemon tests).
"""

from __future__ import annotations

import grp
import io
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path, PurePosixPath
from typing import Any, cast

import attrs
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from appproxy.cli import install as install_module
from appproxy.cli.main import main
from appproxy.cli.systemd_units import (
    DEFAULT_CONNECTOR,
    DEFAULT_SERVICE,
    UnitPaths,
    connector_unit,
    service_unit,
)
from tests.visible import visible_directory

_REPO = Path(__file__).resolve().parents[1]
_VENV = _REPO / ".venv"
_USER = "appproxy-test"
#: What systemd (252, Debian 12) gives a system service besides its unit's
#: Environment= lines (systemd.exec(5), "Environment variables in spawned
#: processes").
_SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_WAIT = 20.0


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def unit_settings(path: Path) -> dict[str, list[str]]:
    """The C{[Service]} settings of a unit file: key -> values in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p): (p.lstat().st_mode, p.lstat().st_uid, p.lstat().st_gid)
        for p in sorted(root.rglob("*"))
    }


class UnitTemplateTests(SynchronousTestCase):
    """The units L{appproxy.cli.systemd_units} renders."""

    def test_contrib_units_are_the_defaults(self) -> None:
        """contrib/systemd/ holds the units for the default paths."""
        contrib = _REPO / "contrib" / "systemd"
        self.assertEqual((contrib / "appproxy.service").read_text(), service_unit(DEFAULT_SERVICE))
        self.assertEqual(
            (contrib / "appproxy-connector.service").read_text(),
            connector_unit(DEFAULT_CONNECTOR),
        )

    def test_default_service_unit(self) -> None:
        path = Path(self.mktemp())
        path.write_text(service_unit(DEFAULT_SERVICE))
        settings = unit_settings(path)
        self.assertEqual(
            settings["ExecStart"],
            [
                "/opt/appproxy/bin/twistd --nodaemon --pidfile= appproxy "
                "--config /etc/appproxy/service.toml"
            ],
        )
        self.assertEqual(settings["Type"], ["notify"])
        self.assertEqual(settings["User"], ["appproxy"])
        self.assertEqual(settings["ProtectSystem"], ["strict"])
        self.assertEqual(settings["ReadWritePaths"], ["/var/lib/appproxy"])
        self.assertEqual(settings["StateDirectory"], ["appproxy"])

    def test_default_connector_unit(self) -> None:
        path = Path(self.mktemp())
        path.write_text(connector_unit(DEFAULT_CONNECTOR))
        settings = unit_settings(path)
        self.assertEqual(
            settings["ExecStart"],
            [
                "/opt/appproxy/bin/twistd --nodaemon --pidfile= appproxy-connector "
                "--config /var/lib/appproxy-connector/connector.toml"
            ],
        )
        # Its directory is its state: renewal replaces its key and certificate there.
        self.assertEqual(settings["ProtectSystem"], ["strict"])
        self.assertEqual(settings["ReadWritePaths"], ["/var/lib/appproxy-connector"])
        self.assertEqual(settings["StateDirectory"], ["appproxy-connector"])
        self.assertEqual(settings["StateDirectoryMode"], ["0700"])
        self.assertEqual(settings["CapabilityBoundingSet"], [""])

    def test_connector_dir_outside_var_lib(self) -> None:
        """
        A connector's directory elsewhere (inside the one init made) is only
        ReadWritePaths=; a connector unit needs its directory.
        """
        path = Path(self.mktemp())
        paths = UnitPaths(
            prefix=PurePosixPath("/opt/appproxy"),
            config=PurePosixPath("/etc/appproxy/connector/connector.toml"),
            user="appproxy",
            group="appproxy",
            state_dir=PurePosixPath("/etc/appproxy/connector"),
        )
        path.write_text(connector_unit(paths))
        settings = unit_settings(path)
        self.assertEqual(settings["ReadWritePaths"], ["/etc/appproxy/connector"])
        self.assertNotIn("StateDirectory", settings)
        for other in (None, PurePosixPath("/var/lib/appproxy-connector")):
            with self.assertRaises(ValueError):
                connector_unit(attrs.evolve(paths, state_dir=other))

    def test_state_dir_outside_var_lib(self) -> None:
        """Elsewhere than /var/lib the state directory is only ReadWritePaths=."""
        path = Path(self.mktemp())
        paths = UnitPaths(
            prefix=PurePosixPath("/opt/ap"),
            config=PurePosixPath("/srv/ap/service.toml"),
            user="ap",
            group="ap",
            state_dir=PurePosixPath("/srv/ap-state"),
        )
        path.write_text(service_unit(paths))
        settings = unit_settings(path)
        self.assertEqual(settings["ReadWritePaths"], ["/srv/ap-state"])
        self.assertNotIn("StateDirectory", settings)
        self.assertEqual(settings["ExecStart"][0].split()[0], "/opt/ap/bin/twistd")

    def test_unsafe_paths_refused(self) -> None:
        for bad in ("/opt/my app", "/opt/%h", "/opt/$HOME", "relative", "/opt/../etc"):
            paths = UnitPaths(
                prefix=PurePosixPath(bad),
                config=PurePosixPath("/etc/appproxy/service.toml"),
                user="appproxy",
                group="appproxy",
                state_dir=PurePosixPath("/var/lib/appproxy"),
            )
            with self.assertRaises(ValueError, msg=bad):
                service_unit(paths)


def _fake_prefix(root: Path) -> Path:
    """A virtualenv for dry runs: C{bin/twistd} and C{bin/python} are there."""
    prefix = root / "opt" / "appproxy"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "twistd").write_text("#!/bin/sh\nexit 1\n")
    (prefix / "bin" / "twistd").chmod(0o755)
    (prefix / "bin" / "python").symlink_to("/usr/bin/python3")
    return prefix


class InstallCommandTests(SynchronousTestCase):
    """The checks C{appproxy install} makes before it changes anything."""

    def setUp(self) -> None:
        self.root = visible_directory(self)
        (self.root / "etc").mkdir(parents=True)
        self.prefix = _fake_prefix(self.root)
        self.config_dir = self.root / "etc" / "appproxy"
        code, _, err = run_main(
            "init",
            "--state-dir",
            str(self.config_dir),
            "--domain",
            "example.test",
            "--data-dir",
            str(self.root / "var" / "lib" / "appproxy"),
        )
        self.assertEqual((code, err), (0, ""))
        self.service = self.config_dir / "service.toml"

    def install(self, *argv: str) -> tuple[int, str, str]:
        if "--prefix" not in argv:
            argv += ("--prefix", str(self.prefix))
        return run_main("install", *argv, "--unit-dir", str(self.root / "units"))

    def test_dry_run_changes_nothing(self) -> None:
        """--dry-run prints the steps and the unit, and changes nothing."""
        before = _snapshot(self.root)
        code, out, err = self.install(
            "service",
            "--config",
            str(self.service),
            "--user",
            "nobody",
            "--dry-run",
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(_snapshot(self.root), before)
        self.assertIn(f"would: write {self.root}/units/appproxy.service", out)
        self.assertIn(f"would:   {self.config_dir}/tls/service.key: root:nogroup 0640", out)
        # The service signs registering connectors' certificates ([tunnel] connector_ca_key).
        self.assertIn(f"would:   {self.config_dir}/ca.key: root:nogroup 0640", out)
        self.assertIn(f"ReadWritePaths={self.root}/var/lib/appproxy\n", out)
        self.assertIn(f"ExecStart={self.prefix}/bin/twistd --nodaemon --pidfile= appproxy", out)
        self.assertIn("systemctl daemon-reload && systemctl enable --now appproxy\n", out)

    def test_connector_dry_run(self) -> None:
        """
        The connector's directory is its state: the daemon's user owns it
        (0700, the key 0600) and the unit lets it write there, where renewal
        replaces the key and certificate. Inside the directory init made, that
        directory's group may search it; nothing is made group-readable.
        """
        connector = self.config_dir / "connector"
        before = _snapshot(self.root)
        code, out, err = self.install(
            "connector",
            "--config",
            str(connector / "connector.toml"),
            "--user",
            "nobody",
            "--dry-run",
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(_snapshot(self.root), before)
        self.assertIn(f"would: {self.config_dir}: root:nogroup 0750\n", out)
        self.assertIn(f"would: {connector}: nobody:nogroup 0700 (the connector's state", out)
        self.assertIn(f"would:   {connector}/connector.key: nobody:nogroup 0600\n", out)
        self.assertNotIn("0640", out)
        self.assertIn(f"would: write {self.root}/units/appproxy-connector.service", out)
        self.assertIn(f"\nReadWritePaths={connector}\n", out)
        self.assertNotIn("StateDirectory", out)
        self.assertIn("systemctl daemon-reload && systemctl enable --now appproxy-connector\n", out)

    def test_registered_connector_dry_run(self) -> None:
        """
        A directory appproxy-connector register wrote (no service next to it):
        the user's, and the unit's one writable path.
        """
        registered = self.root / "var" / "lib" / "appproxy-connector"
        shutil.copytree(self.config_dir / "connector", registered)
        code, out, err = self.install(
            "connector", "--config", str(registered / "connector.toml"), "--dry-run"
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"would: {registered}: appproxy:appproxy 0700", out)
        self.assertIn(f"would:   {registered}/connector.key: appproxy:appproxy 0600\n", out)
        self.assertNotIn("0750", out)
        self.assertIn(f"\nReadWritePaths={registered}\n", out)

    def test_connector_default_config(self) -> None:
        """Without --config: where appproxy-connector register --state-dir puts it."""
        default = Path(DEFAULT_CONNECTOR.config)
        if default.exists():
            raise SkipTest(f"{default} exists on this host")
        code, out, err = self.install("connector", "--dry-run")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("/var/lib/appproxy-connector/connector.toml", err)

    def test_connector_dir_refused(self) -> None:
        """
        A connector.toml next to service.toml (that directory would become the
        connector's user's), or whose key is elsewhere (renewal could not
        replace it under the unit), is refused before anything changes.
        """
        connector = self.config_dir / "connector"
        text = (connector / "connector.toml").read_text()
        shared = self.config_dir / "connector.toml"
        shared.write_text(
            text.replace('"connector.pem"', '"connector/connector.pem"').replace(
                '"connector.key"', '"connector/connector.key"'
            )
        )
        elsewhere = connector / "connector.toml"
        elsewhere.write_text(text.replace('"connector.key"', '"../tls/connector.key"'))
        shutil.copy(connector / "connector.key", self.config_dir / "tls" / "connector.key")
        for config, why in (
            (shared, f"{self.config_dir} holds service.toml"),
            (elsewhere, f"key {self.config_dir}/tls/connector.key is not in {connector}"),
        ):
            before = _snapshot(self.root)
            code, out, err = self.install("connector", "--config", str(config), "--dry-run")
            self.assertEqual((code, out), (1, ""), config)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn(why, err)
            self.assertEqual(_snapshot(self.root), before)

    def test_no_twistd(self) -> None:
        """A prefix without bin/twistd is refused with the README's remedy."""
        code, out, err = self.install(
            "service", "--config", str(self.service), "--prefix", str(self.root), "--dry-run"
        )
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(f"{self.root}/bin/twistd does not exist", err)
        self.assertIn("python3 -m venv /opt/appproxy", err)

    def test_bad_config(self) -> None:
        """The daemon's own loader checks the file: its one-line error."""
        self.service.write_text(self.service.read_text().replace("[tunnel]", "[tunel]"))
        code, _, err = self.install("service", "--config", str(self.service), "--dry-run")
        self.assertEqual(code, 1)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(str(self.service), err)

    def test_hidden_paths_refused(self) -> None:
        """
        A configuration under /tmp (PrivateTmp=yes) or /home (ProtectHome=yes)
        would be invisible to the daemon: refused.
        """
        tmp = Path(tempfile.mkdtemp(prefix="appproxy-install-test-"))
        self.addCleanup(shutil.rmtree, tmp)
        shutil.copytree(self.config_dir, tmp / "appproxy")
        code, _, err = self.install(
            "connector", "--config", str(tmp / "appproxy/connector/connector.toml"), "--dry-run"
        )
        self.assertEqual(code, 1)
        self.assertIn("is under /tmp, which the unit hides from the daemon", err)

    def test_bad_user_name(self) -> None:
        code, _, err = self.install(
            "service", "--config", str(self.service), "--user", "Bad User", "--dry-run"
        )
        self.assertEqual(code, 1)
        self.assertIn("not a valid user name", err)

    def test_needs_root(self) -> None:
        # Whoever runs the suite, the installer must see a user who is not root.
        self.patch(install_module.os, "geteuid", lambda: 1000)
        code, _, err = self.install("service", "--config", str(self.service))
        self.assertEqual(code, 1)
        self.assertIn("run as root", err)


class _Daemon(protocol.ProcessProtocol):
    """A daemon started from a unit's ExecStart; its output and its end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.output = b""
        self.running = True
        self._ended: list[Deferred[tuple[int | None, int | None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        ended: Any = reason.value
        status = (ended.exitCode, ended.signal)
        for d in self._ended:
            d.callback(status)

    def ended(self) -> Deferred[tuple[int | None, int | None]]:
        """Fires with (exit code, signal) when the process ends."""
        d: Deferred[tuple[int | None, int | None]] = Deferred()
        self._ended.append(d)
        return d.addTimeout(_WAIT, reactor)

    def describe(self) -> str:
        return f"{self.name} output:\n{self.output.decode(errors='replace')}"


class _Notifications(protocol.DatagramProtocol):
    """The test's NOTIFY_SOCKET: the sd_notify datagrams of one daemon."""

    def __init__(self) -> None:
        self.states: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.states.extend(data.split(b"\n"))


def _venv_for_units(base: Path) -> Path:
    """
    A virtualenv the units accept and the unit's user can run: this
    checkout's .venv if install accepts it where it is, else one made with the
    system's python3 over .venv's site-packages (the checkout may be under
    /tmp, its interpreter under /root).
    """
    python = Path(os.path.realpath(_VENV / "bin" / "python"))
    visible = base / "etc" / "appproxy" / "service.toml"
    if install_module.hidden_path_problem(prefix=_VENV, config=visible, state=None) is None:
        return _VENV
    system = shutil.which("python3", path="/usr/bin:/bin")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if system is None:
        raise AssertionError(f"{python} is under /root or /home, and there is no /usr/bin/python3")
    probe = subprocess.run(
        [system, "-c", "import sys; print(f'{sys.version_info.major}.{sys.version_info.minor}')"],
        capture_output=True,
        text=True,
        check=True,
    )
    if probe.stdout.strip() != version:
        raise AssertionError(f"/usr/bin/python3 is not Python {version} like {python}")
    prefix = base / "opt" / "appproxy"
    subprocess.run([system, "-m", "venv", "--without-pip", str(prefix)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(prefix)}))
    (purelib / "appproxy-test-venv.pth").write_text(
        sysconfig.get_path("purelib", vars={"base": str(_VENV)}) + "\n"
    )
    script = (_VENV / "bin" / "twistd").read_text().split("\n", 1)[1]
    twistd = prefix / "bin" / "twistd"
    twistd.write_text(f"#!{prefix}/bin/python\n{script}")
    twistd.chmod(0o755)
    return prefix


class DeploymentTests(TestCase):
    """The README's sequence, then the units' ExecStart as their user."""

    timeout = 60

    def setUp(self) -> None:
        if os.geteuid() != 0:
            self.fail("needs root (as .ci/run runs): it creates a system user, runs daemons as it")
        for tool in ("systemd-analyze", "setpriv", "runuser", "useradd", "curl"):
            if shutil.which(tool) is None:
                self.fail(f"{tool} is missing: .ci/run installs it with apt")
        try:
            pwd.getpwnam(_USER)
        except KeyError:
            self.addCleanup(self._remove_user)
        self.root = visible_directory(self)
        (self.root / "etc").mkdir(parents=True)
        self.prefix = _venv_for_units(self.root)

    def _remove_user(self) -> None:
        subprocess.run(["userdel", _USER], check=False, capture_output=True)
        try:
            grp.getgrnam(_USER)
        except KeyError:
            return
        subprocess.run(["groupdel", _USER], check=False, capture_output=True)

    def _ports(self) -> tuple[int, int]:
        sockets = [socket.socket() for _ in range(2)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        ports = sockets[0].getsockname()[1], sockets[1].getsockname()[1]
        for s in sockets:
            s.close()
        return ports

    def _install(self, what: str, config: Path) -> Path:
        code, out, err = run_main(
            "install",
            what,
            "--config",
            str(config),
            "--prefix",
            str(self.prefix),
            "--user",
            _USER,
            "--unit-dir",
            str(self.root / "units"),
        )
        self.assertEqual((code, err), (0, ""), out)
        name = "appproxy" if what == "service" else "appproxy-connector"
        self.assertIn(f"systemctl daemon-reload && systemctl enable --now {name}", out)
        return self.root / "units" / f"{name}.service"

    def _start(self, unit: Path) -> tuple[_Daemon, _Notifications]:
        """Run the unit's ExecStart as systemd would (see the module docstring)."""
        settings = unit_settings(unit)
        (exec_start,) = settings["ExecStart"]
        (user,) = settings["User"]
        (group,) = settings["Group"]
        entry = pwd.getpwnam(user)
        notifications = _Notifications()
        # An abstract socket: no path length limit, no file permissions.
        notify_socket = f"appproxy-test-notify-{unit.stem}-{secrets.token_hex(8)}"
        port = cast(Any, reactor).listenUNIXDatagram("\0" + notify_socket, notifications)
        self.addCleanup(port.stopListening)
        env = {
            "PATH": _SYSTEMD_PATH,
            "HOME": entry.pw_dir,
            "USER": user,
            "LOGNAME": user,
            "SHELL": entry.pw_shell,
            "INVOCATION_ID": secrets.token_hex(16),
            "NOTIFY_SOCKET": "@" + notify_socket,
        }
        for assignment in settings.get("Environment", []):
            for item in shlex.split(assignment):
                key, _, value = item.partition("=")
                env[key] = value
        argv = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups"]
        argv += ["--no-new-privs", "--", *shlex.split(exec_start)]
        daemon = _Daemon(unit.stem)
        reactor.spawnProcess(daemon, shutil.which("setpriv") or "setpriv", argv, env, path="/")

        def reap() -> Deferred[tuple[int | None, int | None]] | None:
            if not daemon.running:
                return None
            d = daemon.ended()
            assert daemon.transport is not None
            daemon.transport.signalProcess("KILL")
            return d

        self.addCleanup(reap)
        return daemon, notifications

    @inlineCallbacks
    def wait_until(self, daemon: _Daemon, what: str, ok: Any) -> Any:
        deadline = reactor.seconds() + _WAIT
        while not ok():
            if not daemon.running:
                self.fail(f"{daemon.name} exited before {what}\n{daemon.describe()}")
            if reactor.seconds() > deadline:
                self.fail(f"{daemon.name}: no {what} within {_WAIT} s\n{daemon.describe()}")
            yield deferLater(reactor, 0.05, lambda: None)

    def _check_connector_dir(self, directory: Path, uid: int, gid: int) -> None:
        st = directory.stat()
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), (uid, gid, 0o700))
        self.assertEqual(
            sorted(p.name for p in directory.iterdir()),
            ["ca.pem", "connector.key", "connector.pem", "connector.toml"],
        )
        for path in directory.iterdir():
            st = path.stat()
            self.assertEqual((st.st_uid, st.st_gid), (uid, gid), path)
        mode = stat.S_IMODE((directory / "connector.key").stat().st_mode)
        self.assertEqual(mode, 0o600)

    def _renew_in_place(self, unit: Path, directory: Path) -> None:
        """
        What a renewal does to the files (L{keyfiles.install_renewal}, with
        the same key and certificate), as the unit's user, as the unit runs.
        """
        settings = unit_settings(unit)
        (user,) = settings["User"]
        (group,) = settings["Group"]
        script = (
            "import sys; from pathlib import Path; "
            "from appproxy.connector.keyfiles import install_renewal; "
            "d = Path(sys.argv[1]); cert, key = d / 'connector.pem', d / 'connector.key'; "
            "install_renewal(cert, key, cert.read_bytes(), key.read_bytes())"
        )
        argv = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups"]
        argv += ["--no-new-privs", "--", str(self.prefix / "bin" / "python"), "-c", script]
        renewed = subprocess.run(
            [*argv, str(directory)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            cwd="/",
            env={"PATH": _SYSTEMD_PATH},
        )
        self.assertEqual((renewed.returncode, renewed.stderr), (0, ""))

    @inlineCallbacks
    def test_readme_sequence(self) -> Any:
        port, tunnel_port = self._ports()
        config_dir = self.root / "etc" / "appproxy"
        state = self.root / "var" / "lib" / "appproxy"
        code, _, err = run_main(
            "init",
            "--state-dir",
            str(config_dir),
            "--domain",
            "example.test",
            "--data-dir",
            str(state),
            "--port",
            str(port),
            "--tunnel-port",
            str(tunnel_port),
        )
        self.assertEqual((code, err), (0, ""))
        connector_dir = config_dir / "connector"
        # As an earlier install (before renewal) left the connector's key.
        (connector_dir / "connector.key").chmod(0o640)
        # The connector first (it opens init's 0700 directory to its group),
        # then the service, twice (a second run is harmless, and leaves the
        # connector's directory alone).
        connector_unit_file = self._install("connector", connector_dir / "connector.toml")
        service_unit_file = self._install("service", config_dir / "service.toml")
        self.assertEqual(self._install("service", config_dir / "service.toml"), service_unit_file)

        verify = subprocess.run(
            ["systemd-analyze", "verify", str(service_unit_file), str(connector_unit_file)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        self.assertEqual((verify.returncode, verify.stderr, verify.stdout), (0, "", ""))

        # Ownership and modes: the unit's user reads its keys, the CA's too
        # (the service signs the certificates of connectors that register).
        group = grp.getgrnam(_USER).gr_gid
        for key in ("ca.key", "tls/service.key", "tls/tunnel.key", "oidc-client-secret"):
            st = (config_dir / key).stat()
            self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), (0, group, 0o640))
        uid = pwd.getpwnam(_USER).pw_uid
        st = state.stat()
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (uid, 0o700))
        self.assertEqual(unit_settings(service_unit_file)["ReadWritePaths"], [str(state)])
        # The connector's directory is its state: its user's, 0700, the key
        # 0600, and the connector unit's one writable path.
        self._check_connector_dir(connector_dir, uid, group)
        self.assertEqual(unit_settings(connector_unit_file)["ReadWritePaths"], [str(connector_dir)])
        # A renewal's writes, as the unit's user: new files, then renamed.
        self._renew_in_place(connector_unit_file, connector_dir)
        self._check_connector_dir(connector_dir, uid, group)

        # The README's way to add a user: as the service's user, so the
        # users file in the state directory is the service's.
        added = subprocess.run(
            [
                "runuser",
                "-u",
                _USER,
                "--",
                str(self.prefix / "bin" / "python"),
                "-m",
                "appproxy",
                "users",
                "add",
                "alice",
                "--state-dir",
                str(config_dir),
                "--password-stdin",
            ],
            input="correct horse battery staple\n",
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            cwd="/",
            env={"PATH": _SYSTEMD_PATH},
        )
        self.assertEqual(added.returncode, 0, added.stderr)
        self.assertEqual((state / "users.json").stat().st_uid, pwd.getpwnam(_USER).pw_uid)

        service, service_notes = self._start(service_unit_file)
        yield self.wait_until(service, "READY=1", lambda: b"READY=1" in service_notes.states)
        curl = yield getProcessOutputAndValue(
            "curl",
            [
                "--silent",
                "--show-error",
                "--max-time",
                "10",
                "--cacert",
                str(config_dir / "ca.pem"),
                "--resolve",
                f"demo.example.test:{port}:127.0.0.1",
                f"https://demo.example.test:{port}/robots.txt",
            ],
            env={"PATH": _SYSTEMD_PATH},
        )
        out, curl_err, curl_code = curl
        self.assertEqual((curl_code, curl_err), (0, b""), service.describe())
        self.assertIn(b"Disallow: /", out)

        connector, connector_notes = self._start(connector_unit_file)
        yield self.wait_until(connector, "READY=1", lambda: b"READY=1" in connector_notes.states)
        yield self.wait_until(
            service,
            "connector connection",
            lambda: b"Connector connector-1 of group default connected" in service.output,
        )
        self.assertTrue((state / "appproxy.sqlite").exists())

        for daemon, notes in ((connector, connector_notes), (service, service_notes)):
            ended = daemon.ended()
            assert daemon.transport is not None
            daemon.transport.signalProcess("TERM")
            status = yield ended
            self.assertIn(b"STOPPING=1", notes.states)
            self.assertIn(b"Server Shut Down.", daemon.output, daemon.describe())
            self.assertNotIn(b"Traceback", daemon.output, daemon.describe())
            self.assertIn(
                status,
                [(0, None), (None, signal.SIGTERM)],
                daemon.describe(),
            )
