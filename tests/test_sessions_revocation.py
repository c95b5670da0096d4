"""
Sessions that can be ended: sign-out, C{appproxy sessions revoke}, and
C{appproxy users remove|disable} end a session for every copy of its
cookie.

The pure revocation set, the state database's records and revocations
(real SQLite), the service's registry that keeps the set current from
another process's writes, and the real daemons (C{twistd appproxy} and
C{twistd appproxy-connector} as subprocesses, the C{appproxy} command as
separate processes).
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server

from appproxy.access.revocation import RevocationSet
from appproxy.access.session import Session
from appproxy.cli.main import main
from appproxy.gate.sessions import SessionRegistry
from appproxy.idp.users import add_user
from appproxy.state.database import StateDatabase
from appproxy.state.schema import DATABASE_NAME, migrate_now
from appproxy.state.sessions import (
    USER_REVOCATION_LIFETIME,
    Revocation,
    SessionRecord,
    insert_session,
    list_sessions,
    read_revocations,
    revoke,
)
from tests.browser import Browser
from tests.servicedir import init_service_dir, service_config
from tests.test_daemons import APP, DOMAIN, PYTHON, _Backend, free_ports, init, spawn, twistd

NOW = 1_700_000_000


def session(user: str = "alice", issued_at: int = NOW - 100, **fields: Any) -> Session:
    return Session(
        app="web",
        user=user,
        subject=user,
        issuer="https://login.example",
        auth_time=issued_at,
        issued_at=issued_at,
        expires_at=issued_at + 3600,
        **fields,
    )


def revocation(kind: Any, subject: str, at: int = NOW, seq: int = 1) -> Revocation:
    return Revocation(seq=seq, kind=kind, subject=subject, revoked_at=at, expires_at=at + 3600)


class RevocationSetTests(SynchronousTestCase):
    def test_by_session_id(self) -> None:
        """A revoked id revokes every copy of that session, and no other."""
        revocations = RevocationSet()
        mine, other = session(), session()
        self.assertFalse(revocations.revoked(mine))
        revocations.add(revocation("session", mine.session_id))
        self.assertTrue(revocations.revoked(mine))
        self.assertFalse(revocations.revoked(other))

    def test_by_user_before_a_time(self) -> None:
        """A user's sessions issued before the revocation's second are revoked, later ones not."""
        revocations = RevocationSet()
        revocations.add(revocation("user", "alice", at=NOW))
        self.assertTrue(revocations.revoked(session(issued_at=NOW - 1)))
        self.assertFalse(revocations.revoked(session(issued_at=NOW)))
        self.assertFalse(revocations.revoked(session(issued_at=NOW + 5)))
        self.assertFalse(revocations.revoked(session(user="bob", issued_at=NOW - 1)))
        # A later revocation moves the cut; an earlier one taken afterwards does not.
        revocations.add(revocation("user", "alice", at=NOW + 10, seq=2))
        revocations.add(revocation("user", "alice", at=NOW - 50, seq=3))
        self.assertTrue(revocations.revoked(session(issued_at=NOW + 5)))

    def test_last_seq_and_purge(self) -> None:
        revocations = RevocationSet()
        revocations.add_all(
            [revocation("session", "a", seq=4), revocation("user", "bob", at=NOW + 7200, seq=9)]
        )
        revocations.add(revocation("session", "b", seq=0))  # written locally
        self.assertEqual((revocations.last_seq, len(revocations)), (9, 3))
        self.assertEqual(revocations.purge(NOW + 3600), 2)
        self.assertEqual(len(revocations), 1)

    @given(
        st.lists(
            st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 100), st.booleans()),
            max_size=20,
        ),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 100),
    )
    def test_matches_the_rule(
        self, made: list[tuple[str, int, bool]], user: str, issued_at: int
    ) -> None:
        """
        Whatever the revocations, in any order: a session is revoked if and
        only if its id was revoked or its user was revoked after it was issued.
        """
        probe = session(user=user, issued_at=issued_at, session_id="probe")
        revocations = RevocationSet()
        expected = False
        for seq, (subject, at, by_user) in enumerate(made, 1):
            if by_user:
                revocations.add(revocation("user", subject, at=at, seq=seq))
                expected |= subject == user and issued_at < at
            else:
                revocations.add(revocation("session", f"s-{subject}", at=at, seq=seq))
        self.assertEqual(revocations.revoked(probe), expected)


def _database(testcase: SynchronousTestCase) -> Path:
    path = Path(testcase.mktemp())
    path.mkdir()
    database = path / DATABASE_NAME
    migrate_now(database)
    return database


def _record(database: Path, record: SessionRecord) -> None:
    with sqlite3.connect(database) as connection:
        insert_session(connection.cursor(), record)


def _recorded(id: str, user: str = "alice", issued_at: int = NOW - 100) -> SessionRecord:
    return SessionRecord(
        id=id,
        user=user,
        app="web",
        issued_at=issued_at,
        expires_at=issued_at + 3600,
        client_address="192.0.2.7",
    )


class StoredSessionsTests(SynchronousTestCase):
    """Records and revocations in a real SQLite state database."""

    def test_list_and_revoke(self) -> None:
        database = _database(self)
        _record(database, _recorded("s1"))
        _record(database, _recorded("s2", issued_at=NOW))  # the revocation's own second
        _record(database, _recorded("s3", user="bob"))
        listed = list_sessions(database, NOW)
        self.assertEqual(next((r.id, r.user, r.revoked) for r in listed), ("s1", "alice", False))
        self.assertEqual(len(listed), 3)

        self.assertEqual(revoke(database, NOW, user="alice"), 2)
        self.assertEqual(
            {r.id: r.revoked for r in list_sessions(database, NOW)},
            {"s1": True, "s2": True, "s3": False},
        )
        self.assertEqual([r.id for r in list_sessions(database, NOW, "bob")], ["s3"])
        self.assertEqual(revoke(database, NOW, session="s3"), 1)
        self.assertRaises(ValueError, revoke, database, NOW, session="nonexistent")

        revocations = read_revocations(database, NOW)
        self.assertEqual(
            [(r.kind, r.subject) for r in revocations],
            [("user", "alice"), ("session", "s2"), ("session", "s3")],
        )
        self.assertEqual(revocations[0].expires_at, NOW + USER_REVOCATION_LIFETIME)
        self.assertEqual(sorted(r.seq for r in revocations), [r.seq for r in revocations])
        # The set made of them refuses s2, issued within the revocation's second.
        revoked = RevocationSet()
        revoked.add_all(revocations)
        self.assertTrue(revoked.revoked(session(issued_at=NOW, session_id="s2")))
        self.assertFalse(revoked.revoked(session(issued_at=NOW, session_id="s-new")))

    def test_missing_database(self) -> None:
        with self.assertRaises(ValueError) as caught:
            list_sessions(Path(self.mktemp()) / DATABASE_NAME, NOW)
        self.assertIn("no such state database", str(caught.exception))


class CommandTests(SynchronousTestCase):
    """C{appproxy sessions} and C{appproxy users disable|remove}, in this process."""

    def run_command(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([*argv, "--state-dir", str(self.directory)])
        return code, out.getvalue(), err.getvalue()

    def setUp(self) -> None:
        self.directory = init_service_dir(Path(self.mktemp()))
        state = service_config(self.directory).state_dir
        add_user(state / "users.json", "carol", "correct horse")
        add_user(state / "users.json", "alice", "correct horse")
        self.database = state / DATABASE_NAME

    def test_no_database_yet(self) -> None:
        self.database.unlink()  # init made it, to record its connector: as before any start
        code, _, err = self.run_command("sessions", "list")
        self.assertEqual(code, 1)
        self.assertIn("no state database yet", err)
        # Removing a user before the service ever ran has no sessions to end.
        code, out, _ = self.run_command("users", "remove", "carol")
        self.assertEqual((code, out), (0, "Removed user carol\n"))

    def test_disable_ends_sessions_and_list_shows_them(self) -> None:
        migrate_now(self.database)
        now = int(time.time())
        for id, user in (("c1", "carol"), ("c2", "carol"), ("a1", "alice")):
            _record(self.database, _recorded(id, user, issued_at=now - 60))
        code, out, _ = self.run_command("users", "disable", "carol")
        self.assertEqual((code, out), (0, "Disabled user carol\nEnded 2 session(s) of carol\n"))
        code, out, _ = self.run_command("sessions", "list")
        lines = out.splitlines()
        self.assertEqual(
            lines[0].split(), ["ID", "USER", "APP", "ISSUED", "EXPIRES", "CLIENT", "STATE"]
        )
        self.assertEqual(
            sorted((line.split()[0], line.split()[-1]) for line in lines[1:]),
            [("a1", "active"), ("c1", "revoked"), ("c2", "revoked")],
        )
        # Enabling the user again does not bring old sessions back.
        self.run_command("users", "enable", "carol")
        code, out, _ = self.run_command("sessions", "list", "--user", "carol", "--json")
        self.assertEqual({json.loads(line)["state"] for line in out.splitlines()}, {"revoked"})
        code, _, err = self.run_command("sessions", "revoke", "--session", "unknown")
        self.assertEqual(code, 1)
        self.assertIn("no session 'unknown'", err)
        code, _, err = self.run_command("sessions", "revoke")
        self.assertEqual(code, 2)


class SessionRegistryTests(TestCase):
    """The service's registry, over a real state database, with a test clock."""

    @inlineCallbacks
    def registry(self, path: Path | None = None) -> Any:
        database_path = _database(self) if path is None else path
        database = yield StateDatabase.open(database_path)
        self.addCleanup(database.close)
        clock = task.Clock()
        clock.advance(NOW)
        registry = SessionRegistry(database, clock, interval=1.0, max_staleness=30.0)
        self.addCleanup(registry.stop)
        return registry, clock, database_path

    @inlineCallbacks
    def test_another_process_revokes(self) -> Any:
        """
        A revocation written by another connection (the command line) is
        taken in by the next poll; until then the session stands.
        """
        registry, _clock, path = yield self.registry()
        registry.load_at_startup(path)
        mine = session(issued_at=NOW - 10)
        yield registry.record_issued(mine, "192.0.2.7")
        self.assertEqual(registry.standing(mine, NOW), "valid")
        self.assertEqual(revoke(path, NOW, user="alice"), 1)
        self.assertEqual(registry.standing(mine, NOW), "valid")
        yield registry.poll()
        self.assertEqual(registry.standing(mine, NOW), "revoked")
        self.assertEqual(registry.standing(session(issued_at=NOW), NOW), "valid")

    @inlineCallbacks
    def test_end_is_immediate_here_and_recorded(self) -> Any:
        registry, _clock, path = yield self.registry()
        registry.load_at_startup(path)
        mine = session()
        ended = yield registry.end(mine, NOW)
        self.assertTrue(ended)
        self.assertEqual(registry.standing(mine, NOW), "revoked")
        self.assertEqual(registry.revocations.last_seq, 0, "only what is read back moves it")
        self.assertEqual([r.subject for r in read_revocations(path, NOW)], [mine.session_id])

    @inlineCallbacks
    def test_unreadable_at_start_denies(self) -> Any:
        """
        Revocations that cannot be read at start: said in the log, and every
        session's standing is unknown (the gate answers 503) until a read works.
        """
        registry, clock, path = yield self.registry()
        events: list[Any] = []
        observer: Any = events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        registry.load_at_startup(path.parent / "missing" / DATABASE_NAME)
        critical = [e for e in events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertIn("signed-in requests are refused", critical[0]["log_format"])
        self.assertEqual(registry.standing(session(), NOW), "unknown")
        yield registry.poll()
        self.assertEqual(registry.standing(session(), NOW), "valid")
        # Not read for longer than max_staleness: unknown again.
        clock.advance(31)
        self.assertEqual(registry.standing(session(), NOW + 31), "unknown")


class InProcessTests(TestCase):
    """The service in this process (L{tests.signin_deployment}), quick to start."""

    timeout = 60

    @inlineCallbacks
    def test_copy_taken_before_sign_out_is_refused(self) -> Any:
        """
        A copy of the cookie made before sign-out is sent to sign in after
        it, at once (the signing-out process revokes before it answers).
        """
        from tests.signin_deployment import LOGIN, start_builtin
        from tests.test_signin import WEB, sign_in

        d = yield start_builtin(self)
        host = urlsplit(WEB).hostname or ""
        browser = d.browser()
        yield sign_in(browser, f"{WEB}/")
        cookie = browser.cookies(host)["__Host-appproxy-web"]
        copy = d.browser()
        copy.set_cookie(host, "__Host-appproxy-web", cookie)
        page = yield copy.request("GET", f"{WEB}/")
        self.assertEqual(page.status, 200)
        yield browser.go(f"{WEB}/.appproxy/sign-out")
        page = yield copy.request("GET", f"{WEB}/")
        self.assertEqual(page.status, 302)
        self.assertEqual(urlsplit(page.header("location")).hostname, LOGIN)
        # A POST with it gets the 401 page, not the app.
        page = yield copy.request("POST", f"{WEB}/form", body=b"a=1")
        self.assertEqual(page.status, 401)


# -- the real daemons --------------------------------------------------------

#: Bound on the service noticing another process's revocation.
NOTICE_TIMEOUT = 15.0


class DaemonTests(TestCase):
    """
    C{appproxy init}, the service and connector as twistd daemons, a backend;
    sessions ended by sign-out, by C{appproxy sessions revoke} and by
    C{appproxy users remove} run as separate processes.
    """

    timeout = 120

    @inlineCallbacks
    def start(self) -> Any:
        site: Any = server.Site(_Backend())
        backend = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        public, tunnel = free_ports(2)
        self.state = yield init(
            self,
            "--port",
            str(public),
            "--tunnel-port",
            str(tunnel),
            "--listen",
            f"tcp:{public}:interface=127.0.0.1",
            "--internal-url",
            f"http://127.0.0.1:{backend.getHost().port}/",  # type: ignore[attr-defined]
        )
        self.url = f"https://{APP}.{DOMAIN}:{public}/"
        self.ca = (self.state / "ca.pem").read_bytes()
        self.service = twistd(self, "appproxy", self.state / "service.toml", self.state.parent)
        yield self.service.wait_for("appproxy service ready")
        self.assertIn("Session revocations loaded: 0 in force", self.service.output())
        connector = twistd(
            self,
            "appproxy-connector",
            self.state / "connector" / "connector.toml",
            self.state.parent,
        )
        yield connector.wait_for("appproxy connector started")

    @inlineCallbacks
    def appproxy(self, *argv: str, stdin: str | None = None) -> Any:
        """Run C{appproxy ARGV --state-dir STATE}; its stdout."""
        process = spawn(
            self,
            "appproxy " + " ".join(argv),
            [PYTHON, "-m", "appproxy", *argv, "--state-dir", str(self.state)],
            self.state.parent,
        )
        status = yield process.ended()
        self.assertEqual(status, (0, None), process.describe())
        return process.stdout()

    @inlineCallbacks
    def sign_in(self, user: str = "alice", password: str = "correct horse") -> Any:
        """Sign in with a new browser (until the connector is up); a copy of its cookie."""
        browser = Browser([self.ca])
        self.addCleanup(browser.pool.closeCachedConnections)
        page = yield browser.go(self.url)
        self.assertIn(f"login.{DOMAIN}", page.url)
        page = yield browser.submit(page, {"username": user, "password": password})
        deadline = reactor.seconds() + NOTICE_TIMEOUT
        while page.status != 200 and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.2, lambda: None)  # the connector is still dialling
            page = yield browser.go(self.url)
        self.assertEqual(page.status, 200, page.text[:300])
        return browser, browser.cookies(f"{APP}.{DOMAIN}")[f"__Host-appproxy-{APP}"]

    @inlineCallbacks
    def with_copy(self, cookie: str) -> Any:
        """GET the app with a copy of the cookie, in another client; the page."""
        other = Browser([self.ca])
        self.addCleanup(other.pool.closeCachedConnections)
        other.set_cookie(f"{APP}.{DOMAIN}", f"__Host-appproxy-{APP}", cookie)
        page = yield other.request("GET", self.url)
        return page

    def assertSentToSignIn(self, page: Any) -> None:
        self.assertEqual(page.status, 302, page.text[:300])
        self.assertEqual(urlsplit(page.header("location")).hostname, f"login.{DOMAIN}")

    @inlineCallbacks
    def refused_within(self, cookie: str, what: str) -> Any:
        """Wait, bounded, until the copy is sent to sign in; how long it took."""
        started = time.monotonic()
        while True:
            page = yield self.with_copy(cookie)
            if page.status == 302 or time.monotonic() - started > NOTICE_TIMEOUT:
                break
            self.assertEqual(page.status, 200, page.text[:300])
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertSentToSignIn(page)
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, NOTICE_TIMEOUT, f"{what} took effect after {elapsed:.1f} s")
        return elapsed

    @inlineCallbacks
    def test_sessions_end_for_every_copy(self) -> Any:
        yield self.start()
        add_user(self.state / "state" / "users.json", "alice", "correct horse")

        # Sign-out ends the session for a copy of the cookie taken before it.
        browser, cookie = yield self.sign_in()
        page = yield self.with_copy(cookie)
        self.assertEqual(page.status, 200)
        listed = yield self.appproxy("sessions", "list", "--json")
        sessions = [json.loads(line) for line in listed.splitlines()]
        self.assertEqual(
            [(s["user"], s["app"], s["state"]) for s in sessions], [("alice", APP, "active")]
        )
        self.assertEqual(sessions[0]["client_address"], "127.0.0.1")
        page = yield browser.request("GET", f"{self.url}.appproxy/sign-out")
        self.assertNotIn(f"__Host-appproxy-{APP}", browser.cookies(f"{APP}.{DOMAIN}"))
        page = yield self.with_copy(cookie)
        self.assertSentToSignIn(page)
        listed = yield self.appproxy("sessions", "list")
        self.assertIn("revoked", listed.splitlines()[1])
        self.assertTrue(listed.startswith("ID "), listed)

        # "appproxy sessions revoke --user", another process, reaches the running service.
        _, cookie = yield self.sign_in()
        page = yield self.with_copy(cookie)
        self.assertEqual(page.status, 200)
        out = yield self.appproxy("sessions", "revoke", "--user", "alice")
        self.assertIn("Revoked the sessions of alice issued until now (1 in force)", out)
        yield self.refused_within(cookie, "sessions revoke --user")

        # A new sign-in after that works; "sessions revoke --session ID" ends it.
        _, cookie = yield self.sign_in()
        listed = yield self.appproxy("sessions", "list", "--json", "--user", "alice")
        active = [json.loads(line) for line in listed.splitlines()]
        active = [s["id"] for s in active if s["state"] == "active"]
        self.assertEqual(len(active), 1, listed)
        yield self.appproxy("sessions", "revoke", "--session", active[0])
        yield self.refused_within(cookie, "sessions revoke --session")

        # Removing the user ends the next one.
        _, cookie = yield self.sign_in()
        page = yield self.with_copy(cookie)
        self.assertEqual(page.status, 200)
        out = yield self.appproxy("users", "remove", "alice")
        self.assertIn("Ended 1 session(s) of alice", out)
        yield self.refused_within(cookie, "users remove")
        self.assertIn("Session revocations", self.service.output())
