"""
One-time (or few-times) enrolment tokens: an administrator makes one with
C{appproxy connectors token create}; a connector registers with it, unattended.

A token is C{appproxy-enrol.ID.SECRET} (C{ID}: 8 hex digits, shown by
C{token list}; C{SECRET}: 32 random bytes, URL-safe base64).  Only its
SHA-256 is stored; the token itself is shown once.  Consuming a use is one
conditional C{UPDATE}, so two registrations racing for the last use cannot
both win.  Pure: C{sqlite3} only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any, Final

import attrs

from appproxy.state._transaction import transaction
from appproxy.state.audit import ENROLMENT_TOKEN_PREFIX, audit
from appproxy.state.signins import format_time

__all__ = [
    "GROUP_RE",
    "TokenRecord",
    "TokenRefused",
    "UnknownToken",
    "consume_token",
    "create_token",
    "list_tokens",
    "revoke_token",
    "token_id",
]

#: A connector group's name (as an app's C{connector_group}).
GROUP_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_TOKEN_RE: Final = re.compile(
    re.escape(ENROLMENT_TOKEN_PREFIX) + r"([0-9a-f]{8})\.[A-Za-z0-9_-]{43}\Z"
)

_REASONS: Final = {
    "unknown": "the enrolment token is not one this service issued",
    "expired": "the enrolment token has expired",
    "used up": "the enrolment token has been used up",
    "revoked": "the enrolment token has been revoked",
}


class TokenRefused(Exception):
    """
    An enrolment token that cannot be used.

    @ivar reason: C{unknown}, C{expired}, C{used up} or C{revoked}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(_REASONS[reason])
        self.reason = reason


class UnknownToken(KeyError):
    """No enrolment token has that id."""

    def __str__(self) -> str:
        return f"no enrolment token {self.args[0]!r}"


@attrs.frozen(kw_only=True)
class TokenRecord:
    """An enrolment token as stored (without its secret)."""

    id: str
    group: str
    created: float | None
    expires: float
    uses_left: int
    created_by: str | None
    revoked: bool

    def status(self, now: float) -> str:
        """C{usable}, C{revoked}, C{used up} or C{expired}."""
        if self.revoked:
            return "revoked"
        if self.uses_left <= 0:
            return "used up"
        if self.expires <= now:
            return "expired"
        return "usable"


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def token_id(token: str) -> str | None:
    """The id of C{token}, if it has an enrolment token's shape (else None)."""
    match = _TOKEN_RE.match(token)
    return match.group(1) if match else None


def create_token(conn: Any, *, group: str, ttl: float, uses: int, actor: str, now: float) -> str:
    """
    Make an enrolment token for C{group}, usable C{uses} times for C{ttl}
    seconds; audited C{token-create} (without the token).

    @return: the token (shown once: only its hash is stored).
    @raise ValueError: for an invalid group, C{ttl} or C{uses}.
    """
    if not GROUP_RE.match(group):
        raise ValueError(f"connector group {group!r} must be 1-64 letters, digits, '-' or '_'")
    if not ttl > 0:
        raise ValueError("an enrolment token's lifetime must be positive")
    if uses < 1:
        raise ValueError("an enrolment token must have at least one use")
    with transaction(conn, write=True) as cursor:
        while True:
            ident = secrets.token_hex(4)
            cursor.execute("SELECT 1 FROM enrolment_tokens WHERE id = ?", (ident,))
            if cursor.fetchone() is None:
                break
        token = f"{ENROLMENT_TOKEN_PREFIX}{ident}.{secrets.token_urlsafe(32)}"
        cursor.execute(
            "INSERT INTO enrolment_tokens (id, hash, grp, created, expires, uses_left,"
            " created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ident, _hash(token), group, now, now + ttl, uses, actor),
        )
        audit(
            cursor,
            "token-create",
            actor=actor,
            address=None,
            connector_id=None,
            detail={
                "token_id": ident,
                "group": group,
                "uses": uses,
                "expires": format_time(now + ttl),
            },
            now=now,
        )
    return token


def consume_token(conn: Any, token: str, now: float) -> str:
    """
    Use C{token} once; the group it enrols into.

    @raise TokenRefused: if it is unknown, expired, used up or revoked.
    """
    ident = token_id(token)
    if ident is None:
        raise TokenRefused("unknown")
    with transaction(conn, write=True) as cursor:
        cursor.execute(
            "SELECT hash, grp, expires, uses_left, revoked FROM enrolment_tokens WHERE id = ?",
            (ident,),
        )
        row = cursor.fetchone()
        if row is None or not hmac.compare_digest(bytes(row[0]), _hash(token)):
            raise TokenRefused("unknown")
        _, group, expires, uses_left, revoked = row
        if revoked:
            raise TokenRefused("revoked")
        if expires <= now:
            raise TokenRefused("expired")
        if uses_left <= 0:
            raise TokenRefused("used up")
        # The condition again, in the one statement that takes the use: of
        # two registrations racing for the last use, one changes no row.
        cursor.execute(
            "UPDATE enrolment_tokens SET uses_left = uses_left - 1"
            " WHERE id = ? AND uses_left > 0 AND revoked = 0 AND expires > ?",
            (ident, now),
        )
        if cursor.rowcount != 1:
            raise TokenRefused("used up")
    return str(group)


def _record(row: Any) -> TokenRecord:
    return TokenRecord(
        id=row[0],
        group=row[1],
        created=row[2],
        expires=row[3],
        uses_left=row[4],
        created_by=row[5],
        revoked=bool(row[6]),
    )


_COLUMNS: Final = "id, grp, created, expires, uses_left, created_by, revoked"


def list_tokens(conn: Any) -> list[TokenRecord]:
    """Every enrolment token (usable or not), oldest first."""
    with transaction(conn, write=False) as cursor:
        cursor.execute(f"SELECT {_COLUMNS} FROM enrolment_tokens ORDER BY created, id")  # noqa: S608
        return [_record(row) for row in cursor.fetchall()]


def revoke_token(conn: Any, ident: str, *, actor: str, now: float) -> TokenRecord:
    """
    Revoke the enrolment token C{ident} (its id, or the token itself);
    audited C{token-revoke}.

    @raise UnknownToken: if there is none.
    """
    ident = token_id(ident) or ident
    with transaction(conn, write=True) as cursor:
        cursor.execute("UPDATE enrolment_tokens SET revoked = 1 WHERE id = ?", (ident,))
        if cursor.rowcount != 1:
            raise UnknownToken(ident)
        cursor.execute(f"SELECT {_COLUMNS} FROM enrolment_tokens WHERE id = ?", (ident,))  # noqa: S608
        record = _record(cursor.fetchone())
        audit(
            cursor,
            "token-revoke",
            actor=actor,
            address=None,
            connector_id=None,
            detail={"token_id": ident, "group": record.group},
            now=now,
        )
    return record
