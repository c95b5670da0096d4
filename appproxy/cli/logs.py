"""
C{appproxy logs sign-ins} and C{appproxy logs audit}: the sign-in log and
the connector audit log in the service's state database, as aligned text
under a header row, or JSON Lines.

The events are L{appproxy.state.signins} and L{appproxy.state.audit}; the
read-only readers are L{appproxy.state.queries.read_sign_ins} and
L{read_audit_log}; this module parses the command line (C{--since}
included) and prints.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from appproxy.cli.arguments import add_state_options, at_least, resolve_state
from appproxy.state.audit import AuditEvent, read_audit
from appproxy.state.queries import read_sign_ins
from appproxy.state.schema import BUSY_TIMEOUT_MS, check_schema, read_schema
from appproxy.state.signins import format_events, format_time

__all__ = ["add_logs_command", "format_audit", "parse_since", "read_audit_log"]

#: The first schema version with the audit log.
_AUDIT_SCHEMA = 3

_DURATION = re.compile(r"([0-9]{1,9})([smhdw])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_ISO_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_since(value: str, now: float) -> float:
    """
    The POSIX time C{--since} names.

    @param value: an ISO 8601 date (C{2026-11-22}, midnight UTC), date and
        time (C{2026-11-22T10:00}, C{...:30}, C{....123}; UTC unless it ends
        with C{Z} or an offset such as C{+01:00}), or a duration back from
        C{now}: a whole number and C{s}, C{m}, C{h}, C{d} or C{w}
        (C{15m}, C{2h}, C{7d}).
    @param now: the current time, for durations.
    @raise ValueError: one line saying the accepted forms.
    """
    text = value.strip()
    duration = _DURATION.match(text)
    if duration:
        return now - int(duration.group(1)) * _UNIT_SECONDS[duration.group(2)]
    if _ISO_START.match(text):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    raise ValueError(
        f"--since {value!r} is not a date (2026-11-22), a date and time "
        "(2026-11-22T10:00, UTC unless followed by Z or an offset such as +01:00) "
        "or a duration (15m, 2h, 7d; units s, m, h, d, w)"
    )


def _cmd_sign_ins(args: argparse.Namespace, out: TextIO) -> int:
    since = None if args.since is None else parse_since(args.since, time.time())
    files = resolve_state(args)
    if not files.database.exists():
        raise ValueError(
            f"{files.database}: no sign-in log yet (the service creates this state database "
            "when it starts with an [oidc] table)"
        )
    events = read_sign_ins(files.database, since=since, limit=args.limit)
    if args.json:
        for event in events:
            out.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
    else:
        for line in format_events(events, header=True):
            out.write(line + "\n")
    return 0


def read_audit_log(path: Path, since: float | None, limit: int) -> list[AuditEvent]:
    """
    The newest C{limit} audit log entries from C{since}, oldest first, read
    with the database opened read-only (it works while the service runs, and
    never changes the file; a database not yet migrated has no entries).

    @raise ValueError: one line, if the file is missing or not an appproxy
        state database.
    """
    if not path.is_file():
        raise ValueError(
            f"{path}: no state database yet ('appproxy init' or the service's first start "
            "creates it), so no audit log"
        )
    try:
        connection = sqlite3.connect(
            path.absolute().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.Error as e:
        raise ValueError(f"{path}: cannot open it: {e}") from None
    try:
        version, application_id, objects = read_schema(connection.cursor())
        check_schema(path, version, application_id, objects)
        if version < _AUDIT_SCHEMA:
            return []
        return read_audit(connection, since=since, limit=limit)
    except sqlite3.Error as e:
        raise ValueError(f"{path}: cannot read it: {e}") from None
    finally:
        connection.close()


#: The header row of C{appproxy logs audit}.
AUDIT_COLUMNS = ("TIME", "EVENT", "CONNECTOR", "ACTOR", "ADDRESS", "DETAIL")


def _cell(value: str | None) -> str:
    """One word for a terminal: C{-} for none; quoted (JSON) if it needs to be."""
    if value is None:
        return "-"
    if value and value.isprintable() and " " not in value and '"' not in value:
        return value
    return json.dumps(value)


def _detail_text(detail: Any) -> str:
    return " ".join(
        f"{key}={_cell(value if isinstance(value, str) else json.dumps(value))}"
        for key, value in sorted(dict(detail).items())
        if value is not None
    )


def format_audit(events: list[AuditEvent]) -> list[str]:
    """Audit entries as aligned text under a header row of L{AUDIT_COLUMNS}."""
    rows = [list(AUDIT_COLUMNS)]
    rows += [
        [
            format_time(event.time),
            event.event,
            _cell(event.connector_id),
            _cell(event.actor),
            _cell(event.address),
            _detail_text(event.detail),
        ]
        for event in events
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    ]


def _cmd_audit(args: argparse.Namespace, out: TextIO) -> int:
    since = None if args.since is None else parse_since(args.since, time.time())
    files = resolve_state(args)
    events = read_audit_log(files.database, since, args.limit)
    if args.json:
        for event in events:
            document = {"time": format_time(event.time), "epoch": event.time}
            document.update({k: v for k, v in event.as_json().items() if k != "time"})
            out.write(json.dumps(document, separators=(",", ":")) + "\n")
    else:
        for line in format_audit(events):
            out.write(line + "\n")
    return 0


def add_logs_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{appproxy logs sign-ins|audit (--state-dir DIR | --config FILE)
    [--since WHEN] [--limit N] [--json]} to the C{appproxy} command.
    """
    logs = subparsers.add_parser("logs", help="read the service's logs")
    which: Any = logs.add_subparsers(title="logs", metavar="LOG", required=True)
    parser = which.add_parser(
        "sign-ins",
        help="the sign-in log",
        description=(
            "Print the sign-in log, oldest first: a header row, then one line per sign-in "
            "attempt (time, result, user, app, address, failing step/policy, request id, "
            "detail); with --json, one JSON object per line and no header."
        ),
    )
    add_state_options(parser)
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help=(
            "only events from then: 2026-11-22, 2026-11-22T10:00[Z|+01:00] (UTC unless "
            "given) or a duration ago: 15m, 2h, 7d"
        ),
    )
    parser.add_argument("--limit", type=at_least(1), metavar="N", help="only the newest N events")
    parser.add_argument("--json", action="store_true", help="one JSON object per line (JSON Lines)")
    parser.set_defaults(func=_cmd_sign_ins)

    audit = which.add_parser(
        "audit",
        help="the connector audit log",
        description=(
            "Print the connector audit log, oldest first: registrations (and refusals), "
            "renewals, disable/enable/revoke/delete, refused and clone-suspected certificates, "
            "expired certificates, enrolment tokens made and revoked; who, when, from where and "
            "why. A header row, then one line per event; with --json, one JSON object per "
            "line and no header."
        ),
    )
    add_state_options(audit)
    audit.add_argument(
        "--since",
        metavar="WHEN",
        help=(
            "only events from then: 2026-11-22, 2026-11-22T10:00[Z|+01:00] (UTC unless "
            "given) or a duration ago: 15m, 2h, 7d"
        ),
    )
    audit.add_argument(
        "--limit",
        type=at_least(1),
        default=10_000,
        metavar="N",
        help="only the newest N events (default 10000)",
    )
    audit.add_argument("--json", action="store_true", help="one JSON object per line (JSON Lines)")
    audit.set_defaults(func=_cmd_audit)
