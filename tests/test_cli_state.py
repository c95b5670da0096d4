"""
Every command that works on a service (C{users}, C{keys}, C{logs},
C{policy}) takes the same thing: the directory C{appproxy init} made
(C{--state-dir DIR}) or the service's configuration file (C{--config FILE});
the files it changes are the ones the service reads, found from that
configuration (L{appproxy.cli.arguments.resolve_state}).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from appproxy.access.keyring_file import load_keyring, load_or_create_keyring
from appproxy.cli.main import main
from appproxy.idp.users import UserStore, add_user
from appproxy.state.database import StateDatabase
from appproxy.state.signins import COLUMNS, SignInEvent
from tests import test_daemons as daemons
from tests.browser import Browser
from tests.servicedir import init_service_dir, service_config

PASSWORD = "correct horse"
#: The service's user, in the ownership tests (no such account is needed).
SERVICE_UID = 64123

#: Each command that names a service, with its other arguments.
COMMANDS: Sequence[Sequence[str]] = (
    ("users", "add", "alice", "--password-stdin"),
    ("users", "passwd", "alice", "--password-stdin"),
    ("users", "totp", "alice"),
    ("users", "disable", "alice"),
    ("users", "enable", "alice"),
    ("users", "remove", "alice"),
    ("users", "list"),
    ("keys", "list"),
    ("keys", "rotate"),
    ("keys", "retire", "k1"),
    ("keys", "remove", "k1"),
    ("logs", "sign-ins"),
    ("logs", "sign-ins", "--json"),
    ("policy", "what-if", "--user", "alice", "--app", "demo", "--ip", "192.0.2.1"),
)


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    """C{appproxy ARGV} in this process: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


class ServiceFilesTests(SynchronousTestCase):
    """The commands change and read the files the service reads."""

    def setUp(self) -> None:
        self.dir = init_service_dir(Path(self.mktemp()))
        self.config = service_config(self.dir)
        assert self.config.builtin_provider is not None
        self.users_file = self.config.builtin_provider.users_file
        self.keyring = self.config.state_dir / "session-keys.json"

    def ok(self, *argv: str, stdin: str = "") -> str:
        code, out, err = run(*argv, stdin=stdin)
        self.assertEqual((code, err), (0, ""), argv)
        return out

    def test_users_add_writes_the_service_users_file(self) -> None:
        out = self.ok(
            "users", "add", "alice", "--state-dir", str(self.dir), "--password-stdin",
            stdin=f"{PASSWORD}\n",
        )  # fmt: skip
        self.assertIn(str(self.users_file), out)
        self.assertIn("alice", UserStore.load(self.users_file).users)
        # Nothing beside service.toml that the service would not read.
        self.assertFalse((self.dir / "users.json").exists())

    def test_users_add_with_config(self) -> None:
        self.ok(
            "users", "add", "bob", "--config", str(self.dir / "service.toml"),
            "--password-stdin", stdin=f"{PASSWORD}\n",
        )  # fmt: skip
        self.assertIn("bob", UserStore.load(self.users_file).users)

    def test_users_list_lists_the_service_users(self) -> None:
        add_user(self.users_file, "alice", PASSWORD, groups=("staff",))
        for option in (
            ["--state-dir", str(self.dir)],
            ["--config", str(self.dir / "service.toml")],
        ):
            lines = self.ok("users", "list", *option).splitlines()
            self.assertEqual(lines[0].split()[0], "USER")
            self.assertEqual([line.split()[0] for line in lines[1:]], ["alice"], option)

    def test_users_list_empty_names_the_file(self) -> None:
        out = self.ok("users", "list", "--state-dir", str(self.dir))
        self.assertEqual(out, f"No users in {self.users_file}.\n")

    def test_users_file_from_the_configuration(self) -> None:
        """C{[builtin_provider] users_file} is honoured, as the service honours it."""
        config = self.dir / "service.toml"
        text = config.read_text()
        config.write_text(
            text.replace("[builtin_provider]\n", '[builtin_provider]\nusers_file = "people.json"\n')
        )
        self.ok(
            "users", "add", "carol", "--state-dir", str(self.dir), "--password-stdin",
            stdin=f"{PASSWORD}\n",
        )  # fmt: skip
        expected = self.config.state_dir / "people.json"
        builtin = service_config(self.dir).builtin_provider
        assert builtin is not None
        self.assertEqual(builtin.users_file, expected)
        self.assertIn("carol", UserStore.load(expected).users)

    def test_users_without_builtin_provider(self) -> None:
        config = self.dir / "service.toml"
        text = config.read_text()
        config.write_text(text[: text.index("\n[builtin_provider]\n")])
        code, out, err = run("users", "list", "--state-dir", str(self.dir))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            f"appproxy: error: {config} has no [builtin_provider]: the service signs users in "
            "with an external OpenID provider; manage the users there\n",
        )

    def test_keys_rotate_changes_the_service_keyring(self) -> None:
        before = load_or_create_keyring(self.keyring, 1_700_000_000)
        self.ok("keys", "rotate", "--state-dir", str(self.dir))
        after = load_keyring(self.keyring)
        self.assertEqual(len(after.keys), 2)
        self.assertNotEqual(after.current.id, before.current.id)
        self.assertFalse((self.dir / "session-keys.json").exists())
        self.ok("keys", "rotate", "--config", str(self.dir / "service.toml"))
        self.assertEqual(len(load_keyring(self.keyring).keys), 3)

    def test_keys_rotate_creates_the_service_keyring(self) -> None:
        out = self.ok("keys", "rotate", "--state-dir", str(self.dir))
        ring = load_keyring(self.keyring)
        self.assertIn(str(self.keyring), out)
        listed = self.ok("keys", "list", "--state-dir", str(self.dir)).splitlines()
        self.assertEqual(listed[1].split()[0], ring.current.id)

    def test_keys_rotate_missing_state_dir(self) -> None:
        shutil.rmtree(self.config.state_dir)  # init's state database in it
        code, out, err = run("keys", "rotate", "--state-dir", str(self.dir))
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(
            err.startswith(f"appproxy: error: {self.config.state_dir} (service.state_dir in "),
            err,
        )
        self.assertEqual(err.count("\n"), 1)
        self.assertFalse(self.config.state_dir.exists())

    def test_policy_what_if_with_state_dir(self) -> None:
        argv = ("policy", "what-if", "--user", "alice", "--app", "demo", "--ip", "192.0.2.1")
        by_dir = self.ok(*argv, "--state-dir", str(self.dir))
        by_file = self.ok(*argv, "--config", str(self.dir / "service.toml"))
        self.assertEqual(by_dir, by_file)
        self.assertTrue(by_dir.startswith("Decision: allow"), by_dir)

    def test_invalid_configuration(self) -> None:
        config = self.dir / "service.toml"
        config.write_text(config.read_text().replace('state_dir = "state"', "state_dir = 3"))
        code, out, err = run("users", "list", "--state-dir", str(self.dir))
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith(f"appproxy: error: {config}: service.state_dir: "), err)
        self.assertEqual(err.count("\n"), 1)


class OwnershipTests(SynchronousTestCase):
    """
    Run as root on a state directory owned by the service's user, the
    commands leave what they write to that user (the service must read it).
    """

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("changing a file's owner needs root")
        self.dir = init_service_dir(Path(self.mktemp()))
        self.state = service_config(self.dir).state_dir
        os.chown(self.state, SERVICE_UID, SERVICE_UID)

    def assertServiceOwns(self, path: Path) -> None:
        info = path.stat()
        self.assertEqual((info.st_uid, info.st_gid), (SERVICE_UID, SERVICE_UID), path)
        self.assertEqual(stat.S_IMODE(info.st_mode), 0o600, path)

    def test_users_file(self) -> None:
        code, _, err = run(
            "users", "add", "alice", "--state-dir", str(self.dir), "--password-stdin",
            stdin=f"{PASSWORD}\n",
        )  # fmt: skip
        self.assertEqual((code, err), (0, ""))
        self.assertServiceOwns(self.state / "users.json")
        self.assertEqual(run("users", "disable", "alice", "--state-dir", str(self.dir))[0], 0)
        self.assertServiceOwns(self.state / "users.json")

    def test_keyring(self) -> None:
        for _ in range(2):
            code, _, err = run("keys", "rotate", "--state-dir", str(self.dir))
            self.assertEqual((code, err), (0, ""))
            self.assertServiceOwns(self.state / "session-keys.json")

    def test_root_owned_directory_unchanged(self) -> None:
        os.chown(self.state, 0, 0)
        self.assertEqual(run("keys", "rotate", "--state-dir", str(self.dir))[0], 0)
        self.assertEqual((self.state / "session-keys.json").stat().st_uid, 0)


class RefusalTests(SynchronousTestCase):
    """A directory that holds no service is refused, one line, status 1."""

    def assertRefused(self, directory: Path, message: str) -> None:
        for command in COMMANDS:
            before = sorted(directory.rglob("*")) if directory.exists() else None
            code, out, err = run(*command, "--state-dir", str(directory), stdin=f"{PASSWORD}\n")
            self.assertEqual((code, out), (1, ""), command)
            self.assertEqual(err, f"appproxy: error: {message}\n", command)
            after = sorted(directory.rglob("*")) if directory.exists() else None
            self.assertEqual(after, before, f"{command} wrote into {directory}")

    def test_no_service_toml(self) -> None:
        plain = Path(self.mktemp()).absolute()
        plain.mkdir()
        (plain / "users.json").write_text("{}")
        self.assertRefused(
            plain,
            f"--state-dir {plain} holds no service.toml, so it is not a directory "
            "'appproxy init' made: give that directory, or the service's configuration file "
            "with --config FILE",
        )

    def test_state_subdirectory(self) -> None:
        """The state directory of an init'ed directory: the message names the right one."""
        directory = init_service_dir(Path(self.mktemp()))
        self.assertRefused(
            directory / "state",
            f"--state-dir {directory / 'state'} holds no service.toml, its parent does: "
            f"use --state-dir {directory}",
        )

    def test_missing(self) -> None:
        missing = Path(self.mktemp()).absolute()
        self.assertRefused(
            missing,
            f"--state-dir {missing}: no such directory; give the directory 'appproxy init' "
            "made (it holds service.toml), or the service's configuration file with "
            "--config FILE",
        )

    def test_config_file_given_as_directory(self) -> None:
        config = init_service_dir(Path(self.mktemp())) / "service.toml"
        code, out, err = run("users", "list", "--state-dir", str(config))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            f"appproxy: error: --state-dir {config} is a file, not a directory: "
            f"for the service's configuration file use --config {config}\n",
        )

    def test_missing_config_file(self) -> None:
        missing = Path(self.mktemp()).absolute() / "service.toml"
        for command in COMMANDS:
            code, out, err = run(*command, "--config", str(missing), stdin=f"{PASSWORD}\n")
            self.assertEqual((code, out), (1, ""), command)
            self.assertEqual(
                err, f"appproxy: error: {missing}: cannot read: No such file or directory\n"
            )

    def test_one_of_them_required(self) -> None:
        for command in COMMANDS:
            code, out, err = run(*command)
            self.assertEqual((code, out), (2, ""), command)
            self.assertIn("one of the arguments --state-dir --config is required", err)
            code, out, err = run(*command, "--state-dir", "a", "--config", "b")
            self.assertEqual((code, out), (2, ""), command)
            self.assertIn("not allowed with argument", err)


def sign_in(offset: float = 0.0) -> SignInEvent:
    return SignInEvent(
        time=1_790_000_000.0 + offset,
        user="alice",
        app="demo",
        client_address="192.0.2.7",
        result="success",
        request_id=f"r{offset:.0f}",
    )


class LogsTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.dir = init_service_dir(Path(self.mktemp()))
        self.database = service_config(self.dir).state_dir / "appproxy.sqlite"

    async def write(self, *events: SignInEvent) -> None:
        db = await StateDatabase.open(self.database)
        for event in events:
            await db.record_sign_in(event)
        await db.close()

    async def test_header_row(self) -> None:
        await self.write(sign_in(), sign_in(1))
        code, out, err = run("logs", "sign-ins", "--state-dir", str(self.dir))
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), list(COLUMNS))
        self.assertEqual([line.split()[2] for line in lines[1:]], ["alice", "alice"])
        # The columns line up under the header.
        self.assertEqual(lines[1].index("alice"), lines[0].index("USER"))

    async def test_json_has_no_header(self) -> None:
        await self.write(sign_in())
        code, out, err = run(
            "logs", "sign-ins", "--config", str(self.dir / "service.toml"), "--json"
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(len(out.splitlines()), 1)
        self.assertTrue(out.startswith('{"time":'), out)

    async def test_empty_log_prints_the_header(self) -> None:
        await self.write()
        self.assertEqual(
            run("logs", "sign-ins", "--state-dir", str(self.dir))[:2],
            (0, "  ".join(COLUMNS) + "\n"),
        )

    def test_no_database_yet(self) -> None:
        # init makes the database only to record the connector it issues.
        directory = init_service_dir(Path(self.mktemp()), "--no-connector")
        database = service_config(directory).state_dir / "appproxy.sqlite"
        code, out, err = run("logs", "sign-ins", "--state-dir", str(directory))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            f"appproxy: error: {database}: no sign-in log yet (the service creates this "
            "state database when it starts with an [oidc] table)\n",
        )


class RealServiceTests(TestCase):
    """
    The installed C{appproxy} command and the real service daemon: a user
    added with C{users add --state-dir DIR} (DIR as C{appproxy init} made
    it) signs in through the built-in provider.
    """

    timeout = 60

    @inlineCallbacks
    def test_user_added_by_the_command_signs_in(self) -> Any:
        public, tunnel = daemons.free_ports(2)
        directory = yield daemons.init(
            self,
            "--port",
            str(public),
            "--tunnel-port",
            str(tunnel),
            "--listen",
            f"tcp:{public}:interface=127.0.0.1",
        )
        adding = daemons.spawn(
            self,
            "appproxy users add",
            [daemons.PYTHON, "-m", "appproxy", "users", "add", "alice", "--state-dir",
             str(directory), "--password-stdin"],
            directory.parent,
        )  # fmt: skip
        assert adding.transport is not None
        adding.transport.write(f"{PASSWORD}\n".encode())
        adding.transport.closeStdin()
        status = yield adding.ended()
        self.assertEqual(status, (0, None), adding.describe())
        listing = daemons.spawn(
            self,
            "appproxy users list",
            [daemons.PYTHON, "-m", "appproxy", "users", "list", "--state-dir", str(directory)],
            directory.parent,
        )
        status = yield listing.ended()
        self.assertEqual(status, (0, None), listing.describe())
        self.assertEqual(listing.stdout().splitlines()[1].split()[0], "alice")

        service = daemons.twistd(self, "appproxy", directory / "service.toml", directory.parent)
        yield service.wait_for("appproxy service ready")
        browser = Browser([(directory / "ca.pem").read_bytes()])
        self.addCleanup(browser.pool.closeCachedConnections)
        app_host = f"{daemons.APP}.{daemons.DOMAIN}"
        page = yield browser.go(f"https://{app_host}:{public}/")
        self.assertIn(f"login.{daemons.DOMAIN}:{public}", page.url)
        page = yield browser.submit(page, {"username": "alice", "password": PASSWORD}, follow=False)
        # Follow the way back to the app until its session cookie is set (no
        # connector runs: the app itself is not asked for).
        cookie = f"__Host-appproxy-{daemons.APP}"
        for _ in range(browser.max_redirects):
            target = browser.next_url(page)
            if target is None or cookie in browser.cookies(app_host):
                break
            page = yield browser.request("GET", target)
        self.assertIn(cookie, browser.cookies(app_host), f"{page.status} {page.text[:500]}")

        service.signal("TERM")
        yield service.ended(10.0)
