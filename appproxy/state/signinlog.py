"""
The sign-in log: who signed in to which app, from where, and how it ended.

Every sign-in attempt the service sees ends in one L{SignInEvent}.
L{SignInLog.record} sends it to two places: a structured C{twisted.logger}
event (C{log_system="sign-in"}), and the C{sign_ins} table of the state
database, which C{appproxy logs sign-ins} reads (as text for people, or JSON
Lines for security tooling).
"""

from __future__ import annotations

import argparse
import json
import re
import time as _time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from appproxy.state.database import StateDatabase

__all__ = [
    "RESULTS",
    "STEPS",
    "SignInEvent",
    "SignInLog",
    "add_logs_command",
    "format_events",
    "format_time",
    "parse_since",
]

#: How a sign-in ended.
RESULTS: frozenset[str] = frozenset(
    {"success", "failure", "blocked", "not-assigned", "mfa-required", "signed-out"}
)

#: The step a sign-in failed at.
STEPS: frozenset[str] = frozenset(
    {
        "discovery",
        "authorization",
        "state",
        "token",
        "id-token",
        "assignment",
        "policy",
        "hand-off",
        "session",
        "password",
        "otp",
    }
)

_QUIET_RESULTS = frozenset({"success", "signed-out"})


def format_time(epoch: float) -> str:
    """
    C{epoch} as ISO 8601 in UTC, with milliseconds: C{2026-11-22T10:00:00.123Z}.
    """
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _escape(text: str) -> str:
    """C{text} with backslashes, quotes and unprintable characters escaped."""
    out: list[str] = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


_PLAIN = re.compile(r'[^\s"\\]+\Z')


def _word(value: str | None) -> str:
    """
    A value as one word: C{-} for L{None}; quoted and escaped if it is empty,
    is C{-}, or holds spaces, quotes or unprintable characters.
    """
    if value is None:
        return "-"
    if value != "-" and _PLAIN.match(value) and value.isprintable():
        return value
    return f'"{_escape(value)}"'


@attrs.frozen(kw_only=True)
class SignInEvent:
    """
    One sign-in attempt, or a sign-out.

    @ivar time: when (POSIX seconds).
    @ivar user: the user name, if known by then.
    @ivar app: the app's name.
    @ivar client_address: the user's IP address.
    @ivar result: how it ended; one of L{RESULTS}.
    @ivar step: the step it failed at (one of L{STEPS}); L{None} on success.
    @ivar policy: the conditional-access policy that decided, if any.
    @ivar request_id: the request id (shown on error pages).
    @ivar detail: a short explanation for administrators.  Never a secret.
    """

    time: float
    user: str | None
    app: str
    client_address: str
    result: str = attrs.field(validator=attrs.validators.in_(RESULTS))
    step: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(STEPS))
    )
    policy: str | None = None
    request_id: str
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        """
        A JSON object: C{time} as ISO 8601 (UTC, milliseconds), C{epoch} the
        raw POSIX time, and the other fields by name (L{None} as C{null}).
        """
        return {
            "time": format_time(self.time),
            "epoch": self.time,
            "result": self.result,
            "user": self.user,
            "app": self.app,
            "client_address": self.client_address,
            "step": self.step,
            "policy": self.policy,
            "request_id": self.request_id,
            "detail": self.detail,
        }

    def to_text(self) -> str:
        """
        One line: C{TIME RESULT user=U app=A address=IP step=S policy=P
        request=ID detail="..."}.

        A value is C{-} when absent; quoted, with backslash escapes, when it
        holds spaces, quotes or unprintable characters (so a user name cannot
        forge a log line); C{detail=} only when there is one.
        """
        parts = [
            format_time(self.time),
            self.result,
            f"user={_word(self.user)}",
            f"app={_word(self.app)}",
            f"address={_word(self.client_address)}",
            f"step={_word(self.step)}",
            f"policy={_word(self.policy)}",
            f"request={_word(self.request_id)}",
        ]
        if self.detail:
            parts.append(f'detail="{_escape(self.detail)}"')
        return " ".join(parts)


def _step_and_policy(event: SignInEvent) -> str | None:
    if event.step is not None and event.policy is not None:
        return f"{event.step}/{event.policy}"
    return event.step if event.step is not None else event.policy


def format_events(events: Sequence[SignInEvent]) -> list[str]:
    """
    Events as aligned text columns: time, result, user, app, address,
    step/policy, request id, detail.  One line per event; no header.
    """
    rows = [
        [
            format_time(event.time),
            event.result,
            _word(event.user),
            _word(event.app),
            _word(event.client_address),
            _word(_step_and_policy(event)),
            _word(event.request_id),
            _escape(event.detail),
        ]
        for event in events
    ]
    if not rows:
        return []
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    ]


class SignInLog:
    """
    Records sign-in events: to the log, and to the state database.

    @ivar write_failures: how many events could not be written to the
        database (each is logged).
    """

    def __init__(self, db: StateDatabase | None, log: Logger | None = None) -> None:
        """
        @param db: where events are kept; L{None} to only log them.
        @param log: the logger for the events and for write failures.
        """
        self._db = db
        self._log = log if log is not None else Logger(namespace="appproxy.state.signinlog")
        self._pending: set[Deferred[None]] = set()
        self.write_failures = 0

    def record(self, event: SignInEvent) -> None:
        """
        Log C{event} and append it to the database, in the background.

        The log event is at level C{info} for C{success} and C{signed-out},
        C{warn} otherwise.  Never raises and never blocks: a database failure
        is logged and counted in L{write_failures}.  L{flush} waits for the
        writes.
        """
        try:
            self._emit(event)
        except Exception:
            self._log.failure("Could not log a sign-in event")
        if self._db is None:
            return
        try:
            d = self._db.record_sign_in(event)
        except Exception:
            self._write_failed(Failure(), event)
            return
        self._pending.add(d)
        d.addErrback(self._write_failed, event)
        d.addBoth(self._written, d)

    def _emit(self, event: SignInEvent) -> None:
        emit = self._log.info if event.result in _QUIET_RESULTS else self._log.warn
        emit(
            "Sign-in {summary}",
            summary=event.to_text(),
            log_system="sign-in",
            time=event.time,
            user=event.user,
            app=event.app,
            client_address=event.client_address,
            result=event.result,
            step=event.step,
            policy=event.policy,
            request_id=event.request_id,
            detail=event.detail,
        )

    def _write_failed(self, failure: Failure, event: SignInEvent) -> None:
        self.write_failures += 1
        self._log.error(
            "Sign-in event {request_id} not written to the state database: {error}",
            request_id=event.request_id,
            error=failure.getErrorMessage(),
        )

    def _written(self, result: object, d: Deferred[None]) -> None:
        self._pending.discard(d)

    def flush(self) -> Deferred[None]:
        """
        Wait for the writes under way when called.  Never fails.

        The service calls it from C{stopService}, before it closes the
        database, so no event is lost at shutdown.
        """
        if not self._pending:
            return succeed(None)
        observers: list[Deferred[None]] = []
        for d in self._pending:
            observer: Deferred[None] = Deferred()
            d.addBoth(_fire_observer, observer)
            observers.append(observer)
        return DeferredList(observers).addCallback(lambda _: None)


def _fire_observer(result: object, observer: Deferred[None]) -> object:
    observer.callback(None)
    return result


# ---------------------------------------------------------------------------
# command line: appproxy logs sign-ins

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


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def _database_path(state_dir: Path) -> Path:
    """
    The database in C{state_dir}: the service's state directory, or the
    directory C{appproxy init} made (which holds it in C{state/}).
    """
    from appproxy.state.database import DATABASE_NAME

    path = state_dir / DATABASE_NAME
    nested = state_dir / "state" / DATABASE_NAME
    if not path.exists() and nested.exists():
        return nested
    return path


def _cmd_sign_ins(args: argparse.Namespace, out: TextIO) -> int:
    from appproxy.state.database import read_sign_ins

    since = None if args.since is None else parse_since(args.since, _time.time())
    events = read_sign_ins(_database_path(Path(args.state_dir)), since=since, limit=args.limit)
    if args.json:
        for event in events:
            out.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
    else:
        for line in format_events(events):
            out.write(line + "\n")
    return 0


def add_logs_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{appproxy logs sign-ins --state-dir DIR [--since WHEN] [--limit N]
    [--json]} to the C{appproxy} command.
    """
    logs = subparsers.add_parser("logs", help="read the service's logs")
    which: Any = logs.add_subparsers(title="logs", metavar="LOG", required=True)
    parser = which.add_parser(
        "sign-ins",
        help="the sign-in log",
        description=(
            "Print the sign-in log, oldest first: one line per sign-in attempt "
            "(time, result, user, app, address, failing step/policy, request id, detail)."
        ),
    )
    parser.add_argument(
        "--state-dir",
        required=True,
        metavar="DIR",
        help="the service's state directory (or the directory 'appproxy init' made)",
    )
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help=(
            "only events from then: 2026-11-22, 2026-11-22T10:00[Z|+01:00] (UTC unless "
            "given) or a duration ago: 15m, 2h, 7d"
        ),
    )
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="only the newest N events")
    parser.add_argument("--json", action="store_true", help="one JSON object per line (JSON Lines)")
    parser.set_defaults(func=_cmd_sign_ins)
