"""
C{appproxy users add|passwd|totp|remove|disable|enable|list}: the built-in
identity provider's users in the state directory's C{users.json}.

The file and its users are L{appproxy.idp.users}; this module parses the
command line, asks for passwords and prints.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final, TextIO

import attrs

from appproxy.cli.arguments import comma_list
from appproxy.idp import totp
from appproxy.idp.passwords import hash_password
from appproxy.idp.users import (
    USERS_FILE,
    UserStore,
    add_user,
    check_user_name,
    remove_user,
    update_user,
)

__all__ = ["MIN_PASSWORD_LENGTH", "add_users_command"]

#: The shortest password the C{appproxy users} commands accept.
MIN_PASSWORD_LENGTH: Final = 8

_Command = Callable[[argparse.Namespace, TextIO], int]


def _users_path(args: argparse.Namespace) -> Path:
    state_dir = Path(args.state_dir)
    if not state_dir.is_dir():
        raise ValueError(f"{state_dir} does not exist or is not a directory")
    return state_dir / USERS_FILE


def _read_password(args: argparse.Namespace) -> str:
    """
    The new password: one line from stdin with C{--password-stdin} or when
    stdin is not a terminal; otherwise asked twice without echo.
    """
    if getattr(args, "password_stdin", False) or not sys.stdin.isatty():
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password again: ")
        except EOFError:
            raise ValueError("no password given (input ended)") from None
        if again != password:
            raise ValueError("the passwords do not match")
    if not password:
        raise ValueError("the password must not be empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    return password


def _cmd_add(args: argparse.Namespace, out: TextIO) -> int:
    path = _users_path(args)
    check_user_name(args.user)
    if args.user in UserStore.load(path).users:
        raise ValueError(f"user {args.user!r} already exists")
    password = _read_password(args)
    add_user(
        path,
        args.user,
        password,
        name=args.name,
        email=args.email,
        groups=args.groups,
        roles=args.roles,
    )
    print(f"Added user {args.user} to {path}", file=out)
    return 0


def _cmd_passwd(args: argparse.Namespace, out: TextIO) -> int:
    path = _users_path(args)
    UserStore.load(path).existing(args.user)
    password = _read_password(args)
    password_hash = hash_password(password)
    update_user(path, args.user, lambda user: attrs.evolve(user, password_hash=password_hash))
    print(f"Changed the password of {args.user}", file=out)
    return 0


def _cmd_totp(args: argparse.Namespace, out: TextIO) -> int:
    path = _users_path(args)
    if args.disable:
        update_user(path, args.user, lambda user: attrs.evolve(user, totp_secret=None))
        print(f"Turned off the one-time codes of {args.user}", file=out)
        return 0
    secret = totp.generate_secret()
    update_user(path, args.user, lambda user: attrs.evolve(user, totp_secret=secret))
    print(f"One-time codes are now required for {args.user}.", file=out)
    print("Add this secret to an authenticator app (it is shown only once):", file=out)
    print(f"  secret: {secret}", file=out)
    print(f"  URI:    {totp.provisioning_uri(secret, args.user)}", file=out)
    return 0


def _cmd_remove(args: argparse.Namespace, out: TextIO) -> int:
    remove_user(_users_path(args), args.user)
    print(f"Removed user {args.user}", file=out)
    return 0


def _set_disabled(disabled: bool) -> _Command:
    def command(args: argparse.Namespace, out: TextIO) -> int:
        update_user(
            _users_path(args), args.user, lambda user: attrs.evolve(user, disabled=disabled)
        )
        print(f"{'Disabled' if disabled else 'Enabled'} user {args.user}", file=out)
        return 0

    return command


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    store = UserStore.load(_users_path(args))
    if not store.users:
        print("No users.", file=out)
        return 0
    rows = [("USER", "NAME", "EMAIL", "GROUPS", "ROLES", "TOTP", "STATE")]
    for name in sorted(store.users):
        user = store.users[name]
        rows.append(
            (
                name,
                user.display_name or "-",
                user.email or "-",
                ",".join(user.groups) or "-",
                ",".join(user.roles) or "-",
                "yes" if user.totp_secret else "no",
                "disabled" if user.disabled else "enabled",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    return 0


def add_users_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{appproxy users {add,passwd,totp,remove,disable,enable,list}}.

    Each subcommand's C{func} is C{(args, out) -> int}; errors raise
    L{ValueError} with a one-line message.
    """
    parser = subparsers.add_parser(
        "users",
        help="manage the built-in identity provider's users",
        description=f"Manage the users in STATE_DIR/{USERS_FILE} (the built-in provider's).",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, help: str, func: _Command, user: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        if user:
            sub.add_argument("user", metavar="USER", help="the user name")
        sub.add_argument(
            "--state-dir", required=True, metavar="DIR", help="the service's state directory"
        )
        sub.set_defaults(func=func)
        return sub

    def password_stdin(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--password-stdin", action="store_true", help="read the password from one line of stdin"
        )

    add = command("add", "add a user (asks for the password)", _cmd_add)
    add.add_argument("--name", default=None, help="display name (the 'name' claim)")
    add.add_argument("--email", default=None, help="e-mail address (the 'email' claim)")
    add.add_argument(
        "--groups", default=(), type=comma_list, metavar="A,B", help="comma-separated groups"
    )
    add.add_argument(
        "--roles", default=(), type=comma_list, metavar="A,B", help="comma-separated roles"
    )
    password_stdin(add)
    password_stdin(command("passwd", "set a user's password", _cmd_passwd))
    totp_parser = command(
        "totp", "require one-time codes: print a new secret (shown once)", _cmd_totp
    )
    totp_parser.add_argument("--disable", action="store_true", help="stop requiring one-time codes")
    command("remove", "remove a user", _cmd_remove)
    command("disable", "stop a user from signing in", _set_disabled(True))
    command("enable", "let a disabled user sign in again", _set_disabled(False))
    command("list", "list the users", _cmd_list, user=False)
