"""
The C{appproxy} administration command: the parser, L{main} and the one-line
error report.

    appproxy init|install|users|keys|logs|sessions|connectors|policy ...

Each command group lives in its own C{appproxy.cli} module (L{appproxy.cli.init},
...); its subcommands are functions C{(args, out) -> int} registered with
C{set_defaults(func=...)}, imported by an C{_add_*} function here only when the
parser is built. Expected errors (L{OSError}, L{ValueError}) become one
C{appproxy: error: ...} line on stderr and exit status 1; never a traceback.

A command that works on a running service's files names the service the same
way everywhere: C{--state-dir DIR} (the directory C{appproxy init} made) or
C{--config FILE} (L{appproxy.cli.arguments.add_state_options}), and finds
its files from the service's configuration
(L{appproxy.cli.arguments.resolve_state}).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import NoReturn, TextIO

__all__ = ["main"]

_PROG = "appproxy"


def _add_init(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.cli.init import add_init_command

    add_init_command(subparsers)


def _add_install(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.cli.install import add_install_command

    add_install_command(subparsers)


def _add_users(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.cli.users import add_users_command

    add_users_command(subparsers)


def _add_keys(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.cli.keys import add_keys_command

    add_keys_command(subparsers)


def _add_logs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.cli.logs import add_logs_command

    add_logs_command(subparsers)


def _add_sessions(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.cli.sessions import add_sessions_command

    add_sessions_command(subparsers)


def _add_connectors(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.cli.connectors import add_connectors_command

    add_connectors_command(subparsers)


def _add_policy(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appproxy.cli.policy import add_policy_command, load_policies

    add_policy_command(subparsers, load_policies)


_SUBCOMMANDS: Sequence[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = (
    _add_init,
    _add_install,
    _add_users,
    _add_keys,
    _add_logs,
    _add_sessions,
    _add_connectors,
    _add_policy,
)


#: The words being parsed, for L{_Parser.error}'s hint.
_WORDS: ContextVar[Sequence[str]] = ContextVar("_WORDS", default=())

_DASH_HINT = (
    " (a value that starts with '-' must come last, after '--' (... -- -9gDNiTF),"
    " or be joined to its option by '=' (--session=-abc))"
)


class _Parser(argparse.ArgumentParser):
    """
    An argument parser (its subcommands' parsers are of this class too)
    whose error for a missing argument hints at C{--} when the command line
    holds a word that starts with C{-} and is no option of the command: a
    key or session id such as C{-9gDNiTF}, read as an unknown option.
    """

    def error(self, message: str) -> NoReturn:
        troubles = ("arguments are required", "expected one argument", "unrecognized arguments")
        if any(trouble in message for trouble in troubles):
            options = self._option_string_actions
            dashed = [
                word
                for word in _WORDS.get()
                if word.startswith("-") and word != "--" and word.split("=")[0] not in options
            ]
            if dashed:
                message += _DASH_HINT
        super().error(message)


def _parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(prog=_PROG, description="appproxy administration")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the C{appproxy} command; return its exit status."""
    parser = _parser()
    words = _WORDS.set(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        # argparse has printed usage or help already.
        return e.code if isinstance(e.code, int) else 2
    finally:
        _WORDS.reset(words)
    func: Callable[[argparse.Namespace, TextIO], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args, sys.stdout)
    except (OSError, ValueError) as e:
        print(f"{_PROG}: error: {_describe(e)}", file=sys.stderr)
        return 1


def _describe(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)
