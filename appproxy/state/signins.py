"""
The sign-in event: one sign-in attempt (or sign-out), its allowed results and
failing steps, and its text forms (one log line, JSON, aligned columns).

Pure: no Twisted, no I/O.  L{appproxy.state.signinlog} records events;
L{appproxy.state.database} stores them; C{appproxy logs sign-ins} prints them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

import attrs

from appproxy.oidc.errors import SIGN_IN_STEPS

__all__ = ["COLUMNS", "RESULTS", "STEPS", "SignInEvent", "format_events", "format_time"]

#: How a sign-in ended.
RESULTS: frozenset[str] = frozenset(
    {"success", "failure", "blocked", "not-assigned", "mfa-required", "signed-out"}
)

#: The step a sign-in failed at: the sign-in's own steps, and the built-in
#: provider's password and one-time-code checks.
STEPS: frozenset[str] = frozenset({*SIGN_IN_STEPS, "password", "otp"})


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
    @ivar subject: the ID token's C{sub}, if the sign-in got that far.
    @ivar issuer: the ID token's C{iss}, likewise.
    @ivar user_agent: the browser's C{User-Agent}, if known.
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
    subject: str | None = None
    issuer: str | None = None
    user_agent: str | None = None

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


#: The column titles of L{format_events}' header row.
COLUMNS: tuple[str, ...] = (
    "TIME",
    "RESULT",
    "USER",
    "APP",
    "ADDRESS",
    "STEP/POLICY",
    "REQUEST-ID",
    "DETAIL",
)


def format_events(events: Sequence[SignInEvent], *, header: bool = False) -> list[str]:
    """
    Events as aligned text columns: time, result, user, app, address,
    step/policy, request id, detail.  One line per event, after a row of
    L{COLUMNS} if C{header} (even with no events).
    """
    rows = [list(COLUMNS)] if header else []
    rows += [
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
