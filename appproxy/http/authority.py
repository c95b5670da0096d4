"""
The authority of a URL or a C{Host} header, C{host[:port]}: one parser.

The grammar is the strictest of the places that read an authority (the
router, the response-header translation, the sign-in redirect check):

  - the host is either dot-separated labels of ASCII letters, digits, C{-}
    and C{_} (1-63 characters each, 253 in all, one trailing dot allowed),
    or an IPv6 address in brackets (no zone identifier);
  - the port, after a C{:}, is empty or 1-5 ASCII digits from 1 to 65535;
  - nothing else: no userinfo (C{user@}), no whitespace, nothing but ASCII.

What a caller then makes of it is its own business:
L{Authority.canonical} compares hosts as DNS does, C{str()} gives the
authority as written (lowercased) to check that it was written plainly.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

__all__ = ["Authority", "parse_authority"]

_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_MAX_NAME_LENGTH = 253
_MAX_PORT_DIGITS = 5


@attrs.frozen
class Authority:
    """A parsed C{host[:port]}."""

    host: str
    """
    Lowercase, as written: a host name (a trailing dot kept) or an IPv6
    literal in brackets (not compressed).
    """
    port: int | None
    """The port, or None if there is none or it is empty: the scheme's default."""

    def __str__(self) -> str:
        """The authority as C{host} or C{host:port}."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def canonical(self) -> Authority:
        """
        The same authority with its host as DNS compares it: without a
        trailing dot; an IPv6 address in its compressed form.
        """
        if self.host.startswith("["):
            host = f"[{ipaddress.IPv6Address(self.host[1:-1]).compressed}]"
        else:
            host = self.host.removesuffix(".")
        return Authority(host, self.port)

    def normalised(self, default_port: int) -> str:
        """C{host}, or C{host:port} if the port is not C{default_port}."""
        if self.port is None or self.port == default_port:
            return self.host
        return f"{self.host}:{self.port}"


def _host(text: str) -> str:
    """C{text} if it is a host name or an IPv6 literal (in brackets)."""
    if text.startswith("["):
        if ipaddress.IPv6Address(text[1:-1]).scope_id is not None:
            raise ValueError("an IPv6 zone identifier")
        return text
    name = text.removesuffix(".")
    if not (0 < len(name) <= _MAX_NAME_LENGTH):
        raise ValueError("an empty or over-long host name")
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError("a malformed host name")
    return text


def _port(text: str) -> int | None:
    """The port after the host (C{:443}): None if there is none or it is empty."""
    if not text:
        return None
    if text[0] != ":":
        raise ValueError("no colon before the port")
    digits = text[1:]
    if not digits:
        return None
    if not (len(digits) <= _MAX_PORT_DIGITS and digits.isdigit()):
        raise ValueError("a malformed port")
    port = int(digits)
    if not 0 < port < 65536:
        raise ValueError("a port out of range")
    return port


def parse_authority(text: str) -> Authority | None:
    """
    Parse C{host[:port]} (see the module docstring for the grammar).

    @return: the authority, its host lowercased; or None if C{text} is
        malformed.
    """
    if not text.isascii():
        # Before lowercasing: some non-ASCII characters lowercase to ASCII.
        return None
    text = text.lower()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        host, rest = text[: close + 1], text[close + 1 :]
    else:
        host, colon, port = text.partition(":")
        rest = colon + port
    try:
        return Authority(_host(host), _port(rest))
    except ValueError:
        return None
