"""
Tests for L{appproxy.state.database} (with its L{appproxy.state.schema} and
L{appproxy.state.queries}), on real SQLite files.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from appproxy.state.database import StateDatabase, StateDatabaseClosed
from appproxy.state.queries import read_sign_ins
from appproxy.state.schema import APPLICATION_ID, DATABASE_NAME, SCHEMA_VERSION
from appproxy.state.signins import SignInEvent

T0 = 1_795_000_000.0


def event(offset: float, request_id: str = "", **changes: object) -> SignInEvent:
    """A sign-in event C{offset} seconds after L{T0}."""
    fields: dict[str, object] = {
        "time": T0 + offset,
        "user": "alice",
        "app": "wiki",
        "client_address": "192.0.2.7",
        "result": "success",
        "request_id": request_id or f"req-{offset}",
    }
    fields.update(changes)
    return SignInEvent(**fields)  # type: ignore[arg-type]


class _DatabaseTestCase(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / DATABASE_NAME

    async def open(self, path: Path | None = None, cache_size: int = 10_000) -> StateDatabase:
        """Open the database; close it at cleanup."""
        db = await StateDatabase.open(path or self.path, cache_size=cache_size)
        self.addCleanup(db.close)
        return db


class OpenTests(_DatabaseTestCase):
    async def test_created_private_and_versioned(self) -> None:
        """
        The file is created mode 0600, in WAL mode, with the current schema
        version and appproxy's application id.
        """
        db = await self.open()
        self.assertTrue(await db.use_once("hand-off", "x", 200, 100))
        for path in self.dir.iterdir():  # the database, its -wal and -shm files
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600, path)
        self.assertEqual(len(list(self.dir.iterdir())), 3)
        await db.close()
        with sqlite3.connect(self.path) as connection:
            self.assertEqual(
                connection.execute("PRAGMA user_version").fetchone(), (SCHEMA_VERSION,)
            )
            self.assertEqual(
                connection.execute("PRAGMA application_id").fetchone(), (APPLICATION_ID,)
            )
            self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone(), ("wal",))
        connection.close()

    async def test_reopen_keeps_data(self) -> None:
        db = await StateDatabase.open(self.path)
        await db.record_sign_in(event(1))
        await db.close()
        db = await self.open()
        self.assertEqual(await db.sign_ins(), [event(1)])

    async def test_existing_mode_left_alone(self) -> None:
        """Only a file appproxy creates gets its mode; an existing one is not touched."""
        self.path.touch(mode=0o640)
        self.path.chmod(0o640)
        await self.open()
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o640)

    def write_pragmas(self, version: int, application_id: int) -> None:
        connection = sqlite3.connect(self.path)
        connection.execute("CREATE TABLE other (x)")
        connection.execute(f"PRAGMA user_version = {version}")
        connection.execute(f"PRAGMA application_id = {application_id}")
        connection.commit()
        connection.close()

    async def test_newer_version_refused(self) -> None:
        self.write_pragmas(SCHEMA_VERSION + 1, APPLICATION_ID)
        with self.assertRaises(ValueError) as raised:
            await StateDatabase.open(self.path)
        message = str(raised.exception)
        self.assertIn(str(self.path), message)
        self.assertIn("newer appproxy", message)
        self.assertNotIn("\n", message)
        # Nothing was changed.
        connection = sqlite3.connect(self.path)
        self.assertEqual(
            connection.execute("PRAGMA user_version").fetchone(), (SCHEMA_VERSION + 1,)
        )
        connection.close()
        with self.assertRaises(ValueError):
            read_sign_ins(self.path)

    async def test_foreign_database_refused(self) -> None:
        """A SQLite database of something else is neither migrated nor used."""
        for version, application_id in [(0, 0), (3, 0), (0, 1234)]:
            self.path.unlink(missing_ok=True)
            self.write_pragmas(version, application_id)
            with self.assertRaises(ValueError) as raised:
                await StateDatabase.open(self.path)
            self.assertEqual(
                str(raised.exception), f"{self.path} is not an appproxy state database"
            )
            connection = sqlite3.connect(self.path)
            tables = connection.execute("SELECT name FROM sqlite_master").fetchall()
            connection.close()
            self.assertEqual(tables, [("other",)])

    async def test_not_sqlite_refused(self) -> None:
        self.path.write_bytes(b"this is not a database, it is a text file\n" * 100)
        with self.assertRaises(ValueError) as raised:
            await StateDatabase.open(self.path)
        self.assertIn(str(self.path), str(raised.exception))
        self.assertNotIn("\n", str(raised.exception))

    async def test_unwritable_directory(self) -> None:
        with self.assertRaises(OSError):
            await StateDatabase.open(self.dir / "missing" / DATABASE_NAME)

    async def test_closed(self) -> None:
        """After close, calls fail with StateDatabaseClosed; close is idempotent."""
        db = await self.open()
        await db.close()
        await db.close()
        with self.assertRaises(StateDatabaseClosed):
            await db.record_sign_in(event(1))
        with self.assertRaises(StateDatabaseClosed):
            await db.use_once("hand-off", "x", 200, 100)

    async def test_close_waits_for_writes(self) -> None:
        db = await StateDatabase.open(self.path)
        writes = [db.record_sign_in(event(i)) for i in range(50)]
        closing = db.close()
        self.assertFalse(closing.called)
        await closing
        self.assertTrue(all(write.called for write in writes))
        await gatherResults(writes)
        self.assertEqual(len(read_sign_ins(self.path)), 50)


class SignInTests(_DatabaseTestCase):
    async def test_record_and_read_back(self) -> None:
        db = await self.open()
        events = [
            event(2, result="failure", step="id-token", user=None, detail="bad signature"),
            event(1),
            event(3, result="blocked", step="policy", policy="block-outside"),
            event(3, request_id="same-time-later"),
        ]
        for e in events:
            await db.record_sign_in(e)
        ordered = [events[1], events[0], events[2], events[3]]
        self.assertEqual(await db.sign_ins(), ordered)
        self.assertEqual(read_sign_ins(self.path), ordered)

        self.assertEqual(await db.sign_ins(since=T0 + 2), ordered[1:])
        self.assertEqual(read_sign_ins(self.path, since=T0 + 2), ordered[1:])
        # The newest N, oldest first.
        self.assertEqual(await db.sign_ins(limit=2), ordered[2:])
        self.assertEqual(read_sign_ins(self.path, limit=2), ordered[2:])
        self.assertEqual(await db.sign_ins(since=T0 + 1.5, limit=10), ordered[1:])
        self.assertEqual(read_sign_ins(self.path, limit=0), [])

    async def test_purge_sign_ins(self) -> None:
        db = await self.open()
        for offset in [1, 2, 3]:
            await db.record_sign_in(event(offset))
        self.assertEqual(await db.purge_sign_ins(T0 + 2), 1)
        self.assertEqual(await db.sign_ins(), [event(2), event(3)])

    async def test_unicode_and_control_characters_kept(self) -> None:
        db = await self.open()
        e = event(1, user="zoë\n\x00", detail="line\r\nbreak \u2028")
        await db.record_sign_in(e)
        self.assertEqual(read_sign_ins(self.path), [e])

    async def test_read_only_while_open(self) -> None:
        """read_sign_ins works while the service has the database open, and changes nothing."""
        db = await self.open()
        await db.record_sign_in(event(1))
        before = self.path.stat().st_mtime_ns
        self.assertEqual(read_sign_ins(self.path), [event(1)])
        self.assertEqual(self.path.stat().st_mtime_ns, before)
        await db.record_sign_in(event(2))
        self.assertEqual(read_sign_ins(self.path), [event(1), event(2)])

    def test_read_missing(self) -> None:
        with self.assertRaises(ValueError) as raised:
            read_sign_ins(self.path)
        self.assertIn(str(self.path), str(raised.exception))
        self.assertFalse(self.path.exists())

    def test_read_not_appproxy(self) -> None:
        self.path.write_bytes(b"")
        with self.assertRaises(ValueError) as raised:
            read_sign_ins(self.path)
        self.assertIn("not an appproxy state database", str(raised.exception))
        self.path.write_bytes(b"garbage " * 1000)
        with self.assertRaises(ValueError) as raised:
            read_sign_ins(self.path)
        self.assertIn(str(self.path), str(raised.exception))
        self.assertNotIn("\n", str(raised.exception))


class ReferenceTests(_DatabaseTestCase):
    async def test_store_and_load(self) -> None:
        db = await self.open()
        groups = [f"group-{i}" for i in range(300)]
        key = await db.store_reference("groups", groups, 1000)
        self.assertRegex(key, r"\A[A-Za-z0-9_-]{22}\Z")
        other = await db.store_reference("groups", groups, 1000)
        self.assertNotEqual(key, other)
        self.assertEqual(await db.load_reference("groups", key, 999), groups)
        # Another kind, another key, or expired: nothing.
        self.assertIsNone(await db.load_reference("id-token", key, 999))
        self.assertIsNone(await db.load_reference("groups", "nope", 999))
        self.assertIsNone(await db.load_reference("groups", key, 1000))
        self.assertIsNone(db.cached_reference("groups", key, 1000))

    async def test_load_from_database(self) -> None:
        """A reference stored by another process (or before a restart) is found."""
        db = await StateDatabase.open(self.path)
        key = await db.store_reference("id-token", {"token": "eyJ..."}, 1000)
        await db.close()
        db = await self.open()
        self.assertIsNone(db.cached_reference("id-token", key, 10))
        self.assertEqual(await db.load_reference("id-token", key, 10), {"token": "eyJ..."})
        # Now it is in memory.
        self.assertEqual(db.cached_reference("id-token", key, 10), {"token": "eyJ..."})

    async def test_cache_serves_without_database(self) -> None:
        db = await self.open()
        key = await db.store_reference("groups", ["a", "b"], 1000)
        await db.close()
        self.assertEqual(db.cached_reference("groups", key, 500), ["a", "b"])
        self.assertEqual(await db.load_reference("groups", key, 500), ["a", "b"])
        # Each call gets its own copy: mutating it does not change the cache.
        value = db.cached_reference("groups", key, 500)
        assert isinstance(value, list)
        value.append("admin")
        self.assertEqual(db.cached_reference("groups", key, 500), ["a", "b"])
        # Not cached and the database is closed: the load fails.
        with self.assertRaises(StateDatabaseClosed):
            await db.load_reference("groups", "other", 500)

    async def test_cache_is_bounded_lru(self) -> None:
        db = await self.open(cache_size=2)
        k1 = await db.store_reference("g", [1], 1000)
        k2 = await db.store_reference("g", [2], 1000)
        self.assertEqual(db.cached_reference("g", k1, 0), [1])  # k1 now most recent
        k3 = await db.store_reference("g", [3], 1000)
        self.assertIsNone(db.cached_reference("g", k2, 0))
        self.assertEqual(db.cached_reference("g", k1, 0), [1])
        self.assertEqual(db.cached_reference("g", k3, 0), [3])
        # Evicted from memory, still in the database.
        self.assertEqual(await db.load_reference("g", k2, 0), [2])

    async def test_refused_values(self) -> None:
        db = await self.open()
        with self.assertRaises(ValueError):
            await db.store_reference("g", None, 1000)
        with self.assertRaises(TypeError):
            await db.store_reference("g", {1, 2}, 1000)
        with self.assertRaises(ValueError):
            await db.store_reference("g", float("nan"), 1000)

    async def test_purge_expired(self) -> None:
        db = await self.open()
        old = await db.store_reference("g", ["old"], 100)
        new = await db.store_reference("g", ["new"], 300)
        self.assertTrue(await db.use_once("hand-off", "h1", 100, 50))
        self.assertTrue(await db.use_once("hand-off", "h2", 300, 50))
        self.assertEqual(await db.purge_expired(100), 2)
        self.assertEqual(await db.purge_expired(100), 0)
        self.assertIsNone(db.cached_reference("g", old, 0))
        self.assertIsNone(await db.load_reference("g", old, 0))
        self.assertEqual(await db.load_reference("g", new, 200), ["new"])
        await db.close()
        connection = sqlite3.connect(self.path)
        self.assertEqual(connection.execute("SELECT key FROM refs").fetchall(), [(new,)])
        self.assertEqual(connection.execute("SELECT id FROM used_ids").fetchall(), [("h2",)])
        connection.close()


class UseOnceTests(_DatabaseTestCase):
    async def test_only_first_use(self) -> None:
        db = await self.open()
        results = await gatherResults([db.use_once("hand-off", "abc", 200, 100) for _ in range(10)])
        self.assertEqual(results, [True] + [False] * 9)
        self.assertFalse(await db.use_once("hand-off", "abc", 200, 150))
        # Another id, or the same id of another kind: first use.
        self.assertTrue(await db.use_once("hand-off", "abd", 200, 100))
        self.assertTrue(await db.use_once("device-code", "abc", 200, 100))

    async def test_across_connections(self) -> None:
        """Two pools on one file (two service processes) share the used ids."""
        one = await self.open()
        two = await self.open()
        self.assertTrue(await one.use_once("hand-off", "abc", 200, 100))
        self.assertFalse(await two.use_once("hand-off", "abc", 200, 100))

    async def test_expired(self) -> None:
        db = await self.open()
        # Already expired: never usable.
        self.assertFalse(await db.use_once("hand-off", "late", 100, 100))
        self.assertTrue(await db.use_once("hand-off", "a", 150, 100))
        self.assertTrue(await db.use_once("hand-off", "b", 300, 100))
        # Any use_once purges expired rows.
        self.assertTrue(await db.use_once("hand-off", "c", 400, 200))
        await db.close()
        connection = sqlite3.connect(self.path)
        rows = connection.execute("SELECT id FROM used_ids ORDER BY id").fetchall()
        connection.close()
        self.assertEqual(rows, [("b",), ("c",)])
