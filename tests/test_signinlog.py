"""
Tests for the sign-in log: the events (L{appproxy.state.signins}), their
recording (L{appproxy.state.signinlog}) and C{appproxy logs sign-ins}
(L{appproxy.cli.logs}).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.cli.logs import add_logs_command, parse_since
from appproxy.state.database import StateDatabase
from appproxy.state.queries import read_sign_ins
from appproxy.state.schema import DATABASE_NAME
from appproxy.state.signinlog import SignInLog
from appproxy.state.signins import (
    COLUMNS,
    RESULTS,
    STEPS,
    SignInEvent,
    format_events,
    format_time,
)
from tests.servicedir import init_service_dir

T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z


def event(offset: float = 0.0, **changes: Any) -> SignInEvent:
    fields: dict[str, Any] = {
        "time": T0 + offset,
        "user": "alice",
        "app": "wiki",
        "client_address": "192.0.2.7",
        "result": "success",
        "request_id": "r1",
    }
    fields.update(changes)
    return SignInEvent(**fields)


optional_text = st.none() | st.text()
events = st.builds(
    SignInEvent,
    time=st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False),
    user=optional_text,
    app=st.text(),
    client_address=st.text(),
    result=st.sampled_from(sorted(RESULTS)),
    step=st.none() | st.sampled_from(sorted(STEPS)),
    policy=optional_text,
    request_id=st.text(),
    detail=st.text(),
)


class SignInEventTests(SynchronousTestCase):
    def test_validated(self) -> None:
        with self.assertRaises(ValueError):
            event(result="ok")
        with self.assertRaises(ValueError):
            event(result="failure", step="elsewhere")
        self.assertEqual(event(result="failure", step="otp").step, "otp")

    def test_to_json(self) -> None:
        e = event(0.1234, result="blocked", step="policy", policy="outside", detail="no VPN")
        self.assertEqual(
            e.to_json(),
            {
                "time": "2026-11-18T11:06:40.123Z",
                "epoch": T0 + 0.1234,
                "result": "blocked",
                "user": "alice",
                "app": "wiki",
                "client_address": "192.0.2.7",
                "step": "policy",
                "policy": "outside",
                "request_id": "r1",
                "detail": "no VPN",
            },
        )

    def test_to_text(self) -> None:
        self.assertEqual(
            event().to_text(),
            "2026-11-18T11:06:40.000Z success user=alice app=wiki address=192.0.2.7 "
            "step=- policy=- request=r1",
        )
        self.assertEqual(
            event(user=None, result="failure", step="token", detail='said "no"\n').to_text(),
            "2026-11-18T11:06:40.000Z failure user=- app=wiki address=192.0.2.7 "
            'step=token policy=- request=r1 detail="said \\"no\\"\\x0a"',
        )
        # A value that could be mistaken for another field is quoted.
        self.assertIn(
            'user="alice app=admin"', event(user="alice app=admin").to_text().replace("\\", "")
        )
        self.assertIn('user="-"', event(user="-").to_text())
        self.assertIn('user=""', event(user="").to_text())

    @given(events)
    def test_one_line(self, e: SignInEvent) -> None:
        """Whatever the fields hold, the text forms are one line each."""
        self.assertEqual(len(e.to_text().splitlines()), 1)
        [line] = format_events([e])
        self.assertEqual(len(line.splitlines()), 1)
        self.assertEqual(json.loads(json.dumps(e.to_json()))["epoch"], e.time)

    def test_format_events_aligned(self) -> None:
        lines = format_events(
            [
                event(),
                event(
                    61.5,
                    user="bob",
                    app="payroll",
                    client_address="2001:db8::1",
                    result="mfa-required",
                    step="policy",
                    policy="admins-need-mfa",
                    request_id="r2",
                    detail="step-up asked",
                ),
                event(120, user=None, result="failure", step="state", request_id="r3"),
            ]
        )
        self.assertEqual(
            lines,
            [
                "2026-11-18T11:06:40.000Z  success       alice  wiki     192.0.2.7    "
                "-                       r1",
                "2026-11-18T11:07:41.500Z  mfa-required  bob    payroll  2001:db8::1  "
                "policy/admins-need-mfa  r2  step-up asked",
                "2026-11-18T11:08:40.000Z  failure       -      wiki     192.0.2.7    "
                "state                   r3",
            ],
        )
        self.assertEqual(format_events([]), [])

    def test_format_events_header(self) -> None:
        """With C{header}, a row of column titles comes first, the columns aligned under it."""
        lines = format_events([event(request_id="a-rather-long-request-id")], header=True)
        self.assertEqual(
            lines,
            [
                "TIME                      RESULT   USER   APP   ADDRESS    STEP/POLICY  "
                "REQUEST-ID                DETAIL",
                "2026-11-18T11:06:40.000Z  success  alice  wiki  192.0.2.7  -            "
                "a-rather-long-request-id",
            ],
        )
        self.assertEqual(format_events([], header=True), ["  ".join(COLUMNS)])


class ParseSinceTests(SynchronousTestCase):
    NOW = T0

    def setUp(self) -> None:
        # A local time zone that is not UTC: naive times must still be UTC.
        self.addCleanup(time.tzset)
        previous = os.environ.get("TZ")
        if previous is None:
            self.addCleanup(os.environ.pop, "TZ", None)
        else:
            self.addCleanup(os.environ.__setitem__, "TZ", previous)
        os.environ["TZ"] = "XST+5"
        time.tzset()
        self.assertEqual(time.timezone, 5 * 3600)

    def test_iso(self) -> None:
        midnight = datetime(2026, 11, 22, tzinfo=UTC).timestamp()
        for text, expected in [
            ("2026-11-22", midnight),
            ("2026-11-22T10:00", midnight + 10 * 3600),
            ("2026-11-22T10:00Z", midnight + 10 * 3600),
            ("2026-11-22T10:00:30.250", midnight + 10 * 3600 + 30.25),
            ("2026-11-22T10:00+01:00", midnight + 9 * 3600),
            ("2026-11-22T10:00:00-05:30", midnight + 15.5 * 3600),
            (" 2026-11-22 ", midnight),
        ]:
            self.assertEqual(parse_since(text, self.NOW), expected, text)

    def test_durations(self) -> None:
        self.assertEqual(parse_since("15m", self.NOW), self.NOW - 900)
        self.assertEqual(parse_since("2h", self.NOW), self.NOW - 7200)
        self.assertEqual(parse_since("7d", self.NOW), self.NOW - 7 * 86400)
        self.assertEqual(parse_since("30s", self.NOW), self.NOW - 30)
        self.assertEqual(parse_since("1w", self.NOW), self.NOW - 7 * 86400)

    @given(st.integers(min_value=0, max_value=10**6), st.sampled_from("smhdw"))
    def test_duration_property(self, amount: int, unit: str) -> None:
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
        self.assertEqual(parse_since(f"{amount}{unit}", self.NOW), self.NOW - amount * seconds)

    def test_invalid(self) -> None:
        for text in [
            "",
            "yesterday",
            "15",
            "15 m",
            "-15m",
            "15M",
            "1.5h",
            "2026-13-01",
            "2026-11-22T25:00",
            "2026-11-22Tnoon",
            "22/11/2026",
            "1795000000",
        ]:
            with self.assertRaises(ValueError, msg=text) as raised:
                parse_since(text, self.NOW)
            message = str(raised.exception)
            self.assertNotIn("\n", message)
            for form in ["2026-11-22", "2026-11-22T10:00", "15m", "2h", "7d"]:
                self.assertIn(form, message)

    aware = st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(9000, 1, 1),
        timezones=st.builds(
            timezone,
            st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: timedelta(minutes=m)),
        ),
    )

    @given(aware)
    def test_iso_round_trip(self, moment: datetime) -> None:
        self.assertEqual(parse_since(moment.isoformat(), self.NOW), moment.timestamp())
        utc = moment.astimezone(UTC)
        self.assertEqual(
            parse_since(utc.isoformat().replace("+00:00", "Z"), self.NOW), moment.timestamp()
        )

    @given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1)))
    def test_naive_is_utc(self, moment: datetime) -> None:
        self.assertEqual(
            parse_since(moment.isoformat(), self.NOW), moment.replace(tzinfo=UTC).timestamp()
        )
        self.assertEqual(
            parse_since(moment.date().isoformat(), self.NOW),
            datetime.combine(moment.date(), datetime.min.time(), UTC).timestamp(),
        )

    @given(st.integers(min_value=0, max_value=200_000_000_000))
    def test_format_time_round_trip(self, millis: int) -> None:
        """The times the log prints can be pasted back into --since."""
        epoch = millis / 1000
        self.assertAlmostEqual(parse_since(format_time(epoch), self.NOW), epoch, places=5)
        self.assertRegex(format_time(epoch), r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


@attrs.define
class _FailingDatabase:
    """A stand-in database whose writes fail, or raise at once."""

    synchronous: bool

    def record_sign_in(self, event: SignInEvent) -> Deferred[None]:
        if self.synchronous:
            raise RuntimeError("broken")
        return fail(RuntimeError("disk full"))


class SignInLogTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.logged: list[dict[str, Any]] = []
        self.log = Logger(namespace="test", observer=cast(ILogObserver, self.logged.append))
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / DATABASE_NAME

    def sign_in_events(self) -> list[dict[str, Any]]:
        return [e for e in self.logged if e.get("log_system") == "sign-in"]

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.logged if e["log_level"] == LogLevel.error]

    def test_logs_structured_event(self) -> None:
        signin_log = SignInLog(None, self.log)
        signin_log.record(event())
        signin_log.record(event(1, result="blocked", step="policy", policy="p", user=None))
        [ok, blocked] = self.sign_in_events()
        self.assertEqual(ok["log_level"], LogLevel.info)
        self.assertEqual(blocked["log_level"], LogLevel.warn)
        for logged, e in [(ok, event()), (blocked, event(1, result="blocked"))]:
            self.assertEqual(logged["time"], e.time)
            self.assertEqual(logged["result"], e.result)
            self.assertEqual(logged["request_id"], e.request_id)
        self.assertEqual(blocked["user"], None)
        self.assertEqual(blocked["step"], "policy")
        self.assertEqual(blocked["policy"], "p")
        self.assertEqual(blocked["client_address"], "192.0.2.7")
        self.assertEqual(ok["summary"], event().to_text())
        self.assertEqual(self.errors(), [])
        self.assertIsNone(self.successResultOf(signin_log.flush()))

    async def test_database_failing(self) -> None:
        """A failing database is logged and counted; record never raises."""
        for db in [_FailingDatabase(False), _FailingDatabase(True)]:
            self.logged.clear()
            signin_log = SignInLog(db, self.log)  # type: ignore[arg-type]
            signin_log.record(event(request_id="lost-1"))
            self.assertEqual(signin_log.write_failures, 1)
            self.assertEqual(len(self.sign_in_events()), 1)
            [error] = self.errors()
            self.assertEqual(error["request_id"], "lost-1")
            await signin_log.flush()

    async def test_closed_database(self) -> None:
        db = await StateDatabase.open(self.path)
        await db.close()
        signin_log = SignInLog(db, self.log)
        signin_log.record(event(request_id="after-close"))
        await signin_log.flush()
        self.assertEqual(signin_log.write_failures, 1)
        [error] = self.errors()
        self.assertIn("closed", error["error"])

    async def test_unloggable_event(self) -> None:
        """An event the log cannot format is still written, and record does not raise."""
        db = await StateDatabase.open(self.path)
        self.addCleanup(db.close)
        signin_log = SignInLog(db, self.log)
        odd = event(offset=1e300)  # no such date
        signin_log.record(odd)
        await signin_log.flush()
        self.assertEqual(await db.sign_ins(), [odd])
        self.assertTrue([e for e in self.logged if e["log_level"] == LogLevel.critical])

    async def test_flush_waits_for_writes(self) -> None:
        db = await StateDatabase.open(self.path)
        self.addCleanup(db.close)
        signin_log = SignInLog(db, self.log)
        recorded = [event(i, request_id=f"r{i}") for i in range(30)]
        for e in recorded:
            signin_log.record(e)
        flushed = signin_log.flush()
        self.assertFalse(flushed.called)
        await flushed
        # Everything is in the file now, without waiting any further.
        self.assertEqual(read_sign_ins(self.path), recorded)
        self.assertEqual(signin_log.write_failures, 0)
        self.assertEqual(self.errors(), [])
        self.assertTrue(signin_log.flush().called)


class LogsCommandTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        # The directory 'appproxy init' made; the service's database is in state/.
        self.dir = init_service_dir(Path(self.mktemp()))
        self.path = self.dir / "state" / DATABASE_NAME

    def run_command(self, *argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser(prog="appproxy")
        add_logs_command(parser.add_subparsers())
        args = parser.parse_args(list(argv))
        out = io.StringIO()
        code = args.func(args, out)
        return code, out.getvalue()

    async def write(self, *events: SignInEvent) -> None:
        db = await StateDatabase.open(self.path)
        for e in events:
            await db.record_sign_in(e)
        await db.close()

    async def test_text(self) -> None:
        recorded = [
            event(),
            event(2, user="bob", result="failure", step="id-token", detail="expired\nreally"),
        ]
        await self.write(*recorded)
        code, out = self.run_command("logs", "sign-ins", "--state-dir", str(self.dir))
        self.assertEqual(code, 0)
        self.assertEqual(out, "".join(line + "\n" for line in format_events(recorded, header=True)))
        self.assertEqual(len(out.splitlines()), 3)
        self.assertEqual(out.splitlines()[0].split(), list(COLUMNS))

    async def test_json_lines(self) -> None:
        recorded = [event(), event(2, user="zoë", result="not-assigned", step="assignment")]
        await self.write(*recorded)
        code, out = self.run_command("logs", "sign-ins", "--state-dir", str(self.dir), "--json")
        self.assertEqual(code, 0)
        self.assertTrue(out.isascii())
        self.assertEqual(
            [json.loads(line) for line in out.splitlines()], [e.to_json() for e in recorded]
        )

    async def test_since_and_limit(self) -> None:
        now = time.time()
        old = attrs.evolve(event(), time=now - 3 * 3600, request_id="old")
        recent = attrs.evolve(event(), time=now - 600, request_id="recent")
        newest = attrs.evolve(event(), time=now - 60, request_id="newest")
        await self.write(old, recent, newest)

        def ids(*extra: str) -> list[str]:
            code, out = self.run_command(
                "logs", "sign-ins", "--state-dir", str(self.dir), "--json", *extra
            )
            self.assertEqual(code, 0)
            return [json.loads(line)["request_id"] for line in out.splitlines()]

        self.assertEqual(ids(), ["old", "recent", "newest"])
        self.assertEqual(ids("--since", "1h"), ["recent", "newest"])
        self.assertEqual(ids("--since", "2m"), ["newest"])
        self.assertEqual(ids("--since", format_time(now - 600)), ["recent", "newest"])
        self.assertEqual(ids("--limit", "2"), ["recent", "newest"])
        self.assertEqual(ids("--since", "1h", "--limit", "1"), ["newest"])
        self.assertEqual(ids("--since", "1m"), [])

    async def test_empty(self) -> None:
        await self.write()
        self.assertEqual(
            self.run_command("logs", "sign-ins", "--state-dir", str(self.dir)),
            (0, "  ".join(COLUMNS) + "\n"),
        )
        self.assertEqual(
            self.run_command("logs", "sign-ins", "--state-dir", str(self.dir), "--json"), (0, "")
        )

    async def test_state_directory_refused(self) -> None:
        """The state directory itself holds no service.toml: the message names the right one."""
        await self.write(event())
        with self.assertRaises(ValueError) as raised:
            self.run_command("logs", "sign-ins", "--state-dir", str(self.dir / "state"))
        self.assertEqual(
            str(raised.exception),
            f"--state-dir {self.dir / 'state'} holds no service.toml, its parent does: "
            f"use --state-dir {self.dir}",
        )

    def test_errors(self) -> None:
        self.path.unlink()  # init made it, to record its connector: as before any start
        with self.assertRaises(ValueError) as raised:
            self.run_command("logs", "sign-ins", "--state-dir", str(self.dir))
        self.assertIn(str(self.path), str(raised.exception))
        with self.assertRaises(ValueError) as raised:
            self.run_command("logs", "sign-ins", "--state-dir", str(self.dir), "--since", "today")
        self.assertIn("15m", str(raised.exception))
        self.patch(sys, "stderr", io.StringIO())
        for argv in [
            ["logs"],
            ["logs", "sign-ins"],
            ["logs", "sign-ins", "--state-dir", "x", "--limit", "0"],
            ["logs", "sign-ins", "--state-dir", "x", "--limit", "ten"],
        ]:
            with self.assertRaises(SystemExit, msg=argv) as exited:
                self.run_command(*argv)
            self.assertEqual(exited.exception.code, 2)
