"""
C{appproxy logs sign-ins}: the sign-in log in the service's state database,
as aligned text under a header row, or JSON Lines.

The events are L{appproxy.state.signins}; the read-only reader is
L{appproxy.state.queries.read_sign_ins}; this module parses the command line
(C{--since} included) and prints.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from appproxy.cli.arguments import add_state_options, at_least, resolve_state
from appproxy.state.queries import read_sign_ins
from appproxy.state.signins import format_events

__all__ = ["add_logs_command", "parse_since"]

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


def add_logs_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{appproxy logs sign-ins (--state-dir DIR | --config FILE)
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
