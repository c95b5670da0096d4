"""
Tests for L{appproxy.idp.users} and L{appproxy.idp.passwords}: the users
file and password hashes; and L{appproxy.cli.users}, the C{appproxy users}
commands.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import io
import json
import os
import stat
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.cli.users import add_users_command
from appproxy.idp import passwords, totp
from appproxy.idp.passwords import hash_password, verify_password_hash
from appproxy.idp.users import User, UserStore, add_user
from tests.servicedir import init_service_dir

# A real hash of "correct horse", made once: the tests need not pay scrypt
# for every user they write.
_HASH = hash_password("correct horse")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class PasswordHashTests(SynchronousTestCase):
    def test_format(self) -> None:
        parts = _HASH.split("$")
        self.assertEqual(parts[:4], ["scrypt", "16384", "8", "1"])
        self.assertEqual(len(base64.b64decode(parts[4])), 16)
        self.assertEqual(len(base64.b64decode(parts[5])), 32)

    def test_verify(self) -> None:
        self.assertTrue(verify_password_hash(_HASH, "correct horse"))
        self.assertFalse(verify_password_hash(_HASH, "correct horse "))
        self.assertFalse(verify_password_hash(_HASH, ""))

    def test_salted(self) -> None:
        self.assertNotEqual(hash_password("correct horse"), _HASH)

    def test_non_ascii_password(self) -> None:
        encoded = hash_password("pässwörd ✓")
        self.assertTrue(verify_password_hash(encoded, "pässwörd ✓"))
        self.assertFalse(verify_password_hash(encoded, "passwörd ✓"))

    def test_malformed(self) -> None:
        salt, key = _HASH.split("$")[4:]
        for bad in [
            "",
            "plain",
            f"bcrypt$16384$8$1${salt}${key}",
            f"scrypt$16383$8$1${salt}${key}",  # not a power of 2
            f"scrypt${2**21}$8$1${salt}${key}",  # too expensive
            f"scrypt$16384$99$1${salt}${key}",
            f"scrypt$16384$8$x${salt}${key}",
            f"scrypt$16384$8$1$!!!${key}",
            f"scrypt$16384$8$1${salt}",
        ]:
            self.assertRaises(ValueError, verify_password_hash, bad, "x")


class VerifyPasswordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls = 0
        real = passwords._scrypt

        def counting(*args: object, **kwargs: object) -> bytes:
            self.calls += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        self.patch(passwords, "_scrypt", counting)
        self.store = UserStore(
            {
                "alice": User(name="alice", password_hash=_HASH),
                "carol": User(name="carol", password_hash=_HASH, disabled=True),
            }
        )

    def test_right_password(self) -> None:
        user = self.store.verify_password("alice", "correct horse")
        self.assertIsNotNone(user)
        assert user is not None
        self.assertEqual(user.name, "alice")
        self.assertEqual(self.calls, 1)

    def test_wrong_password(self) -> None:
        self.assertIsNone(self.store.verify_password("alice", "wrong"))
        self.assertEqual(self.calls, 1)

    def test_unknown_user_costs_the_same(self) -> None:
        """No user enumeration by timing: an unknown user costs one scrypt too."""
        self.assertIsNone(self.store.verify_password("mallory", "correct horse"))
        self.assertEqual(self.calls, 1)

    def test_disabled_user(self) -> None:
        self.assertIsNone(self.store.verify_password("carol", "correct horse"))
        self.assertEqual(self.calls, 1)


class UserFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "users.json"

    def write(self, document: object, mode: int = 0o600) -> None:
        self.path.write_text(json.dumps(document))
        os.chmod(self.path, mode)

    def assertLoadFails(self, *fragments: str) -> None:
        with self.assertRaises(ValueError) as caught:
            UserStore.load(self.path)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertIn(str(self.path), message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_missing_file_is_empty(self) -> None:
        self.assertEqual(UserStore.load(self.path).users, {})

    def test_add_user(self) -> None:
        secret = totp.generate_secret()
        user = add_user(
            self.path,
            "alice",
            "correct horse",
            name="Alice Doe",
            email="alice@example.com",
            groups=("staff", "admins", "staff"),
            roles=["editor"],
            totp_secret=secret,
        )
        self.assertEqual(_mode(self.path), 0o600)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["users.json"])
        document = json.loads(self.path.read_text())
        self.assertEqual(document["version"], 1)
        entry = document["users"]["alice"]
        self.assertEqual(
            {k: v for k, v in entry.items() if k != "password"},
            {
                "name": "Alice Doe",
                "email": "alice@example.com",
                "groups": ["staff", "admins"],
                "roles": ["editor"],
                "totp": secret,
                "disabled": False,
            },
        )
        self.assertTrue(verify_password_hash(entry["password"], "correct horse"))
        loaded = UserStore.load(self.path).get("alice")
        self.assertEqual(loaded, user)

    def test_add_twice(self) -> None:
        add_user(self.path, "alice", "correct horse")
        with self.assertRaises(ValueError) as caught:
            add_user(self.path, "alice", "other password")
        self.assertIn("already exists", str(caught.exception))

    def test_add_invalid(self) -> None:
        cases: list[dict[str, Any]] = [
            {"username": "", "password": "correct horse"},
            {"username": "-alice", "password": "correct horse"},
            {"username": "al ice", "password": "correct horse"},
            {"username": "alice", "password": ""},
            {"username": "alice", "password": "correct horse", "email": "nope"},
            {"username": "alice", "password": "correct horse", "groups": ["a,b"]},
            {"username": "alice", "password": "correct horse", "name": "line\nbreak"},
            {"username": "alice", "password": "correct horse", "totp_secret": "!!"},
        ]
        for kwargs in cases:
            self.assertRaises(ValueError, add_user, self.path, **kwargs)
        self.assertFalse(self.path.exists())

    def test_group_readable_refused(self) -> None:
        self.write({"version": 1, "users": {}}, mode=0o640)
        self.assertLoadFails("chmod 600")

    def test_not_json(self) -> None:
        self.path.write_bytes(b"{nope")
        os.chmod(self.path, 0o600)
        self.assertLoadFails("not valid JSON")

    def test_structure_errors(self) -> None:
        good = {"password": _HASH}
        for document, fragment in [
            ([], "top level"),
            ({"users": {}}, "version"),
            ({"version": 2, "users": {}}, "version"),
            ({"version": 1, "users": []}, "'users'"),
            ({"version": 1, "users": {}, "extra": 1}, "'extra'"),
            ({"version": 1, "users": {"alice": {}}}, "password"),
            ({"version": 1, "users": {"alice": {**good, "shoe": 1}}}, "'shoe'"),
            ({"version": 1, "users": {"alice": {**good, "groups": "a"}}}, "'groups'"),
            ({"version": 1, "users": {"alice": {**good, "disabled": 1}}}, "'disabled'"),
            ({"version": 1, "users": {"alice": {**good, "totp": "!!"}}}, "alice"),
            ({"version": 1, "users": {"alice": {"password": "plain"}}}, "scrypt"),
            ({"version": 1, "users": {"a b": good}}, "user name"),
        ]:
            self.write(document)
            self.assertLoadFails(fragment)

    def test_repr_hides_secrets(self) -> None:
        user = User(name="alice", password_hash=_HASH, totp_secret="JBSWY3DPEHPK3PXP")
        self.assertNotIn(_HASH, repr(user))
        self.assertNotIn("JBSWY3DPEHPK3PXP", repr(user))
        self.assertIn("alice", repr(user))

    def test_save_replaces_atomically(self) -> None:
        """The file is replaced (a new inode), never rewritten in place."""
        add_user(self.path, "alice", "correct horse")
        before = self.path.stat().st_ino
        store = UserStore.load(self.path)
        store.without_user("alice").save(self.path)
        self.assertNotEqual(self.path.stat().st_ino, before)
        self.assertEqual(UserStore.load(self.path).users, {})
        self.assertEqual(_mode(self.path), 0o600)


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,20}", fullmatch=True)
_labels = st.text(
    alphabet=st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters=","),
    min_size=1,
    max_size=20,
).filter(str.strip)
_users = st.builds(
    User,
    name=_names,
    display_name=st.none() | _labels,
    email=st.none() | st.just("someone@example.com"),
    groups=st.lists(_labels, max_size=3, unique=True).map(tuple),
    roles=st.lists(_labels, max_size=3, unique=True).map(tuple),
    totp_secret=st.none() | st.just("JBSWY3DPEHPK3PXP"),
    disabled=st.booleans(),
    password_hash=st.just(_HASH),
)


class RoundTripTests(SynchronousTestCase):
    @given(st.lists(_users, max_size=5, unique_by=lambda user: user.name))
    def test_json_round_trip(self, users_: list[User]) -> None:
        store = UserStore({user.name: user for user in users_})
        document = json.loads(json.dumps(store.to_json()))
        self.assertEqual(UserStore.from_json(document), store)


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        # The directory 'appproxy init' made; the service reads state/users.json.
        self.dir = init_service_dir(Path(self.mktemp()))
        self.path = self.dir / "state" / "users.json"
        parser = argparse.ArgumentParser(prog="appproxy")
        add_users_command(parser.add_subparsers())
        self.parser = parser

    def run_command(self, *argv: str, stdin: str = "") -> str:
        self.patch(sys, "stdin", io.StringIO(stdin))
        args = self.parser.parse_args(["users", *argv])
        out = io.StringIO()
        self.assertEqual(args.func(args, out), 0)
        return out.getvalue()

    def fails(self, *argv: str, stdin: str = "") -> str:
        with self.assertRaises(ValueError) as caught:
            self.run_command(*argv, stdin=stdin)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        return message

    def add_alice(self) -> None:
        self.run_command(
            "add",
            "alice",
            "--state-dir",
            str(self.dir),
            "--name",
            "Alice Doe",
            "--email",
            "alice@example.com",
            "--groups",
            "staff, admins",
            "--roles",
            "editor",
            "--password-stdin",
            stdin="correct horse\n",
        )

    def test_add(self) -> None:
        self.add_alice()
        user = UserStore.load(self.path).get("alice")
        assert user is not None
        self.assertEqual(user.display_name, "Alice Doe")
        self.assertEqual(user.email, "alice@example.com")
        self.assertEqual(user.groups, ("staff", "admins"))
        self.assertEqual(user.roles, ("editor",))
        self.assertIsNone(user.totp_secret)
        self.assertTrue(verify_password_hash(user.password_hash, "correct horse"))
        self.assertEqual(_mode(self.path), 0o600)

    def test_add_existing(self) -> None:
        self.add_alice()
        message = self.fails("add", "alice", "--state-dir", str(self.dir), stdin="whatever12\n")
        self.assertIn("already exists", message)

    def test_password_rules(self) -> None:
        for stdin in ["\n", "", "short\n"]:
            self.fails("add", "bob", "--state-dir", str(self.dir), stdin=stdin)
        self.assertFalse(self.path.exists())

    def test_missing_state_dir(self) -> None:
        message = self.fails(
            "add", "bob", "--state-dir", str(self.dir / "nope"), stdin="correct horse\n"
        )
        self.assertIn("nope", message)

    def add_bob_on_a_tty(self, *answers: str) -> argparse.Namespace:
        """C{users add bob}'s arguments, stdin a terminal that types C{answers}."""
        typed = iter(answers)

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

        self.patch(getpass, "getpass", lambda prompt="": next(typed))
        args = self.parser.parse_args(["users", "add", "bob", "--state-dir", str(self.dir)])
        self.patch(sys, "stdin", Tty(""))
        return args

    def test_tty_asks_twice(self) -> None:
        args = self.add_bob_on_a_tty("correct horse", "correct horse")
        self.assertEqual(args.func(args, io.StringIO()), 0)
        self.assertIn("bob", UserStore.load(self.path).users)

    def test_tty_mismatch(self) -> None:
        args = self.add_bob_on_a_tty("correct horse", "correct horse!")
        with self.assertRaises(ValueError) as caught:
            args.func(args, io.StringIO())
        self.assertIn("do not match", str(caught.exception))
        self.assertFalse(self.path.exists())

    def test_passwd(self) -> None:
        self.add_alice()
        before = UserStore.load(self.path).get("alice")
        self.run_command("passwd", "alice", "--state-dir", str(self.dir), stdin="battery staple\n")
        after = UserStore.load(self.path).get("alice")
        assert before is not None and after is not None
        self.assertTrue(verify_password_hash(after.password_hash, "battery staple"))
        self.assertFalse(verify_password_hash(after.password_hash, "correct horse"))
        self.assertEqual(attrs_without_hash(after), attrs_without_hash(before))

    def test_passwd_unknown_user(self) -> None:
        message = self.fails("passwd", "bob", "--state-dir", str(self.dir), stdin="x" * 10)
        self.assertIn("bob", message)

    def test_totp(self) -> None:
        self.add_alice()
        out = self.run_command("totp", "alice", "--state-dir", str(self.dir))
        user = UserStore.load(self.path).get("alice")
        assert user is not None and user.totp_secret is not None
        self.assertIn(f"secret: {user.totp_secret}", out)
        uri = next(line.split()[-1] for line in out.splitlines() if "otpauth://" in line)
        parts = urllib.parse.urlsplit(uri)
        self.assertEqual(
            (parts.scheme, parts.netloc, parts.path), ("otpauth", "totp", "/appproxy:alice")
        )
        self.assertEqual(
            urllib.parse.parse_qs(parts.query),
            {"secret": [user.totp_secret], "issuer": ["appproxy"]},
        )
        self.assertEqual(len(totp.decode_secret(user.totp_secret)), 20)
        # A second run makes a new secret.
        self.run_command("totp", "alice", "--state-dir", str(self.dir))
        again = UserStore.load(self.path).get("alice")
        assert again is not None
        self.assertNotEqual(again.totp_secret, user.totp_secret)

    def test_totp_disable(self) -> None:
        self.add_alice()
        self.run_command("totp", "alice", "--state-dir", str(self.dir))
        out = self.run_command("totp", "alice", "--disable", "--state-dir", str(self.dir))
        user = UserStore.load(self.path).get("alice")
        assert user is not None
        self.assertIsNone(user.totp_secret)
        self.assertNotIn("secret", out)

    def test_disable_enable(self) -> None:
        self.add_alice()
        self.run_command("disable", "alice", "--state-dir", str(self.dir))
        user = UserStore.load(self.path).get("alice")
        assert user is not None
        self.assertTrue(user.disabled)
        self.run_command("enable", "alice", "--state-dir", str(self.dir))
        user = UserStore.load(self.path).get("alice")
        assert user is not None
        self.assertFalse(user.disabled)

    def test_remove(self) -> None:
        self.add_alice()
        self.run_command("remove", "alice", "--state-dir", str(self.dir))
        self.assertEqual(UserStore.load(self.path).users, {})
        self.assertIn("alice", self.fails("remove", "alice", "--state-dir", str(self.dir)))

    def test_list(self) -> None:
        self.assertEqual(
            self.run_command("list", "--state-dir", str(self.dir)), f"No users in {self.path}.\n"
        )
        self.add_alice()
        add_user(self.path, "bob", "correct horse", totp_secret=totp.generate_secret())
        self.run_command("disable", "bob", "--state-dir", str(self.dir))
        lines = self.run_command("list", "--state-dir", str(self.dir)).splitlines()
        self.assertEqual(
            lines[0].split(), ["USER", "NAME", "EMAIL", "GROUPS", "ROLES", "TOTP", "STATE"]
        )
        self.assertEqual(
            lines[1].split(),
            [
                "alice",
                "Alice",
                "Doe",
                "alice@example.com",
                "staff,admins",
                "editor",
                "no",
                "enabled",
            ],
        )
        self.assertEqual(lines[2].split(), ["bob", "-", "-", "-", "-", "yes", "disabled"])
        self.assertNotIn("scrypt", "\n".join(lines))


def attrs_without_hash(user: User) -> dict[str, object]:
    return {
        "name": user.name,
        "display_name": user.display_name,
        "email": user.email,
        "groups": user.groups,
        "roles": user.roles,
        "totp_secret": user.totp_secret,
        "disabled": user.disabled,
    }
