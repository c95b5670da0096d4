"""
C{appproxy sessions list|revoke}: the sessions the service issued, and
ending them.

    appproxy sessions list (--state-dir DIR | --config FILE) [--user NAME] [--all] [--json]
    appproxy sessions revoke (--state-dir DIR | --config FILE) (--user NAME | --session ID)

C{--user NAME} matches user names as app assignment does (C{allowed_users}:
case-insensitively), among the users of the recorded sessions and of the
built-in provider; revoking a user nobody knows is an error, and writes
nothing.  Revoking writes to the service's state database; every service process
using it refuses the sessions within a few seconds (L{appproxy.gate.sessions}).
The records and revocations are L{appproxy.state.sessions}; this module
parses the command line and prints.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from appproxy.cli.arguments import ServiceFiles, add_state_options, hand_over, resolve_state
from appproxy.idp.users import User, UserStore
from appproxy.state.sessions import SessionRecord, list_sessions, recorded_users, revoke

__all__ = ["add_sessions_command", "end_user_sessions", "session_user_name"]


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _state(record: SessionRecord, now: int) -> str:
    if record.revoked:
        return "revoked"
    return "expired" if record.expires_at <= now else "active"


def _database(files: ServiceFiles) -> Path:
    if not files.database.exists():
        raise ValueError(
            f"{files.database}: no state database yet (the service creates it when it starts"
            " with an [oidc] table), so no sessions"
        )
    return files.database


def _revoke(database: Path, now: int, **which: str) -> int:
    """L{revoke}; then SQLite's side files, if root made them, go to the service's user."""
    try:
        return revoke(database, now, **which)
    finally:
        for side in ("-wal", "-shm"):
            path = database.with_name(database.name + side)
            if path.exists():
                hand_over(path)


def session_user_name(files: ServiceFiles, user: User) -> str:
    """
    The user name the sessions of C{user}, a user of the built-in provider,
    carry: the claim C{oidc.username_claim} names.
    """
    claim = files.config.oidc.username_claim if files.config.oidc is not None else ""
    return {"email": user.email, "name": user.display_name}.get(claim, user.name) or user.name


def _same_user(a: str, b: str) -> bool:
    """Whether C{a} and C{b} name the same user, as app assignment compares them."""
    return a.casefold() == b.casefold()


def _matching_users(files: ServiceFiles, database: Path, name: str) -> list[str]:
    """
    The user names, among those of the recorded sessions and of the built-in
    provider's users, that are C{name} as app assignment compares them.
    """
    known = set(recorded_users(database))
    if files.config.builtin_provider is not None:
        try:
            users = list(UserStore.load(files.users_file).users.values())
        except (OSError, ValueError):
            users = []  # an unreadable users file must not stop sessions from ending
        known.update(session_user_name(files, user) for user in users)
    return sorted(user for user in known if _same_user(user, name))


def end_user_sessions(files: ServiceFiles, user: str, now: int) -> int | None:
    """
    Revoke every session of C{user} in the service's state database.

    @return: how many recorded sessions in force that ended, or L{None} if
        the service has no state database yet (so no sessions).
    """
    if not files.database.exists():
        return None
    return _revoke(files.database, now, user=user)


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    now = int(time.time())
    records = list_sessions(_database(resolve_state(args)), now, expired=args.all)
    if args.user is not None:
        records = [record for record in records if _same_user(record.user, args.user)]
    if args.json:
        for record in records:
            document: dict[str, Any] = {
                "id": record.id,
                "user": record.user,
                "app": record.app,
                "issued": _when(record.issued_at),
                "expires": _when(record.expires_at),
                "client_address": record.client_address,
                "state": _state(record, now),
            }
            out.write(json.dumps(document, separators=(",", ":")) + "\n")
        return 0
    if not records:
        print("No sessions.", file=out)
        return 0
    rows = [("ID", "USER", "APP", "ISSUED", "EXPIRES", "CLIENT", "STATE")]
    rows.extend(
        (
            record.id,
            record.user,
            record.app,
            _when(record.issued_at),
            _when(record.expires_at),
            record.client_address,
            _state(record, now),
        )
        for record in records
    )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)
    return 0


def _cmd_revoke(args: argparse.Namespace, out: TextIO) -> int:
    now = int(time.time())
    files = resolve_state(args)
    database = _database(files)
    if args.user is not None:
        users = _matching_users(files, database, args.user)
        if not users:
            raise ValueError(
                f"no user {args.user!r}: no session of theirs is recorded and the built-in"
                " provider has no such user; nothing revoked"
            )
        for user in users:
            count = _revoke(database, now, user=user)
            print(
                f"Revoked the sessions of {user} issued until now ({count} in force);"
                " the service refuses them within a few seconds.",
                file=out,
            )
    else:
        _revoke(database, now, session=args.session)
        print(
            f"Revoked session {args.session}; the service refuses it within a few seconds.",
            file=out,
        )
    return 0


def add_sessions_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add C{appproxy sessions {list,revoke}}."""
    parser = subparsers.add_parser(
        "sessions",
        help="list and end the sessions of signed-in users",
        description="List the sessions the service issued, and end them.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    listing = commands.add_parser(
        "list",
        help="list the sessions in force (oldest first)",
        description="List the sessions issued that have not expired, oldest first.",
    )
    add_state_options(listing)
    listing.add_argument(
        "--user", metavar="NAME", help="only this user's sessions (case-insensitive)"
    )
    listing.add_argument("--all", action="store_true", help="expired sessions too")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=_cmd_list)

    revoking = commands.add_parser(
        "revoke",
        help="end sessions: every session of a user, or one session",
        description=(
            "End sessions for every copy of their cookie: every session of a user issued until"
            " now (a new sign-in makes a new one), or one session by its id (from 'list')."
        ),
    )
    add_state_options(revoking)
    which = revoking.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--user", metavar="NAME", help="every session of this user (case-insensitive)"
    )
    which.add_argument(
        "--session",
        metavar="ID",
        help="the session with this id (one starting with '-': --session=ID)",
    )
    revoking.set_defaults(func=_cmd_revoke)
