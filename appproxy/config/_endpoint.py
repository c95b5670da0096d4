"""
Listener endpoints: a Twisted server endpoint string (C{tcp:443},
C{unix:/run/appproxy.sock}, C{systemd:domain=INET:index=0}), checked
without opening anything.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from typing import Final, NoReturn

from appproxy.config._messages import quote
from appproxy.config._table import Table

_DIGITS = re.compile(r"[0-9]+")

# Parameters of the endpoint types accepted for listeners, in Twisted's
# positional order.
_ENDPOINT_PARAMS: Final[Mapping[str, tuple[str, ...]]] = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "unix": ("address", "mode", "backlog", "lockfile"),
    "systemd": ("domain", "index", "name"),
}


def endpoint(table: Table, name: str, tls_problem: str) -> str:
    """
    A Twisted server endpoint string for a listener, checked without opening
    anything.
    """
    value = table.string(name)
    shown = quote(value)
    parsed = _parse_endpoint(value)
    if parsed is None:
        table.fail(name, f"{shown} is not a valid endpoint: it ends with a lone backslash")
    args, kwargs = parsed
    kind = args[0]
    if kind.lower() in ("ssl", "tls"):
        table.fail(name, tls_problem)
    if kind not in _ENDPOINT_PARAMS:
        if len(args) == 1 and not kwargs:
            hint = f" (did you mean 'tcp:{kind}'?)" if _DIGITS.fullmatch(kind) else ""
            table.fail(name, f"{shown} is not an endpoint string{hint}")
        table.fail(
            name,
            f"{shown} is not a valid endpoint: unknown type {quote(kind)}"
            " (use tcp:, tcp6:, unix: or systemd:)",
        )

    def invalid(problem: str) -> NoReturn:
        table.fail(name, f"{shown} is not a valid endpoint: {problem}")

    params = _ENDPOINT_PARAMS[kind]
    positional = args[1:]
    if len(positional) > len(params):
        invalid(f"too many arguments for a {kind}: endpoint")
    given = dict(zip(params, positional, strict=False))
    for option, option_value in kwargs.items():
        if option not in params:
            invalid(f"unknown option {quote(option)} (known: {', '.join(params)})")
        if option in given:
            invalid(f"{option} is given twice")
        given[option] = option_value

    def integer(option: str, maximum: int | None = None) -> None:
        text = given.get(option)
        if text is None:
            return
        if not re.fullmatch("[0-9]{1,9}", text) or (maximum is not None and int(text) > maximum):
            limit = f"a number from 0 to {maximum}" if maximum is not None else "a number"
            invalid(f"{option} must be {limit}, not {quote(text)}")

    if kind in ("tcp", "tcp6"):
        if "port" not in given:
            invalid(f"it needs a port number (for example '{kind}:443')")
        integer("port", 65535)
        integer("backlog")
    elif kind == "unix":
        if not given.get("address"):
            invalid("it needs a socket path (for example 'unix:/run/appproxy.sock')")
        integer("backlog")
        if "mode" in given and not re.fullmatch("[0-7]{1,4}", given["mode"]):
            invalid(f"mode must be octal digits, not {quote(given['mode'])}")
        if given.get("lockfile", "0") not in ("0", "1"):
            invalid(f"lockfile must be 0 or 1, not {quote(given['lockfile'])}")
    else:
        domain = given.get("domain")
        if not domain:
            invalid("it needs a domain (for example 'systemd:domain=INET:index=0')")
        if not re.fullmatch("[A-Z0-9_]+", domain) or not hasattr(socket, f"AF_{domain}"):
            invalid(f"unknown address family {quote(domain)} (for example INET or INET6)")
        if ("index" in given) == ("name" in given):
            invalid("it needs exactly one of index= and name=")
        integer("index")
    return value


def _parse_endpoint(value: str) -> tuple[list[str], dict[str, str]] | None:
    """
    Split an endpoint string as Twisted does: C{:} separates arguments,
    C{key=value} arguments are keyword arguments, a backslash escapes the next
    character.  Returns L{None} if the string ends with a lone backslash.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    pieces: list[str] = []
    current: list[str] = []

    def add() -> None:
        if len(pieces) == 1:
            args.append(pieces[0])
        else:
            kwargs[pieces[0]] = pieces[1]

    ops = ":="
    chars = iter(value)
    for char in chars:
        if char in ops:
            pieces.append("".join(current))
            current = []
            if char == ":":
                add()
                pieces = []
                ops = ":="
            else:
                ops = ":"
        elif char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                return None
            current.append(escaped)
        else:
            current.append(char)
    pieces.append("".join(current))
    add()
    return args, kwargs
