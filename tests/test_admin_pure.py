"""
The admin API's pure parts: the opaque cursor, the query parameters and
their SQL, and the RFC 5424 lines (checked against a strict regex of the
RFC's ABNF), with Hypothesis.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.admin import records
from appproxy.admin.cursor import Cursor, CursorError, decode_cursor, encode_cursor
from appproxy.admin.filters import MAX_LIMIT, Query, QueryError, parse_query, parse_time
from appproxy.admin.syslog import SD_ID, syslog_line
from appproxy.state.schema import migrate
from appproxy.state.signins import format_time
from tests.admin_syslog_regex import check_rfc5424

kinds = st.sampled_from(["sign-ins", "audit"])
ids = st.integers(min_value=0, max_value=(1 << 63) - 1)
text = st.text(st.characters(codec="utf-8"), max_size=80)


class CursorTests(SynchronousTestCase):
    @given(kinds, ids)
    def test_round_trip(self, kind: str, after: int) -> None:
        encoded = encode_cursor(Cursor(kind, after))
        self.assertTrue(encoded.startswith("v1."))
        self.assertRegex(encoded, r"\Av1\.[A-Za-z0-9_-]+\Z")
        self.assertEqual(decode_cursor(encoded, kind), Cursor(kind, after))

    @given(kinds, ids)
    def test_other_list_refused(self, kind: str, after: int) -> None:
        other = "audit" if kind == "sign-ins" else "sign-ins"
        with self.assertRaises(CursorError):
            decode_cursor(encode_cursor(Cursor(kind, after)), other)

    @given(st.text(max_size=120) | st.binary(max_size=90).map(lambda b: "v1." + b.hex()))
    def test_garbage_only_cursor_error(self, garbage: str) -> None:
        try:
            cursor = decode_cursor(garbage, "audit")
        except CursorError:
            return
        self.assertEqual(encode_cursor(cursor), garbage.rstrip("="))

    def test_forged_values_refused(self) -> None:
        import base64

        for value in ({"k": "audit", "a": -1}, {"k": "audit", "a": True}, {"k": "audit"}, [1]):
            raw = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
            with self.assertRaises(CursorError):
                decode_cursor("v1." + raw, "audit")


class FilterTests(SynchronousTestCase):
    @given(
        st.datetimes(
            min_value=datetime(1971, 1, 1), max_value=datetime(2999, 1, 1), timezones=st.just(UTC)
        )
    )
    def test_rfc3339_and_epoch_agree(self, moment: datetime) -> None:
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        epoch = moment.timestamp()
        self.assertLessEqual(abs(parse_time(format_time(epoch)) - epoch), 0.002)
        self.assertLessEqual(abs(parse_time(moment.isoformat()) - epoch), 0.002)
        self.assertLessEqual(abs(parse_time(f"{epoch:.3f}") - epoch), 0.002)

    def test_bad_times(self) -> None:
        for bad in ("yesterday", "2026-13-01T00:00:00Z", "2026-12-07", "1e9", "-5", ""):
            with self.assertRaises(QueryError):
                parse_time(bad)

    def test_parameters(self) -> None:
        query = parse_query(
            "sign-ins",
            {"user": ["alice"], "result": ["failure"], "since": ["10"], "limit": ["5"]},
        )
        self.assertEqual(
            query,
            Query(
                kind="sign-ins",
                since=10.0,
                equal=(("user", "alice"), ("result", "failure")),
                limit=5,
            ),
        )
        query = parse_query("audit", {"event": ["revoke"], "connector": ["cn-1"]})
        self.assertEqual(query.equal, (("event", "revoke"), ("connector_id", "cn-1")))
        cursor = encode_cursor(Cursor("audit", 41))
        self.assertEqual(parse_query("audit", {"cursor": [cursor]}).after, 41)
        export = parse_query("audit", {"format": ["syslog"]}, export=True)
        self.assertEqual(export.format, "syslog")

    def test_refusals(self) -> None:
        for kind, args in [
            ("sign-ins", {"event": ["x"]}),
            ("audit", {"result": ["x"]}),
            ("audit", {"limit": ["0"]}),
            ("audit", {"limit": [str(MAX_LIMIT + 1)]}),
            ("audit", {"limit": ["ten"]}),
            ("audit", {"user": ["a", "b"]}),
            ("sign-ins", {"user": ["a", "b"]}),
            ("sign-ins", {"cursor": [encode_cursor(Cursor("audit", 1))]}),
            ("sign-ins", {"since": ["soon"]}),
        ]:
            with self.assertRaises(QueryError, msg=repr(args)):
                parse_query(kind, args)
        with self.assertRaises(QueryError):
            parse_query("audit", {"format": ["xml"]}, export=True)
        with self.assertRaises(QueryError):
            parse_query("audit", {"limit": ["5"]}, export=True)

    @given(
        kinds,
        st.dictionaries(
            st.sampled_from(["since", "until", "limit", "cursor", "user", "event", "format", "x"]),
            st.lists(text, min_size=1, max_size=2),
        ),
        st.booleans(),
    )
    def test_any_parameters_query_or_query_error(
        self, kind: str, args: dict[str, list[str]], export: bool
    ) -> None:
        """Whatever a client sends: a query within bounds, or a QueryError."""
        try:
            query = parse_query(kind, args, export=export)
        except QueryError:
            return
        self.assertTrue(1 <= query.limit <= MAX_LIMIT)
        self.assertGreaterEqual(query.after, 0)

    @given(
        st.lists(
            st.tuples(
                st.integers(0, 100), st.sampled_from(["alice", "bob"]), st.sampled_from(["a", "b"])
            ),
            max_size=30,
        ),
        st.integers(0, 40),
        st.integers(0, 120),
        st.integers(0, 120),
        st.sampled_from([None, "alice", "bob"]),
    )
    def test_sql_matches_the_filter(
        self, rows: list[tuple[int, str, str]], after: int, since: int, until: int, user: str | None
    ) -> None:
        """The rows selected are exactly those the query describes, by id ascending."""
        conn = sqlite3.connect(":memory:")
        migrate(conn, ":memory:")  # type: ignore[arg-type]
        for time, who, app in rows:
            conn.execute(
                "INSERT INTO sign_ins (time, user, app, client_address, result, request_id)"
                " VALUES (?, ?, ?, '127.0.0.1', 'success', 'r')",
                (time, who, app),
            )
        equal = () if user is None else (("user", user),)
        query = Query(kind="sign-ins", since=since, until=until, equal=equal, after=after)
        got = records.select_events(conn.cursor(), query, 1000)
        expected = [
            str(index + 1)
            for index, (time, who, _) in enumerate(rows)
            if index + 1 > after and since <= time < until and user in (None, who)
        ]
        self.assertEqual([event["id"] for event in got], expected)
        conn.close()


def _event(kind: str, fields: dict[str, Any], id_: int, epoch: float) -> dict[str, Any]:
    base: dict[str, Any] = {"id": str(id_), "time": format_time(epoch), "epoch": epoch}
    return {**base, **fields}


sign_in_fields = st.fixed_dictionaries(
    {
        "result": st.sampled_from(["success", "failure", "blocked", "signed-out"]),
        "user": st.none() | text,
        "app": text,
        "client_address": text,
        "request_id": text,
        "reason": st.none() | text,
        "user_agent": st.none() | text,
        "policies": st.lists(st.fixed_dictionaries({"name": text, "why": text}), max_size=2),
    }
)
audit_fields = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["register", "register-refused", "revoke", "clone-suspected"]),
        "actor": st.none() | text,
        "address": st.none() | text,
        "connector_id": st.none() | text,
        "detail": st.dictionaries(text, text | st.integers(), max_size=3),
    }
)


class SyslogTests(SynchronousTestCase):
    @given(
        st.one_of(
            sign_in_fields.map(lambda f: ("sign-ins", f)), audit_fields.map(lambda f: ("audit", f))
        ),
        st.integers(1, (1 << 63) - 1),
        st.floats(0, 32503680000, allow_nan=False),
        text,
        st.integers(0, 1 << 22),
    )
    def test_lines_are_rfc5424(
        self, kind_fields: tuple[str, dict[str, Any]], id_: int, epoch: float, host: str, pid: int
    ) -> None:
        kind, fields = kind_fields
        event = _event(kind, fields, id_, epoch)
        line = syslog_line(kind, event, hostname=host, procid=pid)
        match = check_rfc5424(line)
        prefix = "sign-in" if kind == "sign-ins" else "audit"
        self.assertEqual(match["msgid"], f"{prefix}-{id_}"[:32])
        self.assertEqual(match["app"], "appproxy")
        self.assertTrue(match["sd"].startswith(f'[{SD_ID} id="{prefix}-{id_}"'))
        self.assertEqual(json.loads(match["msg"]), event)
        self.assertEqual(int(match["pri"]) // 8, 10)

    def test_severity(self) -> None:
        ok = _event("sign-ins", {"result": "success"}, 1, 0)
        bad = _event("sign-ins", {"result": "blocked"}, 2, 0)
        self.assertTrue(syslog_line("sign-ins", ok, hostname="h", procid=1).startswith("<86>1 "))
        self.assertTrue(syslog_line("sign-ins", bad, hostname="h", procid=1).startswith("<84>1 "))
        revoke = _event("audit", {"event": "revoke"}, 3, 0)
        self.assertTrue(syslog_line("audit", revoke, hostname="h", procid=1).startswith("<85>1 "))
