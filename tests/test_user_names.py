"""
User names compared the way app assignment compares them (case-insensitively):
the built-in provider refuses a name that differs from an existing one only in
case, and C{appproxy sessions list|revoke --user} match names that way, refusing
a user nobody knows.  Also session ids that start with C{-} on the command line.

In this process, on a directory C{appproxy init} made and a real SQLite state
database.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.revocation import RevocationSet
from appproxy.access.session import Session
from appproxy.cli.main import main
from appproxy.idp.users import UserStore, add_user
from appproxy.state.schema import DATABASE_NAME, migrate_now
from appproxy.state.sessions import SessionRecord, insert_session, read_revocations
from tests.servicedir import init_service_dir, service_config


def _session(id: str, user: str, issued_at: int) -> Session:
    return Session(
        app="demo",
        user=user,
        subject=user,
        issuer="https://login.example.test",
        auth_time=issued_at,
        issued_at=issued_at,
        expires_at=issued_at + 3600,
        session_id=id,
    )


class UserNameTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = init_service_dir(Path(self.mktemp()))
        state = service_config(self.directory).state_dir
        self.users = state / "users.json"
        add_user(self.users, "alice", "correct horse")
        add_user(self.users, "carol", "correct horse")
        self.database = state / DATABASE_NAME
        self.now = int(time.time())

    def run_command(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([*argv, "--state-dir", str(self.directory)])
        return code, out.getvalue(), err.getvalue()

    def record(self, id: str, user: str) -> None:
        migrate_now(self.database)
        record = SessionRecord(
            id=id,
            user=user,
            app="demo",
            issued_at=self.now - 60,
            expires_at=self.now + 3600,
            client_address="192.0.2.7",
        )
        with sqlite3.connect(self.database) as connection:
            insert_session(connection.cursor(), record)

    def revocations(self) -> RevocationSet:
        revocations = RevocationSet()
        revocations.add_all(read_revocations(self.database, self.now + 1))
        return revocations

    def test_add_differing_only_in_case_refused(self) -> None:
        """
        C{ALICE} next to C{alice} would be let in wherever C{alice} is
        assigned: refused, by the library and the command, before the
        password is asked for; the file is unchanged.
        """
        before = self.users.read_bytes()
        with self.assertRaises(ValueError) as caught:
            add_user(self.users, "ALICE", "other password")
        self.assertIn("'alice' already exists", str(caught.exception))
        self.assertIn("differ only in case", str(caught.exception))
        code, out, err = self.run_command("users", "add", "Alice", "--password-stdin")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("user 'alice' already exists", err)
        self.assertEqual(self.users.read_bytes(), before)
        self.assertEqual(sorted(UserStore.load(self.users).users), ["alice", "carol"])

    def test_sign_in_looks_the_name_up_exactly(self) -> None:
        store = UserStore.load(self.users)
        self.assertIsNotNone(store.verify_password("alice", "correct horse"))
        self.assertIsNone(store.verify_password("ALICE", "correct horse"))
        self.assertEqual(store.same_name("ALICE"), "alice")
        self.assertIsNone(store.same_name("bob"))

    def test_names_differing_only_in_case_cannot_sign_in(self) -> None:
        """
        A file that holds both (written by hand, or by an older version):
        neither signs in until one is removed.
        """
        store = UserStore.load(self.users)
        alice = store.existing("alice")
        both = store.with_user(attrs.evolve(alice, name="ALICE"))
        self.assertIsNone(both.verify_password("ALICE", "correct horse"))
        self.assertIsNone(both.verify_password("alice", "correct horse"))
        self.assertIsNotNone(both.verify_password("carol", "correct horse"))
        # Nor does a sign-in the provider remembers (its session, a token).
        self.assertEqual((both.get("alice"), both.get("ALICE")), (None, None))
        alone = both.without_user("alice")
        self.assertIsNotNone(alone.verify_password("ALICE", "correct horse"))

    def test_revoke_matches_as_assignment_does(self) -> None:
        """
        C{--user ALICE} ends alice's sessions (the service's revocation set
        then refuses her cookie), and says whose.
        """
        self.record("a1", "alice")
        self.record("b1", "bob")
        code, out, err = self.run_command("sessions", "revoke", "--user", "ALICE")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("Revoked the sessions of alice issued until now (1 in force)", out)
        revocations = self.revocations()
        self.assertTrue(revocations.revoked(_session("a1", "alice", self.now - 60)))
        self.assertFalse(revocations.revoked(_session("b1", "bob", self.now - 60)))
        code, out, _ = self.run_command("sessions", "list", "--user", "Alice", "--json")
        self.assertEqual(
            [(line["id"], line["state"]) for line in map(json.loads, out.splitlines())],
            [("a1", "revoked")],
        )

    def test_revoke_a_user_of_the_provider_without_sessions(self) -> None:
        """A user the built-in provider knows: recorded, though no session is in force."""
        migrate_now(self.database)
        code, out, _ = self.run_command("sessions", "revoke", "--user", "Carol")
        self.assertEqual(code, 0)
        self.assertIn("Revoked the sessions of carol issued until now (0 in force)", out)

    def test_revoke_unknown_user(self) -> None:
        """Nobody of that name: an error, and nothing written."""
        self.record("a1", "alice")
        code, out, err = self.run_command("sessions", "revoke", "--user", "nobody")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("no user 'nobody'", err)
        self.assertIn("nothing revoked", err)
        self.assertEqual(read_revocations(self.database, self.now), [])

    def test_session_id_starting_with_dash(self) -> None:
        """
        An id that starts with '-' (made before ids avoided it) is given as
        C{--session=ID}; given apart, the error says how.
        """
        self.record("-abcdefghijklmnopqrstu", "alice")
        code, _, err = self.run_command("sessions", "revoke", "--session", "-abcdefghijklmnopqrstu")
        self.assertEqual(code, 2)
        self.assertIn("expected one argument", err)
        self.assertIn("--session=-abc", err)
        code, out, err = self.run_command("sessions", "revoke", "--session=-abcdefghijklmnopqrstu")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("Revoked session -abcdefghijklmnopqrstu", out)
        revocations = self.revocations()
        self.assertTrue(
            revocations.revoked(_session("-abcdefghijklmnopqrstu", "alice", self.now - 60))
        )

    def test_revoke_despite_an_unusable_users_file(self) -> None:
        """The recorded sessions still match: a broken users file must not stop an end."""
        self.record("a1", "alice")
        self.users.write_text("not json")
        code, out, _ = self.run_command("sessions", "revoke", "--user", "Alice")
        self.assertEqual(code, 0)
        self.assertIn("Revoked the sessions of alice issued until now (1 in force)", out)
