"""
C{appproxy connectors token create|list|revoke}: enrolment tokens, with which
connectors register unattended (C{appproxy-connector register --token-file}).

    appproxy connectors token create --group NAME [--ttl 30m] [--uses 1] [--json]
    appproxy connectors token list [--json]
    appproxy connectors token revoke ID

A token is printed once, on the first line; the state database keeps only
its hash (L{appproxy.state.enrolment_tokens}).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any, TextIO

from appproxy.cli.arguments import resolve_state
from appproxy.cli.connectors import add_subcommand, database, local_actor, printable, table, when
from appproxy.state import connectors as store
from appproxy.state.signins import format_time

__all__ = ["MAX_TOKEN_TTL", "MAX_TOKEN_USES", "add_token_commands", "parse_duration"]

_DURATION = re.compile(r"([0-9]{1,9})([smhd])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: The longest an enrolment token may live.
MAX_TOKEN_TTL = 30 * 86400
#: The most uses one enrolment token may have.
MAX_TOKEN_USES = 1000


def parse_duration(value: str) -> float:
    """
    Seconds from C{90s}, C{30m}, C{2h} or C{1d} (an argparse type).

    @raise argparse.ArgumentTypeError: for anything else, or zero.
    """
    match = _DURATION.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration: a whole number and s, m, h or d (90s, 30m, 2h, 1d)"
        )
    return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _cmd_token_create(args: argparse.Namespace, out: TextIO) -> int:
    files = resolve_state(args)
    if args.ttl > MAX_TOKEN_TTL:
        raise ValueError("--ttl: an enrolment token may live 30 days at most")
    groups = sorted({app.connector_group for app in files.config.apps})
    if args.group not in groups:
        raise ValueError(
            f"--group {args.group!r} is no app's connector group (the service's groups: "
            f"{', '.join(groups) or 'none'})"
        )
    now = time.time()
    with database(files, create=True) as connection:
        token = store.create_token(
            connection,
            group=args.group,
            ttl=args.ttl,
            uses=args.uses,
            actor=local_actor(),
            now=now,
        )
    ident = store.token_id(token)
    if args.json:
        document = {
            "token": token,
            "id": ident,
            "group": args.group,
            "uses": args.uses,
            "expires": format_time(now + args.ttl),
        }
        out.write(json.dumps(document, separators=(",", ":")) + "\n")
        return 0
    uses = "1 use" if args.uses == 1 else f"{args.uses} uses"
    print(token, file=out)
    print(
        f"Enrolment token {ident} for group {args.group}: {uses}, expires "
        f"{when(now + args.ttl)}. It is shown only this once: put it in a file "
        "(mode 0600) on the connector's host and run 'appproxy-connector register ... "
        "--token-file FILE'.",
        file=out,
    )
    return 0


def _cmd_token_list(args: argparse.Namespace, out: TextIO) -> int:
    with database(resolve_state(args), create=False) as connection:
        tokens = store.list_tokens(connection)
    now = time.time()
    if args.json:
        for token in tokens:
            document = {
                "id": token.id,
                "group": token.group,
                "created": None if token.created is None else format_time(token.created),
                "expires": format_time(token.expires),
                "uses_left": token.uses_left,
                "created_by": token.created_by,
                "status": token.status(now),
            }
            out.write(json.dumps(document, separators=(",", ":")) + "\n")
        return 0
    if not tokens:
        print("No enrolment tokens.", file=out)
        return 0
    rows = [("ID", "GROUP", "CREATED (UTC)", "EXPIRES (UTC)", "USES LEFT", "BY", "STATUS")]
    rows.extend(
        (
            token.id,
            token.group,
            when(token.created),
            when(token.expires),
            str(token.uses_left),
            printable(token.created_by),
            token.status(now),
        )
        for token in tokens
    )
    table(rows, out)
    return 0


def _cmd_token_revoke(args: argparse.Namespace, out: TextIO) -> int:
    with database(resolve_state(args), create=False) as connection:
        try:
            record = store.revoke_token(connection, args.id, actor=local_actor(), now=time.time())
        except store.UnknownToken:
            raise ValueError(
                f"no enrolment token {args.id!r} ('appproxy connectors token list' shows them)"
            ) from None
    print(f"Revoked enrolment token {record.id} (group {record.group}).", file=out)
    return 0


def add_token_commands(commands: Any) -> None:
    """Add C{token create|list|revoke} to C{appproxy connectors}' subcommands."""
    token = commands.add_parser(
        "token",
        help="enrolment tokens: register connectors without a sign-in",
        description="Enrolment tokens, to register connectors unattended.",
    )
    tokens = token.add_subparsers(title="commands", metavar="COMMAND", required=True)
    creating = add_subcommand(
        tokens,
        "create",
        "make an enrolment token (printed once)",
        "Make an enrolment token for a connector group; it is printed once, on the first "
        "line, and only its hash is kept.",
    )
    creating.add_argument("--group", required=True, metavar="NAME", help="the connector group")
    creating.add_argument(
        "--ttl",
        type=parse_duration,
        default=1800.0,
        metavar="DURATION",
        help="how long it is valid: 90s, 30m, 2h, 1d (default 30m, at most 30d)",
    )
    creating.add_argument(
        "--uses",
        type=_uses,
        default=1,
        metavar="N",
        help=f"how many registrations it allows (default 1, at most {MAX_TOKEN_USES})",
    )
    creating.add_argument("--json", action="store_true", help="print one JSON object")
    creating.set_defaults(func=_cmd_token_create)
    token_list = add_subcommand(
        tokens, "list", "list enrolment tokens", "List the enrolment tokens."
    )
    token_list.add_argument("--json", action="store_true", help="one JSON object per line")
    token_list.set_defaults(func=_cmd_token_list)
    revoking = add_subcommand(
        tokens, "revoke", "revoke an enrolment token", "Revoke an enrolment token."
    )
    revoking.add_argument("id", metavar="ID", help="the token's id (from 'token list')")
    revoking.set_defaults(func=_cmd_token_revoke)


def _uses(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= number <= MAX_TOKEN_USES:
        raise argparse.ArgumentTypeError(f"{value!r} must be 1 to {MAX_TOKEN_USES}")
    return number
