"""
C{appproxy keys list|rotate|retire|remove}: the session cookie keys in the
key ring file the service reads (in its state directory).

The ring and its file are L{appproxy.access.keyring} and
L{appproxy.access.keyring_file}; this module parses the command line and
prints.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path
from typing import TextIO

from appproxy.access.keyring_file import (
    KEYRING_FILENAME,
    load_keyring,
    load_or_create_keyring,
    update_keyring,
)
from appproxy.cli.arguments import add_state_options, hand_over, resolve_state

__all__ = ["add_keys_command"]


def _keyring_path(args: argparse.Namespace) -> Path:
    """The key ring file of the service named on the command line."""
    return resolve_state(args).keyring


def _new_keyring_path(args: argparse.Namespace) -> Path:
    """L{_keyring_path}, for a command that may create the file."""
    files = resolve_state(args)
    files.existing_state_dir()
    return files.keyring


def _iso(created: int) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    ring = load_keyring(_keyring_path(args))
    width = max(len("ID"), *(len(key.id) for key in ring.keys))
    print(f"{'ID':<{width}}  {'CREATED (UTC)':<20}  STATE", file=out)
    for key in ring.keys:
        if key.retired:
            state = "retired"
        elif key is ring.current:
            state = "current"
        else:
            state = "active"
        print(f"{key.id:<{width}}  {_iso(key.created):<20}  {state}", file=out)
    return 0


_RELOAD_HINT = (
    "The running service uses the change after a reload "
    "(systemctl reload appproxy, or kill -HUP its process)."
)


def _cmd_rotate(args: argparse.Namespace, out: TextIO) -> int:
    path = _new_keyring_path(args)
    now = int(time.time())
    if not (path.exists() or path.is_symlink()):
        ring = load_or_create_keyring(path, now)
        hand_over(path)
        print(f"Created {path} with key {ring.current.id}.", file=out)
        print(_RELOAD_HINT, file=out)
        return 0
    _, ring = update_keyring(path, lambda ring: ring.rotated(now))
    hand_over(path)
    print(f"Added key {ring.current.id}; it is now the current key.", file=out)
    print("Cookies made under the older keys stay valid until those keys are retired.", file=out)
    print(_RELOAD_HINT, file=out)
    print(
        "With several service processes, reload them all before retiring the old key.",
        file=out,
    )
    return 0


def _cmd_retire(args: argparse.Namespace, out: TextIO) -> int:
    key_id: str = args.key_id
    path = _keyring_path(args)
    ring, new = update_keyring(path, lambda ring: ring.retired(key_id))
    hand_over(path)
    if new is ring:
        print(f"Key {key_id} was already retired.", file=out)
        return 0
    print(f"Retired key {key_id}: cookies made under it are no longer accepted.", file=out)
    print(_RELOAD_HINT, file=out)
    return 0


def _cmd_remove(args: argparse.Namespace, out: TextIO) -> int:
    key_id: str = args.key_id
    path = _keyring_path(args)
    update_keyring(path, lambda ring: ring.without(key_id))
    hand_over(path)
    print(f"Removed key {key_id}.", file=out)
    return 0


def add_keys_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{appproxy keys list|rotate|retire KEY_ID|remove KEY_ID}, each with
    C{--state-dir DIR} or C{--config FILE}.

    Each subcommand's C{func} is C{(args, out) -> int}; problems raise
    L{appproxy.access.keyring.KeyRingError} (a L{ValueError}) with a
    one-line message, or
    L{OSError}.
    """
    parser = subparsers.add_parser(
        "keys",
        help="list, rotate, retire and remove the session cookie keys",
        description=(
            f"Manage the keys that encrypt session cookies, in the service's "
            f"STATE_DIR/{KEYRING_FILENAME}. "
            "Rotate to add a new current key; once every service process has reloaded, "
            "retire the old key (its cookies are then refused); then remove it."
        ),
    )
    commands = parser.add_subparsers(
        title="key commands", metavar="COMMAND", dest="keys_command", required=True
    )
    listing = commands.add_parser("list", help="show each key's id, creation time and state")
    add_state_options(listing)
    listing.set_defaults(func=_cmd_list)
    rotate = commands.add_parser("rotate", help="add a new key and make it the current one")
    add_state_options(rotate)
    rotate.set_defaults(func=_cmd_rotate)
    retire = commands.add_parser("retire", help="stop accepting cookies made under KEY_ID")
    retire.add_argument("key_id", metavar="KEY_ID")
    add_state_options(retire)
    retire.set_defaults(func=_cmd_retire)
    remove = commands.add_parser("remove", help="delete the retired key KEY_ID from the file")
    remove.add_argument("key_id", metavar="KEY_ID")
    add_state_options(remove)
    remove.set_defaults(func=_cmd_remove)
