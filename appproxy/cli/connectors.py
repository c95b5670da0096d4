"""
C{appproxy connectors ...}: the connectors the service trusts, and the
enrolment tokens that register new ones.

    appproxy connectors list [--json]
    appproxy connectors token create|list|revoke ...  (L{appproxy.cli.connector_tokens})
    appproxy connectors disable|enable|revoke|delete ID [--reason TEXT]

(each with C{--state-dir DIR | --config FILE}).  The records, tokens and the
audit log are L{appproxy.state.connectors}; this module parses the command
line, opens the service's state database and prints.  Every change is
audited with the actor C{local:USER} (the Unix user running the command).
The running service reads the changes within a second: a disabled, revoked
or deleted connector's tunnels are closed, and it is refused from then on.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from appproxy.cli.arguments import ServiceFiles, add_state_options, hand_over, resolve_state
from appproxy.state import connectors as store
from appproxy.state.schema import BUSY_TIMEOUT_MS, configure_connection, migrate_now
from appproxy.state.signins import format_time

__all__ = [
    "add_connectors_command",
    "add_subcommand",
    "database",
    "local_actor",
    "printable",
    "table",
    "when",
]


def local_actor() -> str:
    """C{local:} and the name of the Unix user running this command."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return f"local:{name}"


def printable(value: str | None) -> str:
    """A value for a terminal: C{-} for none; control characters escaped."""
    if value is None:
        return "-"
    if value.isprintable() and value.strip() == value and value:
        return value
    return json.dumps(value)


def when(epoch: float | None) -> str:
    return "-" if epoch is None else format_time(epoch).split(".")[0] + "Z"


@contextmanager
def database(files: ServiceFiles, *, create: bool) -> Iterator[sqlite3.Connection]:
    """
    A connection to the service's state database, migrated; when C{create},
    made if missing (the state directory must exist).  Run as root, the files
    go to the state directory's owner (the service's user) afterwards.
    """
    path = files.database
    if not path.exists():
        if not create:
            raise ValueError(
                f"{path}: no state database yet ('appproxy init' or the service's first start "
                "creates it), so no connectors"
            )
        files.existing_state_dir()
    migrate_now(path)
    try:
        connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise ValueError(f"{path}: cannot open it: {e}") from None
    try:
        configure_connection(connection)
        yield connection
    except sqlite3.Error as e:
        raise ValueError(f"{path}: cannot use it as the state database: {e}") from None
    finally:
        connection.close()
        for name in (path.name, path.name + "-wal", path.name + "-shm"):
            if (path.parent / name).exists():
                hand_over(path.parent / name)


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)


def _connector_json(record: store.ConnectorRecord, status: str) -> dict[str, Any]:
    return {
        "id": record.id,
        "group": record.group,
        "host_name": record.host_name,
        "version": record.version,
        "connections": record.connections,
        "streams": record.streams,
        "last_seen": None if record.last_seen is None else format_time(record.last_seen),
        "last_address": record.last_address,
        "serial": record.serial,
        "not_after": format_time(record.not_after),
        "registered": None if record.registered is None else format_time(record.registered),
        "registered_by": record.registered_by,
        "state": record.state,
        "status": status,
    }


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    files = resolve_state(args)
    inactive_after = files.config.connectors.inactive_after_days * 86400.0
    with database(files, create=False) as connection:
        records = store.list_connectors(connection)
    now = time.time()
    if args.json:
        for record in records:
            document = _connector_json(record, record.status(now, inactive_after))
            out.write(json.dumps(document, separators=(",", ":")) + "\n")
        return 0
    if not records:
        print("No connectors.", file=out)
        return 0
    rows = [
        (
            "ID",
            "GROUP",
            "HOST",
            "VERSION",
            "CONNS",
            "STREAMS",
            "LAST SEEN (UTC)",
            "SERIAL",
            "EXPIRES (UTC)",
            "STATUS",
        )
    ]
    rows.extend(
        (
            record.id,
            record.group,
            printable(record.host_name),
            printable(record.version),
            str(record.connections),
            str(record.streams),
            when(record.last_seen),
            record.serial,
            when(record.not_after),
            record.status(now, inactive_after),
        )
        for record in records
    )
    table(rows, out)
    return 0


_DONE = {
    "disabled": (
        "Disabled connector {id} (group {group}): the service closes its tunnels within a "
        "second and refuses it until 'appproxy connectors enable {id}'."
    ),
    "enabled": "Enabled connector {id} (group {group}): the service admits it again.",
    "revoked": (
        "Revoked connector {id} (group {group}): the service closes its tunnels within a "
        "second and refuses it from now on; its record stays for the audit log. "
        "To serve from that host again, register it anew."
    ),
}


def _change_state(state: str) -> Any:
    def command(args: argparse.Namespace, out: TextIO) -> int:
        with database(resolve_state(args), create=False) as connection:
            try:
                record = store.set_connector_state(
                    connection,
                    args.id,
                    state,
                    actor=local_actor(),
                    reason=args.reason,
                    now=time.time(),
                )
            except store.UnknownConnector:
                raise ValueError(_unknown(args.id)) from None
        print(_DONE[state].format(id=record.id, group=record.group), file=out)
        return 0

    return command


def _unknown(connector_id: str) -> str:
    return f"no connector {connector_id!r} ('appproxy connectors list' shows them)"


def _cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    with database(resolve_state(args), create=False) as connection:
        try:
            store.delete_connector(
                connection, args.id, actor=local_actor(), reason=args.reason, now=time.time()
            )
        except store.UnknownConnector:
            raise ValueError(_unknown(args.id)) from None
    print(
        f"Deleted connector {args.id}: its certificates are no longer known, so the service "
        "closes its tunnels within a second and refuses it.",
        file=out,
    )
    return 0


def add_subcommand(
    commands: Any, name: str, help: str, description: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help, description=description)
    add_state_options(parser)
    return parser


def add_connectors_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add C{appproxy connectors {list,token,disable,enable,revoke,delete}}."""
    parser = subparsers.add_parser(
        "connectors",
        help="list, disable, revoke and delete connectors; make enrolment tokens",
        description="The connectors the service trusts, and enrolment tokens for new ones.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    listing = add_subcommand(
        commands,
        "list",
        "list the connectors",
        "List the connectors: id, group, host, version, tunnel connections, streams in "
        "flight, last seen, certificate serial and expiry, status (active; inactive when "
        "unseen for [connectors] inactive_after_days; disabled; revoked).",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=_cmd_list)

    for state, verb, text in (
        ("disabled", "disable", "refuse a connector until it is enabled again"),
        ("enabled", "enable", "admit a disabled connector again"),
        ("revoked", "revoke", "refuse a connector for good (the record stays)"),
    ):
        changing = add_subcommand(commands, verb, text, text[0].upper() + text[1:] + ".")
        changing.add_argument("id", metavar="ID", help="the connector's id")
        changing.add_argument("--reason", metavar="TEXT", help="why (in the audit log)")
        changing.set_defaults(func=_change_state(state))

    deleting = add_subcommand(
        commands,
        "delete",
        "forget a connector and its certificates (refused from then on)",
        "Delete a connector's record and certificates: it is refused as unknown.",
    )
    deleting.add_argument("id", metavar="ID", help="the connector's id")
    deleting.add_argument("--reason", metavar="TEXT", help="why (in the audit log)")
    deleting.set_defaults(func=_cmd_delete)

    from appproxy.cli.connector_tokens import add_token_commands

    add_token_commands(commands)
