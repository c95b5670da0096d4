"""
Tests for L{appproxy.access.keyring}, L{appproxy.access.keyring_file} and
L{appproxy.cli.keys}.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import stat
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.keyring import CookieKey, KeyRing, KeyRingError
from appproxy.access.keyring_file import (
    KEYRING_FILENAME,
    load_keyring,
    load_or_create_keyring,
    save_keyring,
)
from appproxy.cli.keys import add_keys_command
from appproxy.cli.main import main
from tests.servicedir import init_service_dir

NOW = 1_700_000_000
SECRET_A = bytes(range(32))
SECRET_B = bytes(range(100, 132))


def key(
    key_id: str, created: int = NOW, retired: bool = False, secret: bytes = SECRET_A
) -> CookieKey:
    return CookieKey(id=key_id, secret=secret, created=created, retired=retired)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def entry(key_id: str = "k1", **overrides: object) -> dict[str, object]:
    item: dict[str, object] = {
        "id": key_id,
        "created": NOW,
        "secret": b64(SECRET_A),
        "retired": False,
    }
    item.update(overrides)
    return item


class CookieKeyTests(SynchronousTestCase):
    def test_repr_hides_secret(self) -> None:
        """The secret is in no form in the C{repr} of a key or a ring."""
        k = key("k1")
        ring = KeyRing(keys=(k,))
        for text in (repr(k), repr(ring), str(ring)):
            self.assertIn("k1", text)
            self.assertNotIn(repr(SECRET_A), text)
            self.assertNotIn(b64(SECRET_A), text)
            self.assertNotIn(SECRET_A.hex(), text)

    def test_secret_length(self) -> None:
        """A secret of other than 32 bytes is refused, without showing it."""
        with self.assertRaises(ValueError) as caught:
            key("k1", secret=b"s3cr3t-s3cr3t")
        self.assertNotIn("s3cr3t", str(caught.exception))

    def test_bad_id(self) -> None:
        """A key id must be usable inside a cookie value (no dots, not empty)."""
        for bad in ("", "a.b", "a b", "x" * 65):
            self.assertRaises(ValueError, key, bad)


class KeyRingTests(SynchronousTestCase):
    def test_current_is_newest_active(self) -> None:
        """The current key is the active key with the highest creation time."""
        ring = KeyRing(keys=(key("old", NOW), key("new", NOW + 10), key("mid", NOW + 5)))
        self.assertEqual(ring.current.id, "new")
        ring = KeyRing(
            keys=(key("old", NOW), key("new", NOW + 10, retired=True), key("mid", NOW + 5))
        )
        self.assertEqual(ring.current.id, "mid")

    def test_current_tie_goes_to_later_in_file(self) -> None:
        ring = KeyRing(keys=(key("a", NOW), key("b", NOW)))
        self.assertEqual(ring.current.id, "b")

    def test_find_only_active(self) -> None:
        ring = KeyRing(keys=(key("gone", retired=True), key("live")))
        self.assertEqual(ring.find("live"), key("live"))
        self.assertIsNone(ring.find("gone"))
        self.assertIsNone(ring.find("nope"))

    def test_duplicate_ids(self) -> None:
        with self.assertRaises(KeyRingError) as caught:
            KeyRing(keys=(key("a"), key("a", NOW + 1)))
        self.assertIn("duplicate", str(caught.exception))

    def test_no_active_key(self) -> None:
        self.assertRaises(KeyRingError, KeyRing, keys=())
        self.assertRaises(KeyRingError, KeyRing, keys=(key("a", retired=True),))

    def test_create(self) -> None:
        ring = KeyRing.create(NOW)
        self.assertEqual(len(ring.keys), 1)
        self.assertEqual(ring.current.created, NOW)
        self.assertEqual(len(ring.current.id), 8)
        self.assertEqual(len(ring.current.secret), 32)
        self.assertNotEqual(KeyRing.create(NOW).current.secret, ring.current.secret)

    def test_rotated(self) -> None:
        """Rotation adds a fresh key, which becomes current; old keys stay active."""
        ring = KeyRing(keys=(key("first"),))
        rotated = ring.rotated(NOW + 60)
        self.assertEqual(len(rotated.keys), 2)
        self.assertEqual(rotated.keys[0], ring.keys[0])
        new = rotated.current
        self.assertNotEqual(new.id, "first")
        self.assertRegex(new.id, r"\A[A-Za-z0-9_-]{8}\Z")
        self.assertEqual(new.created, NOW + 60)
        self.assertNotEqual(new.secret, SECRET_A)
        self.assertIsNotNone(rotated.find("first"))
        self.assertEqual(ring.rotated(NOW, secret=SECRET_B).current.secret, SECRET_B)

    def test_rotated_same_second(self) -> None:
        """A key made in the same second as the current one still becomes current."""
        ring = KeyRing(keys=(key("first", NOW),))
        self.assertNotEqual(ring.rotated(NOW).current.id, "first")

    def test_rotated_ids_unique(self) -> None:
        ring = KeyRing.create(NOW)
        for step in range(50):
            ring = ring.rotated(NOW + step)
        self.assertEqual(len({k.id for k in ring.keys}), 51)

    def test_retired(self) -> None:
        ring = KeyRing(keys=(key("a", NOW), key("b", NOW + 1)))
        retired = ring.retired("a")
        self.assertTrue(retired.keys[0].retired)
        self.assertIsNone(retired.find("a"))
        self.assertEqual(retired.current.id, "b")
        self.assertIs(retired.retired("a"), retired)

    def test_retire_current_makes_older_current(self) -> None:
        ring = KeyRing(keys=(key("a", NOW), key("b", NOW + 1))).retired("b")
        self.assertEqual(ring.current.id, "a")

    def test_retire_unknown(self) -> None:
        ring = KeyRing(keys=(key("a"),))
        with self.assertRaises(KeyRingError) as caught:
            ring.retired("zz")
        self.assertIn("'zz'", str(caught.exception))

    def test_retire_only_active(self) -> None:
        ring = KeyRing(keys=(key("old", retired=True), key("a")))
        with self.assertRaises(KeyRingError) as caught:
            ring.retired("a")
        self.assertEqual(str(caught.exception), "cannot retire the only active key; rotate first")

    def test_without(self) -> None:
        ring = KeyRing(keys=(key("a", retired=True), key("b")))
        self.assertEqual(ring.without("a"), KeyRing(keys=(key("b"),)))
        self.assertRaises(KeyRingError, ring.without, "b")
        self.assertRaises(KeyRingError, ring.without, "zz")


class FileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / KEYRING_FILENAME

    def write(self, content: str | bytes, mode: int = 0o600) -> None:
        data = content.encode("utf-8") if isinstance(content, str) else content
        self.path.write_bytes(data)
        os.chmod(self.path, mode)

    def write_json(self, document: object, mode: int = 0o600) -> None:
        self.write(json.dumps(document), mode)

    def assertRefused(self, problem: str) -> KeyRingError:
        """Loading fails with one line naming the file and C{problem}."""
        with self.assertRaises(KeyRingError) as caught:
            load_keyring(self.path)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(f"{self.path}: "), message)
        self.assertIn(problem, message)
        self.assertNotIn(b64(SECRET_A), message)
        self.assertIsInstance(caught.exception, ValueError)
        return caught.exception

    def test_round_trip(self) -> None:
        ring = KeyRing(
            keys=(key("a", NOW, retired=True), key("b", NOW + 5, secret=SECRET_B), key("c"))
        )
        save_keyring(self.path, ring)
        self.assertEqual(load_keyring(self.path), ring)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_file_format(self) -> None:
        """The file is the documented JSON, secrets in base64url."""
        save_keyring(self.path, KeyRing(keys=(key("a"),)))
        document = json.loads(self.path.read_text())
        self.assertEqual(
            document,
            {
                "version": 1,
                "keys": [{"id": "a", "created": NOW, "secret": b64(SECRET_A), "retired": False}],
            },
        )

    def test_padded_secret_accepted(self) -> None:
        padded = base64.urlsafe_b64encode(SECRET_A).decode("ascii")
        self.write_json({"version": 1, "keys": [entry(secret=padded)]})
        self.assertEqual(load_keyring(self.path).current.secret, SECRET_A)

    def test_save_replaces_atomically(self) -> None:
        """Saving leaves no temporary file behind and replaces the old file."""
        save_keyring(self.path, KeyRing(keys=(key("a"),)))
        save_keyring(self.path, KeyRing(keys=(key("b"),)))
        self.assertEqual(load_keyring(self.path).current.id, "b")
        self.assertEqual(os.listdir(self.dir), [KEYRING_FILENAME])

    def test_save_over_loose_file_tightens_mode(self) -> None:
        self.write("{}", 0o644)
        save_keyring(self.path, KeyRing(keys=(key("a"),)))
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_save_error(self) -> None:
        missing = self.dir / "missing" / KEYRING_FILENAME
        with self.assertRaises(KeyRingError) as caught:
            save_keyring(missing, KeyRing(keys=(key("a"),)))
        self.assertTrue(str(caught.exception).startswith(f"{missing}: cannot write"))

    def test_rotation_survives_save_and_load(self) -> None:
        """Keys rotate without loss: every key and secret comes back."""
        ring = load_or_create_keyring(self.path, NOW)
        for step in range(1, 4):
            ring = ring.rotated(NOW + step)
            save_keyring(self.path, ring)
            loaded = load_keyring(self.path)
            self.assertEqual(loaded, ring)
            self.assertEqual(loaded.current, ring.current)
        ring = ring.retired(ring.keys[0].id)
        save_keyring(self.path, ring)
        self.assertEqual(load_keyring(self.path), ring)

    def test_create_when_missing(self) -> None:
        ring = load_or_create_keyring(self.path, NOW)
        self.assertEqual(len(ring.keys), 1)
        self.assertEqual(ring.current.created, NOW)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertEqual(load_keyring(self.path), ring)
        self.assertEqual(os.listdir(self.dir), [KEYRING_FILENAME])

    def test_create_mode_despite_umask(self) -> None:
        old = os.umask(0)
        try:
            load_or_create_keyring(self.path, NOW)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_existing_is_loaded_not_replaced(self) -> None:
        ring = KeyRing(keys=(key("a"),))
        save_keyring(self.path, ring)
        self.assertEqual(load_or_create_keyring(self.path, NOW + 100), ring)

    def test_existing_bad_file_is_not_replaced(self) -> None:
        self.write("not json")
        self.assertRaises(KeyRingError, load_or_create_keyring, self.path, NOW)
        self.assertEqual(self.path.read_text(), "not json")

    def test_create_in_missing_directory(self) -> None:
        missing = self.dir / "missing" / KEYRING_FILENAME
        with self.assertRaises(KeyRingError) as caught:
            load_or_create_keyring(missing, NOW)
        self.assertTrue(str(caught.exception).startswith(f"{missing}: cannot create"))

    def test_missing(self) -> None:
        self.assertRefused("cannot read: No such file or directory")

    def test_directory(self) -> None:
        self.path.mkdir()
        self.assertRefused("is not a regular file")

    def test_readable_by_group(self) -> None:
        self.write_json({"version": 1, "keys": [entry()]}, 0o640)
        self.assertRefused("is readable by other users; chmod 600 it")

    def test_readable_by_others(self) -> None:
        self.write_json({"version": 1, "keys": [entry()]}, 0o604)
        self.assertRefused("is readable by other users; chmod 600 it")

    def test_writable_by_group(self) -> None:
        self.write_json({"version": 1, "keys": [entry()]}, 0o620)
        self.assertRefused("is writable by other users; chmod 600 it")

    def test_owner_only_modes_accepted(self) -> None:
        self.write_json({"version": 1, "keys": [entry()]}, 0o400)
        self.assertEqual(load_keyring(self.path).current.id, "k1")

    def test_not_json(self) -> None:
        self.write('{"version": 1, ')
        self.assertRefused("not JSON")

    def test_not_utf8(self) -> None:
        self.write(b"\xff\xfe{}")
        self.assertRefused("not JSON")

    def test_wrong_shapes(self) -> None:
        cases: list[tuple[object, str]] = [
            ([], "wrong shape"),
            ({"keys": []}, "wrong shape"),
            ({"version": 1, "keys": [], "extra": 1}, "wrong shape"),
            ({"version": 2, "keys": [entry()]}, "unsupported version 2"),
            ({"version": True, "keys": [entry()]}, "unsupported version"),
            ({"version": 1, "keys": {}}, '"keys" is not a list'),
            ({"version": 1, "keys": ["k1"]}, "keys[0] is not an object"),
            ({"version": 1, "keys": [{"id": "k1"}]}, "keys[0] lacks created, retired, secret"),
            ({"version": 1, "keys": [entry(extra=1)]}, "unknown field(s) extra"),
            ({"version": 1, "keys": [entry(id="a.b")]}, "id must be"),
            ({"version": 1, "keys": [entry(created="now")]}, "created must be an integer"),
            ({"version": 1, "keys": [entry(created=True)]}, "created must be an integer"),
            ({"version": 1, "keys": [entry(retired="no")]}, "retired must be true or false"),
            ({"version": 1, "keys": [entry(secret=5)]}, "secret is not base64url"),
            ({"version": 1, "keys": [entry(secret="a+b/")]}, "secret is not base64url"),
        ]
        for document, problem in cases:
            self.write_json(document)
            self.assertRefused(problem)

    def test_secret_not_32_bytes(self) -> None:
        short = b64(SECRET_A[:31])
        self.write_json({"version": 1, "keys": [entry(secret=short)]})
        error = self.assertRefused("key 'k1': secret is not 32 bytes")
        self.assertNotIn(short, str(error))

    def test_duplicate_id(self) -> None:
        self.write_json({"version": 1, "keys": [entry("a"), entry("a")]})
        self.assertRefused("duplicate key id 'a'")

    def test_no_active_key(self) -> None:
        self.write_json({"version": 1, "keys": [entry(retired=True)]})
        self.assertRefused("no active (non-retired) key")
        self.write_json({"version": 1, "keys": []})
        self.assertRefused("no active (non-retired) key")

    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Any content either loads or gives a one-line error naming the file."""
        self.write(data)
        try:
            load_keyring(self.path)
        except KeyRingError as e:
            self.assertNotIn("\n", str(e))
            self.assertTrue(str(e).startswith(f"{self.path}: "))


class KeysCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        # The directory 'appproxy init' made; the service's ring is in state/.
        self.dir = init_service_dir(Path(self.mktemp()))
        self.path = self.dir / "state" / KEYRING_FILENAME
        self.parser = argparse.ArgumentParser(prog="appproxy")
        add_keys_command(self.parser.add_subparsers())

    def run_keys(self, *argv: str) -> tuple[int, str]:
        args = self.parser.parse_args(["keys", *argv, "--state-dir", str(self.dir)])
        out = io.StringIO()
        code = args.func(args, out)
        return code, out.getvalue()

    def test_list(self) -> None:
        save_keyring(
            self.path,
            KeyRing(keys=(key("old", 0, retired=True), key("mid", 86400), key("new", NOW))),
        )
        code, out = self.run_keys("list")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "CREATED", "(UTC)", "STATE"])
        self.assertEqual(
            [line.split() for line in lines[1:]],
            [
                ["old", "1970-01-01T00:00:00Z", "retired"],
                ["mid", "1970-01-02T00:00:00Z", "active"],
                ["new", "2023-11-14T22:13:20Z", "current"],
            ],
        )
        self.assertNotIn(b64(SECRET_A), out)

    def test_list_missing(self) -> None:
        with self.assertRaises(ValueError) as caught:
            self.run_keys("list")
        self.assertIn(str(self.path), str(caught.exception))

    def test_rotate(self) -> None:
        save_keyring(self.path, KeyRing(keys=(key("old", NOW),)))
        code, out = self.run_keys("rotate")
        self.assertEqual(code, 0)
        ring = load_keyring(self.path)
        self.assertEqual(len(ring.keys), 2)
        self.assertNotEqual(ring.current.id, "old")
        self.assertIn(ring.current.id, out)
        self.assertIn("SIGHUP", out.replace("kill -HUP", "SIGHUP"))
        self.assertIn("reload", out)

    def test_rotate_creates(self) -> None:
        code, out = self.run_keys("rotate")
        self.assertEqual(code, 0)
        ring = load_keyring(self.path)
        self.assertEqual(len(ring.keys), 1)
        self.assertIn(ring.current.id, out)

    def test_retire_and_remove(self) -> None:
        save_keyring(self.path, KeyRing(keys=(key("old", NOW), key("new", NOW + 1))))
        code, out = self.run_keys("retire", "old")
        self.assertEqual(code, 0)
        self.assertIn("old", out)
        self.assertIsNone(load_keyring(self.path).find("old"))
        code, out = self.run_keys("retire", "old")
        self.assertEqual(code, 0)
        self.assertIn("already retired", out)
        code, out = self.run_keys("remove", "old")
        self.assertEqual(code, 0)
        self.assertEqual([k.id for k in load_keyring(self.path).keys], ["new"])

    def test_retire_only_key(self) -> None:
        save_keyring(self.path, KeyRing(keys=(key("only"),)))
        with self.assertRaises(ValueError) as caught:
            self.run_keys("retire", "only")
        self.assertEqual(
            str(caught.exception),
            f"{self.path}: cannot retire the only active key; rotate first",
        )

    def test_remove_active(self) -> None:
        save_keyring(self.path, KeyRing(keys=(key("a"), key("b"))))
        with self.assertRaises(ValueError) as caught:
            self.run_keys("remove", "a")
        self.assertIn("retire it first", str(caught.exception))
        self.assertEqual(len(load_keyring(self.path).keys), 2)

    def test_new_ids_never_start_with_dash(self) -> None:
        """Key ids (8 characters) never start with '-', which would read as an option."""
        ring = KeyRing.create(NOW)
        for step in range(600):
            ring = ring.rotated(NOW + step)
        ids = [k.id for k in ring.keys]
        self.assertEqual(len(set(ids)), 601)
        self.assertEqual([i for i in ids if i.startswith("-") or len(i) != 8], [])

    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_id_starting_with_dash(self) -> None:
        """
        A key id that starts with '-' (made before ids avoided it) is given
        after '--', and the error without it says so.
        """
        save_keyring(self.path, KeyRing(keys=(key("-9gDNiTF", NOW), key("new", NOW + 1))))
        code, _, err = self.run_main("keys", "retire", "-9gDNiTF", "--state-dir", str(self.dir))
        self.assertEqual(code, 2)
        self.assertIn("the following arguments are required: KEY_ID", err)
        self.assertIn("after '--'", err)
        code, out, err = self.run_main(
            "keys", "retire", "--state-dir", str(self.dir), "--", "-9gDNiTF"
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn("Retired key -9gDNiTF", out)
        self.assertIsNone(load_keyring(self.path).find("-9gDNiTF"))
        code, out, _ = self.run_main(
            "keys", "remove", "--state-dir", str(self.dir), "--", "-9gDNiTF"
        )
        self.assertEqual(code, 0)
        self.assertEqual([k.id for k in load_keyring(self.path).keys], ["new"])

    def test_no_hint_without_dash(self) -> None:
        code, _, err = self.run_main("keys", "retire", "--state-dir", str(self.dir))
        self.assertEqual(code, 2)
        self.assertIn("the following arguments are required: KEY_ID", err)
        self.assertNotIn("'--'", err)

    def test_subcommand_required(self) -> None:
        with redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit):
            self.parser.parse_args(["keys"])
        self.assertIn("required", err.getvalue())

    def test_state_dir_required(self) -> None:
        with redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit):
            self.parser.parse_args(["keys", "list"])
        self.assertIn("--state-dir", err.getvalue())
