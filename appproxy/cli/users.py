"""
C{appproxy users add|passwd|totp|remove|disable|enable|list}: the built-in
identity provider's users, in the users file the service reads
(C{[builtin_provider] users_file}, in its state directory).

The file and its users are L{appproxy.idp.users}; this module parses the
command line, asks for passwords and prints.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TextIO

import attrs

from appproxy.cli.arguments import add_state_options, comma_list, hand_over, resolve_state
from appproxy.idp import totp
from appproxy.idp.passwords import hash_password
from appproxy.idp.users import (
    User,
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
    """The users file of the service named on the command line."""
    files = resolve_state(args)
    path = files.users_file
    if not path.parent.is_dir():
        raise ValueError(
            f"{path.parent} (the directory of the users file of {files.config_file}) does not "
            "exist: create it (owned by the service's user, mode 0700) or start the service once"
        )
    return path


def _handing_over(func: _Command) -> _Command:
    """
    C{func}, a command that changes the users file; then the file goes to
    the owner of its directory (L{hand_over}).
    """

    def command(args: argparse.Namespace, out: TextIO) -> int:
        code = func(args, out)
        path = _users_path(args)
        if path.exists():
            hand_over(path)
        return code

    return command


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
    UserStore.load(path).check_new_name(args.user)
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


def _end_sessions(args: argparse.Namespace, user: User, out: TextIO) -> None:
    """
    End the app sessions of C{user}, just removed or disabled: the sessions
    whose user name (the claim C{oidc.username_claim} names) is theirs.
    """
    from appproxy.cli.sessions import end_user_sessions, session_user_name

    files = resolve_state(args)
    name = session_user_name(files, user)
    count = end_user_sessions(files, name, int(time.time()))
    if count is not None:
        print(f"Ended {count} session(s) of {name}", file=out)


def _cmd_remove(args: argparse.Namespace, out: TextIO) -> int:
    path = _users_path(args)
    user = UserStore.load(path).existing(args.user)
    remove_user(path, args.user)
    print(f"Removed user {args.user}", file=out)
    _end_sessions(args, user, out)
    return 0


def _set_disabled(disabled: bool) -> _Command:
    def command(args: argparse.Namespace, out: TextIO) -> int:
        user = update_user(
            _users_path(args), args.user, lambda user: attrs.evolve(user, disabled=disabled)
        )
        print(f"{'Disabled' if disabled else 'Enabled'} user {args.user}", file=out)
        if disabled:
            _end_sessions(args, user, out)
        return 0

    return command


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    path = _users_path(args)
    store = UserStore.load(path)
    if not store.users:
        print(f"No users in {path}.", file=out)
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
        description=(
            "Manage the built-in provider's users, in the users file the service reads "
            "(users.json in its state directory, or [builtin_provider] users_file)."
        ),
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, help: str, func: _Command, user: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        if user:
            sub.add_argument("user", metavar="USER", help="the user name")
        add_state_options(sub)
        sub.set_defaults(func=_handing_over(func) if user else func)
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
