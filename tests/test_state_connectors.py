"""
Tests for L{appproxy.state.connectors} (and the modules it re-exports:
L{appproxy.state.admission}, L{appproxy.state.audit},
L{appproxy.state.enrolment_tokens}) on real SQLite files.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.enterprise import adbapi
from twisted.internet.defer import gatherResults
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.daemon import pki
from appproxy.state import connectors as c
from appproxy.state.schema import (
    BUSY_TIMEOUT_MS,
    DATABASE_NAME,
    SCHEMA_VERSION,
    configure_connection,
    migrate_now,
)
from appproxy.tunnel import enrolment

T0 = 1_795_000_000.0
DAY = 86400.0
_CA = pki.generate_ca("state connectors test CA")


def _cert(connector_id: str, group: str = "default") -> bytes:
    return pki.issue_connector_certificate(_CA, connector_id, group).cert_pem


def _serial(cert_pem: bytes) -> str:
    return pki.certificate_serial(cert_pem)


class _Database:
    """A migrated state database file and connections to it."""

    def __init__(self, case: SynchronousTestCase) -> None:
        directory = Path(case.mktemp())
        directory.mkdir()
        self.path = directory / DATABASE_NAME
        migrate_now(self.path)
        self.case = case

    def connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        configure_connection(connection)
        self.case.addCleanup(connection.close)
        return connection

    def record(self, conn: sqlite3.Connection, connector_id: str, group: str = "default") -> bytes:
        cert_pem = _cert(connector_id, group)
        c.record_connector(
            conn,
            connector_id=connector_id,
            group=group,
            host_name=f"{connector_id}.example",
            version="1.0",
            cert_pem=cert_pem,
            actor="tests",
            address="192.0.2.1",
            now=T0,
        )
        return cert_pem


class SchemaTests(SynchronousTestCase):
    def test_tables(self) -> None:
        db = _Database(self)
        conn = db.connect()
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone(), (SCHEMA_VERSION,))
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        for table in ("connectors", "connector_certificates", "enrolment_tokens", "audit"):
            self.assertIn(table, tables)
        with self.assertRaises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO connectors (id, grp, host_name, version, state, serial, not_after,"
                " changed) VALUES ('x', 'g', 'h', 'v', 'broken', 's', 1, 1)"
            )

    def test_same_prefix(self) -> None:
        """The state package's token prefix is the enrolment API's."""
        self.assertEqual(c.ENROLMENT_TOKEN_PREFIX, enrolment.ENROLMENT_TOKEN_PREFIX)


class ConnectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = _Database(self)
        self.conn = self.db.connect()

    def test_record(self) -> None:
        cert_pem = self.db.record(self.conn, "cn-1", "finance")
        record = c.get_connector(self.conn, "cn-1")
        assert record is not None
        self.assertEqual(
            (record.group, record.host_name, record.version, record.state, record.serial),
            ("finance", "cn-1.example", "1.0", "enabled", _serial(cert_pem)),
        )
        self.assertEqual(record.registered_by, "tests")
        self.assertEqual(record.registered, T0)
        self.assertGreater(record.not_after, T0)
        self.assertEqual(c.list_connectors(self.conn), [record])
        (event,) = c.read_audit(self.conn)
        self.assertEqual(
            (event.event, event.actor, event.connector_id), ("register", "tests", "cn-1")
        )
        self.assertEqual(event.address, "192.0.2.1")
        self.assertEqual(event.detail["serial"], _serial(cert_pem))
        # Another connection (another process) sees it: it was committed.
        self.assertIsNotNone(c.get_connector(self.db.connect(), "cn-1"))

    def test_callers_transaction(self) -> None:
        """On a connection already in a transaction, the caller commits or not."""
        self.conn.execute("BEGIN")
        self.db.record(self.conn, "cn-1")
        c.create_token(self.conn, group="g", ttl=60, uses=1, actor="a", now=T0)
        self.assertTrue(self.conn.in_transaction)
        self.assertEqual([r.id for r in c.list_connectors(self.conn)], ["cn-1"])
        self.conn.rollback()
        self.assertEqual(c.list_connectors(self.conn), [])
        self.assertEqual(c.list_tokens(self.conn), [])
        self.assertEqual(c.read_audit(self.conn), [])

    def test_record_again(self) -> None:
        """
        Recording a connector again: the same certificate stays current; a new
        one becomes current and the old one retires; another connector's is
        refused.
        """
        first = self.db.record(self.conn, "cn-1")
        for _ in range(2):
            c.record_connector(
                self.conn,
                connector_id="cn-1",
                group="default",
                host_name="h",
                version="2",
                cert_pem=first,
                actor="tests",
                address=None,
                now=T0 + 1,
            )
        self.assertIsNone(c.read_admission(self.conn).decide(_serial(first), "cn-1"))
        second = self.db.record(self.conn, "cn-1")
        admission = c.read_admission(self.conn)
        self.assertIsNone(admission.decide(_serial(second), "cn-1"))
        self.assertEqual(admission.decide(_serial(first), "cn-1"), "retired")
        with self.assertRaises(c.ConnectorStateError):
            c.record_connector(
                self.conn,
                connector_id="cn-2",
                group="default",
                host_name="h",
                version="2",
                cert_pem=second,
                actor="tests",
                address=None,
                now=T0 + 1,
            )
        self.assertIsNone(c.get_connector(self.conn, "cn-2"))

    def test_status(self) -> None:
        self.db.record(self.conn, "cn-1")
        record = c.get_connector(self.conn, "cn-1")
        assert record is not None
        self.assertEqual(record.status(T0 + 9 * DAY, 10 * DAY), "active")
        self.assertEqual(record.status(T0 + 11 * DAY, 10 * DAY), "inactive")
        c.touch_connectors(self.conn, [("cn-1", T0 + 10 * DAY, "192.0.2.9", 2, 5)])
        record = c.get_connector(self.conn, "cn-1")
        assert record is not None
        self.assertEqual(
            (record.last_address, record.connections, record.streams), ("192.0.2.9", 2, 5)
        )
        self.assertEqual(record.status(T0 + 19 * DAY, 10 * DAY), "active")
        c.set_connector_state(self.conn, "cn-1", "disabled", actor="a", reason=None, now=T0)
        self.assertEqual(c.get_connector(self.conn, "cn-1").status(T0, DAY), "disabled")  # type: ignore[union-attr]
        c.set_connector_state(self.conn, "cn-1", "revoked", actor="a", reason=None, now=T0)
        self.assertEqual(c.get_connector(self.conn, "cn-1").status(T0, DAY), "revoked")  # type: ignore[union-attr]

    def test_touch_resets_the_unseen(self) -> None:
        self.db.record(self.conn, "cn-1")
        self.db.record(self.conn, "cn-2")
        c.touch_connectors(self.conn, [("cn-1", T0 + 1, "a", 2, 3), ("cn-2", T0 + 1, "b", 1, 1)])
        c.touch_connectors(self.conn, [("cn-2", T0 + 11, "b", 1, 0)])
        one, two = c.list_connectors(self.conn)
        self.assertEqual((one.connections, one.streams, one.last_seen), (0, 0, T0 + 1))
        self.assertEqual((two.connections, two.streams, two.last_seen), (1, 0, T0 + 11))

    def test_admission(self) -> None:
        """Each refusal reason, and admission of current certificates only."""
        old = self.db.record(self.conn, "renewed")
        new = _cert("renewed")
        c.renew_connector(
            self.conn,
            connector_id="renewed",
            old_serial=_serial(old),
            cert_pem=new,
            address="192.0.2.2",
            now=T0 + 1,
        )
        disabled = self.db.record(self.conn, "disabled")
        c.set_connector_state(self.conn, "disabled", "disabled", actor="a", reason="r", now=T0)
        revoked = self.db.record(self.conn, "revoked")
        c.set_connector_state(self.conn, "revoked", "revoked", actor="a", reason="r", now=T0)
        deleted = self.db.record(self.conn, "deleted")
        c.delete_connector(self.conn, "deleted", actor="a", reason="r", now=T0)
        fine = self.db.record(self.conn, "fine", "other")

        c.first_seen(self.conn, "renewed", _serial(new), T0 + 2)
        admission = c.read_admission(self.conn)
        self.assertIsNone(admission.decide(_serial(new), "renewed"))
        self.assertIsNone(admission.decide(_serial(fine), "fine"))
        self.assertEqual(admission.decide(_serial(old), "renewed"), "retired")
        self.assertEqual(admission.decide(_serial(disabled), "disabled"), "disabled")
        self.assertEqual(admission.decide(_serial(revoked), "revoked"), "revoked")
        self.assertEqual(admission.decide(_serial(deleted), "deleted"), "unknown")
        self.assertEqual(admission.decide("abc123", "never"), "unknown")
        # A current serial with another connector's name is no admission.
        self.assertEqual(admission.decide(_serial(fine), "renewed"), "unknown")
        self.assertEqual(
            admission.current,
            {_serial(new): ("renewed", "default"), _serial(fine): ("fine", "other")},
        )
        self.assertEqual(admission.known, {"renewed", "disabled", "revoked", "fine"})
        self.assertEqual(admission.stopped, {"disabled", "revoked"})

        c.set_connector_state(self.conn, "disabled", "enabled", actor="a", reason=None, now=T0)
        self.assertIsNone(c.read_admission(self.conn).decide(_serial(disabled), "disabled"))

    def test_revoked_is_final(self) -> None:
        self.db.record(self.conn, "cn-1")
        record = c.set_connector_state(
            self.conn, "cn-1", "revoked", actor="a", reason="lost", now=T0
        )
        self.assertEqual(record.state, "revoked")
        for state in ("enabled", "disabled"):
            with self.assertRaises(c.ConnectorStateError) as caught:
                c.set_connector_state(self.conn, "cn-1", state, actor="a", reason=None, now=T0)
            self.assertIn("revoked", str(caught.exception))
        with self.assertRaises(c.ConnectorStateError):
            self.db.record(self.conn, "cn-1")
        with self.assertRaises(c.ConnectorStateError):
            c.renew_connector(
                self.conn,
                connector_id="cn-1",
                old_serial=record.serial,
                cert_pem=_cert("cn-1"),
                address=None,
                now=T0,
            )
        self.assertEqual(c.get_connector(self.conn, "cn-1").state, "revoked")  # type: ignore[union-attr]
        events = [e.event for e in c.read_audit(self.conn)]
        self.assertEqual(events, ["register", "revoke"])
        self.assertEqual(c.read_audit(self.conn)[-1].detail["reason"], "lost")

    def test_unknown(self) -> None:
        with self.assertRaises(c.UnknownConnector) as caught:
            c.set_connector_state(self.conn, "nope", "disabled", actor="a", reason=None, now=T0)
        self.assertEqual(str(caught.exception), "no connector 'nope'")
        with self.assertRaises(c.UnknownConnector):
            c.delete_connector(self.conn, "nope", actor="a", reason=None, now=T0)
        with self.assertRaises(c.UnknownConnector):
            c.renew_connector(
                self.conn,
                connector_id="nope",
                old_serial="1",
                cert_pem=_cert("nope"),
                address=None,
                now=T0,
            )
        self.assertIsNone(c.get_connector(self.conn, "nope"))
        self.assertEqual(c.read_audit(self.conn), [])

    def test_delete_removes_certificates(self) -> None:
        old = self.db.record(self.conn, "cn-1")
        new = _cert("cn-1")
        c.renew_connector(
            self.conn,
            connector_id="cn-1",
            old_serial=_serial(old),
            cert_pem=new,
            address=None,
            now=T0,
        )
        self.db.record(self.conn, "cn-2")
        c.delete_connector(self.conn, "cn-1", actor="local:root", reason="gone", now=T0 + 5)
        rows = self.conn.execute(
            "SELECT count(*) FROM connector_certificates WHERE connector_id = 'cn-1'"
        ).fetchone()
        self.assertEqual(rows, (0,))
        self.assertIsNone(c.get_connector(self.conn, "cn-1"))
        self.assertEqual([r.id for r in c.list_connectors(self.conn)], ["cn-2"])
        admission = c.read_admission(self.conn)
        self.assertEqual(admission.decide(_serial(new), "cn-1"), "unknown")
        self.assertEqual(admission.decide(_serial(old), "cn-1"), "unknown")
        event = c.read_audit(self.conn)[-1]
        self.assertEqual((event.event, event.actor, event.time), ("delete", "local:root", T0 + 5))
        self.assertEqual(event.detail["reason"], "gone")

    def renew(self, old: bytes, new: bytes, connector_id: str = "cn-1") -> None:
        c.renew_connector(
            self.conn,
            connector_id=connector_id,
            old_serial=_serial(old),
            cert_pem=new,
            address=None,
            now=T0,
        )

    def test_renewal_grace(self) -> None:
        """
        The old certificate stays admitted until the new one is first seen
        (a renewal's answer may be lost); then it is retired.
        """
        old = self.db.record(self.conn, "cn-1")
        new = _cert("cn-1")
        self.renew(old, new)
        admission = c.read_admission(self.conn)
        self.assertIsNone(admission.decide(_serial(old), "cn-1"))
        self.assertIsNone(admission.decide(_serial(new), "cn-1"))
        self.assertEqual(admission.pending, {_serial(new)})
        self.assertEqual(c.get_connector(self.conn, "cn-1").serial, _serial(new))  # type: ignore[union-attr]
        # The old certificate seen: nothing changes.
        self.assertFalse(c.first_seen(self.conn, "cn-1", _serial(old), T0 + 1))
        self.assertEqual(c.read_admission(self.conn).pending, {_serial(new)})
        # The new one seen: the old one retires (a later use is a copy?).
        self.assertTrue(c.first_seen(self.conn, "cn-1", _serial(new), T0 + 2))
        self.assertFalse(c.first_seen(self.conn, "cn-1", _serial(new), T0 + 3))
        admission = c.read_admission(self.conn)
        self.assertEqual(admission.decide(_serial(old), "cn-1"), "retired")
        self.assertIsNone(admission.decide(_serial(new), "cn-1"))
        self.assertEqual(admission.pending, frozenset())
        with self.assertRaises(c.ConnectorStateError):
            self.renew(old, _cert("cn-1"))
        renew = c.read_audit(self.conn)[-1]
        self.assertEqual(renew.event, "renew")
        self.assertEqual(renew.detail["old_serial"], _serial(old))

    def test_lost_renewal_retried(self) -> None:
        """A renewal made again with the old certificate retires the unused new one."""
        old = self.db.record(self.conn, "cn-1")
        lost, again = _cert("cn-1"), _cert("cn-1")
        self.renew(old, lost)
        self.renew(old, again)
        admission = c.read_admission(self.conn)
        self.assertEqual(admission.decide(_serial(lost), "cn-1"), "retired")
        self.assertIsNone(admission.decide(_serial(old), "cn-1"))
        self.assertEqual(admission.pending, {_serial(again)})
        # The lost one can neither renew nor retire the old one.
        with self.assertRaises(c.ConnectorStateError):
            self.renew(lost, _cert("cn-1"))
        self.assertFalse(c.first_seen(self.conn, "cn-1", _serial(lost), T0))
        # Renewing with the new one is its first use: the old one retires.
        third = _cert("cn-1")
        self.renew(again, third)
        admission = c.read_admission(self.conn)
        self.assertEqual(admission.decide(_serial(old), "cn-1"), "retired")
        self.assertIsNone(admission.decide(_serial(again), "cn-1"))
        self.assertEqual(admission.pending, {_serial(third)})

    def test_audit_rows_bounded(self) -> None:
        """Whatever a peer sends, a row stays small: fields and detail are cut."""
        huge = "A" * 300_000
        c.audit(
            self.conn,
            "register-refused",
            actor="token:" + huge,
            address=huge,
            connector_id=huge,
            detail={
                "reason": huge,
                "group": '"' * 50_000,
                **{f"k{i}": "v" * 900 for i in range(99)},
            },
            now=T0,
        )
        [event] = c.read_audit(self.conn)
        for field in (event.actor, event.address, event.connector_id):
            assert field is not None
            self.assertLessEqual(len(field), c.MAX_FIELD)
            self.assertTrue(field.endswith("..."))
        self.assertTrue(event.actor.startswith("token:AAA"))  # type: ignore[union-attr]
        (text,) = self.conn.execute("SELECT detail FROM audit").fetchone()
        self.assertLessEqual(len(text), c.MAX_DETAIL)
        self.assertIn("cut", event.detail)
        # A small detail is kept whole.
        c.audit(
            self.conn,
            "refused",
            actor=None,
            address="192.0.2.1",
            connector_id=None,
            detail={"reason": "r" * 1000},
            now=T0,
        )
        self.assertEqual(c.read_audit(self.conn)[-1].detail, {"reason": "r" * 1000})

    def test_read_audit(self) -> None:
        for i in range(5):
            c.audit(
                self.conn,
                "refused",
                actor=None,
                address="192.0.2.3",
                connector_id=f"x{i}",
                detail={"reason": "unknown"},
                now=T0 + i,
            )
        self.assertEqual([e.connector_id for e in c.read_audit(self.conn, limit=2)], ["x3", "x4"])
        self.assertEqual(
            [e.connector_id for e in c.read_audit(self.conn, since=T0 + 3)], ["x3", "x4"]
        )
        with self.assertRaises(ValueError):
            c.audit(
                self.conn,
                "nonsense",
                actor=None,
                address=None,
                connector_id=None,
                detail=None,
                now=T0,
            )


class TokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = _Database(self)
        self.conn = self.db.connect()

    def create(self, **changes: Any) -> str:
        fields: dict[str, Any] = {
            "group": "default",
            "ttl": 1800.0,
            "uses": 1,
            "actor": "local:root",
            "now": T0,
        }
        fields.update(changes)
        return c.create_token(self.conn, **fields)

    def test_shape(self) -> None:
        token = self.create()
        self.assertRegex(token, r"\Aappproxy-enrol\.[0-9a-f]{8}\.[A-Za-z0-9_-]{43}\Z")
        (record,) = c.list_tokens(self.conn)
        self.assertEqual(record.id, c.token_id(token))
        self.assertEqual(
            (record.group, record.uses_left, record.expires), ("default", 1, T0 + 1800)
        )
        self.assertEqual(record.status(T0), "usable")

    def assertRefused(self, token: str, reason: str, now: float = T0 + 1) -> None:
        with self.assertRaises(c.TokenRefused) as caught:
            c.consume_token(self.conn, token, now)
        self.assertEqual(caught.exception.reason, reason)
        self.assertIn("enrolment token", str(caught.exception))

    def test_refusals(self) -> None:
        token = self.create(uses=2)
        self.assertEqual(c.consume_token(self.conn, token, T0 + 1), "default")
        self.assertEqual(c.consume_token(self.conn, token, T0 + 2), "default")
        self.assertRefused(token, "used up")
        self.assertEqual(c.list_tokens(self.conn)[0].status(T0), "used up")

        expiring = self.create()
        self.assertRefused(expiring, "expired", now=T0 + 1800)

        revoked = self.create()
        c.revoke_token(self.conn, c.token_id(revoked) or "", actor="local:root", now=T0)
        self.assertRefused(revoked, "revoked")

        good = self.create()
        ident = c.token_id(good)
        forged = f"{c.ENROLMENT_TOKEN_PREFIX}{ident}.{'A' * 43}"
        self.assertRefused(forged, "unknown")
        self.assertRefused("appproxy-enrol.00000000." + "A" * 43, "unknown")
        self.assertRefused("not a token", "unknown")
        self.assertRefused("", "unknown")
        # The good one is still usable: the refusals took nothing from it.
        self.assertEqual(c.consume_token(self.conn, good, T0 + 1), "default")

    def test_revoke_unknown(self) -> None:
        with self.assertRaises(c.UnknownToken) as caught:
            c.revoke_token(self.conn, "deadbeef", actor="a", now=T0)
        self.assertEqual(str(caught.exception), "no enrolment token 'deadbeef'")

    def test_invalid(self) -> None:
        for changes in ({"group": "a b"}, {"ttl": 0}, {"uses": 0}):
            with self.assertRaises(ValueError, msg=changes):
                self.create(**changes)

    def _race(self, uses: int, consume: Callable[[sqlite3.Connection, str], str]) -> list[str]:
        """Eight connections, each in its own thread, race for C{uses} uses."""
        token = self.create(uses=uses)
        racers = 8
        barrier = threading.Barrier(racers, timeout=30)
        results: list[str] = []
        lock = threading.Lock()
        connections = [self.db.connect() for _ in range(racers)]

        def run(conn: sqlite3.Connection) -> None:
            barrier.wait()
            try:
                outcome = consume(conn, token)
            except c.TokenRefused as e:
                outcome = e.reason
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=run, args=(conn,)) for conn in connections]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
            self.assertFalse(thread.is_alive())
        return sorted(results)

    def test_race_one_use(self) -> None:
        """Of registrations racing for a one-use token, one wins."""
        results = self._race(1, lambda conn, token: c.consume_token(conn, token, T0 + 1))
        self.assertEqual(results, ["default"] + ["used up"] * 7)
        self.assertEqual(c.list_tokens(self.conn)[0].uses_left, 0)

    def test_race_in_callers_transactions(self) -> None:
        """
        The same on cursors in the caller's own transactions (as the service's
        adbapi pool runs it: the pool commits): three uses, three winners.
        """

        def consume(conn: sqlite3.Connection, token: str) -> str:
            try:
                return c.consume_token(conn.cursor(), token, T0 + 1)
            finally:
                conn.commit()

        results = self._race(3, consume)
        self.assertEqual(results, ["default"] * 3 + ["used up"] * 5)

    def test_no_token_in_the_database(self) -> None:
        """
        Neither the token nor its secret is ever written: not in the audit
        log, not in the tokens table, not anywhere in the file.
        """
        token = self.create(uses=2)
        ident = c.token_id(token)
        c.consume_token(self.conn, token, T0 + 1)
        c.audit(
            self.conn,
            "register-refused",
            actor="token:x",
            address="192.0.2.4",
            connector_id=None,
            detail={"reason": "bad", "token": token, "nested": [token]},
            now=T0 + 2,
        )
        c.revoke_token(self.conn, token, actor="local:root", now=T0 + 3)
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        secret = token.rsplit(".", 1)[1]
        data = b"".join(p.read_bytes() for p in self.db.path.parent.iterdir())
        self.assertNotIn(secret.encode(), data)
        for event in c.read_audit(self.conn):
            self.assertNotIn(secret, repr(event))
        events = c.read_audit(self.conn)
        self.assertEqual(
            [e.event for e in events], ["token-create", "register-refused", "token-revoke"]
        )
        self.assertEqual(events[0].detail["token_id"], ident)
        self.assertEqual(events[1].detail["token"], "[redacted]")
        self.assertEqual(events[1].detail["nested"], ["[redacted]"])


class AdmissionPropertyTests(SynchronousTestCase):
    """Admission against a model, over any sequence of changes."""

    @settings(max_examples=25, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["record", "renew", "renew-old", "use", "disable", "enable", "revoke", "delete"]
                ),
                st.integers(0, 2),
            ),
            max_size=12,
        )
    )
    def test_model(self, steps: list[tuple[str, int]]) -> None:
        db = _Database(self)
        conn = db.connect()
        state: dict[str, str] = {}  # id -> enabled / disabled / revoked
        currents: dict[str, set[str]] = {}  # id -> its current serials
        newest: dict[str, str] = {}  # id -> its newest serial
        retired: dict[str, str] = {}  # serial -> id
        presented: list[tuple[str, str]] = []

        def retire(cid: str, keep: set[str]) -> None:
            for serial in currents.get(cid, set()) - keep:
                retired[serial] = cid
            currents[cid] = currents.get(cid, set()) & keep

        for action, n in steps:
            cid = f"cn-{n}"
            try:
                if action == "record":
                    cert_pem = db.record(conn, cid)
                    retire(cid, set())
                    newest[cid] = _serial(cert_pem)
                    currents[cid] = {newest[cid]}
                    state.setdefault(cid, "enabled")
                elif action in ("renew", "renew-old"):
                    mine = sorted(currents.get(cid, set()) - {newest.get(cid)})
                    old = mine[0] if action == "renew-old" and mine else newest.get(cid, "0")
                    cert_pem = _cert(cid)
                    c.renew_connector(
                        conn,
                        connector_id=cid,
                        old_serial=old,
                        cert_pem=cert_pem,
                        address=None,
                        now=T0,
                    )
                    self.assertEqual(state.get(cid), "enabled")
                    self.assertIn(old, currents[cid])
                    retire(cid, {old})
                    newest[cid] = _serial(cert_pem)
                    currents[cid].add(newest[cid])
                elif action == "use":
                    if c.first_seen(conn, cid, newest.get(cid, "0"), T0):
                        self.assertGreater(len(currents[cid]), 1)
                    if cid in newest:
                        retire(cid, {newest[cid]})
                elif action == "delete":
                    c.delete_connector(conn, cid, actor="a", reason=None, now=T0)
                    del state[cid]
                    retired = {s: i for s, i in retired.items() if i != cid}
                    presented.extend((serial, cid) for serial in currents.pop(cid))
                    del newest[cid]
                else:
                    target = {"disable": "disabled", "enable": "enabled", "revoke": "revoked"}[
                        action
                    ]
                    c.set_connector_state(conn, cid, target, actor="a", reason=None, now=T0)
                    state[cid] = target
            except (c.UnknownConnector, c.ConnectorStateError):
                pass
        admission = c.read_admission(conn)
        for cid, serials in currents.items():
            expected = {"enabled": None, "disabled": "disabled", "revoked": "revoked"}[state[cid]]
            for serial in serials:
                self.assertEqual(admission.decide(serial, cid), expected)
        for serial, cid in retired.items():
            self.assertEqual(admission.decide(serial, cid), "retired")
        for serial, cid in presented:
            if cid not in state:
                self.assertEqual(admission.decide(serial, cid), "unknown")
        self.assertEqual(
            admission.pending,
            {
                newest[cid]
                for cid, serials in currents.items()
                if len(serials) > 1 and state[cid] == "enabled"
            },
        )


class PoolTests(TestCase):
    """The functions in the service's adbapi pool (C{runInteraction})."""

    timeout = 30

    async def test_run_interaction(self) -> None:
        db = _Database(self)
        pool = adbapi.ConnectionPool(
            "sqlite3",
            str(db.path),
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
            cp_min=1,
            cp_max=2,
            cp_openfun=configure_connection,
        )
        self.addCleanup(pool.close)
        token = c.create_token(db.connect(), group="g1", ttl=60, uses=1, actor="a", now=T0)

        def refused(failure: Failure) -> str:
            failure.trap(c.TokenRefused)
            assert isinstance(failure.value, c.TokenRefused)
            return failure.value.reason

        outcomes = await gatherResults(
            [
                pool.runInteraction(c.consume_token, token, T0 + 1).addErrback(refused)
                for _ in range(2)
            ]
        )
        self.assertEqual(sorted(outcomes), ["g1", "used up"])
        cert_pem = _cert("cn-p", "g1")
        await pool.runInteraction(
            lambda txn: c.record_connector(
                txn,
                connector_id="cn-p",
                group="g1",
                host_name="h",
                version="v",
                cert_pem=cert_pem,
                actor="token:x",
                address="192.0.2.5",
                now=T0,
            )
        )
        admission = await pool.runInteraction(c.read_admission)
        self.assertIsNone(admission.decide(_serial(cert_pem), "cn-p"))
        self.assertEqual(c.list_tokens(db.connect())[0].uses_left, 0)
