"""
The WebSocket opening handshake as the public listener judges it (RFC 6455
section 4.2.1), and the C{Origin} check that stops cross-site WebSocket
hijacking.

L{classify_handshake} sorts a request into: not an upgrade (no C{Upgrade}
field, or one that does not name C{websocket}: C{h2c} and every other token
are dropped with the hop-by-hop fields, as for any request); a well-formed
WebSocket handshake; a malformed one (400); one of another protocol version
(426, answered with C{Sec-WebSocket-Version: 13}).

L{origin_allowed}: a handshake's C{Origin} must be the app's external origin
or one of its C{websocket_origins}.  A handshake without C{Origin} is
allowed: browsers always send one with a WebSocket handshake (RFC 6455
section 4.1, point 8), and cross-site WebSocket hijacking needs a browser
(a page of another site opening a WebSocket with the user's cookies); a
client that is not a browser can send any C{Origin} it likes anyway.  The
literal C{null} (a sandboxed or opaque origin) is refused.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import attrs

from appproxy.http.headers import is_valid_header_value

__all__ = [
    "VERSION",
    "Handshake",
    "HandshakeKind",
    "classify_handshake",
    "normalise_origin",
    "origin_allowed",
    "switching_protocols_head",
]

#: The only WebSocket protocol version (RFC 6455).
VERSION = b"13"

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

#: Response fields the service writes itself on a 101, never the app's.
_OWN_101_FIELDS = frozenset(
    {
        b"connection",
        b"upgrade",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"content-length",
        b"te",
        b"trailer",
    }
)


class HandshakeKind(enum.Enum):
    """What a request is, as a WebSocket handshake."""

    NOT_UPGRADE = "not an upgrade"
    WEBSOCKET = "websocket"
    MALFORMED = "malformed"
    WRONG_VERSION = "wrong version"


@attrs.frozen
class Handshake:
    """The verdict on one request: its kind and, when refused, why."""

    kind: HandshakeKind
    detail: str = ""

    @property
    def status(self) -> int:
        """The status of the refusal: 400, 426 (0 when not refused)."""
        if self.kind is HandshakeKind.MALFORMED:
            return 400
        if self.kind is HandshakeKind.WRONG_VERSION:
            return 426
        return 0


def _tokens(values: Iterable[bytes]) -> list[bytes]:
    """The comma-separated tokens of C{values}, lowercase, without blanks."""
    tokens: list[bytes] = []
    for value in values:
        for token in value.split(b","):
            token = token.strip(b" \t").lower()
            if token:
                tokens.append(token)
    return tokens


def _fields(fields: Iterable[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        found.setdefault(name.lower(), []).append(value)
    return found


def _valid_key(key: bytes) -> bool:
    """A C{Sec-WebSocket-Key}: base64 (padded) of exactly 16 bytes."""
    key = key.strip(b" \t")
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def classify_handshake(
    method: bytes, version: bytes, fields: Iterable[tuple[bytes, bytes]]
) -> Handshake:
    """
    Whether a request (HTTP/1.x: C{version} as in the request line) is a
    WebSocket handshake, a malformed one, or no upgrade to WebSocket at all.

    @param fields: the request's header fields, names in any case, one pair
        per field line.
    """
    found = _fields(fields)
    upgrade = _tokens(found.get(b"upgrade", ()))
    # A protocol may carry a version ("websocket/13"): only the name counts.
    if b"websocket" not in [token.split(b"/", 1)[0] for token in upgrade]:
        return Handshake(HandshakeKind.NOT_UPGRADE)

    def malformed(detail: str) -> Handshake:
        return Handshake(HandshakeKind.MALFORMED, detail)

    if method != b"GET":
        return malformed("A WebSocket handshake must be a GET request.")
    if version != b"HTTP/1.1":
        return malformed("A WebSocket handshake must use HTTP/1.1.")
    if b"upgrade" not in _tokens(found.get(b"connection", ())):
        return malformed("A WebSocket handshake must have Connection: Upgrade.")
    if upgrade.count(b"websocket") != 1 or len(upgrade) != 1:
        return malformed("A WebSocket handshake must ask to upgrade to websocket only.")
    lengths = found.get(b"content-length", [])
    if found.get(b"transfer-encoding") or any(value.strip() != b"0" for value in lengths):
        return malformed("A WebSocket handshake has no body.")
    versions = found.get(b"sec-websocket-version", [])
    if len(versions) != 1:
        return malformed("A WebSocket handshake must have one Sec-WebSocket-Version.")
    keys = found.get(b"sec-websocket-key", [])
    if len(keys) != 1 or not _valid_key(keys[0]):
        return malformed("A WebSocket handshake must have one valid Sec-WebSocket-Key.")
    if versions[0].strip(b" \t") != VERSION:
        return Handshake(
            HandshakeKind.WRONG_VERSION, "Only WebSocket protocol version 13 is supported."
        )
    return Handshake(HandshakeKind.WEBSOCKET)


def normalise_origin(origin: str) -> str | None:
    """
    C{origin} as C{scheme://host[:port]}: lowercase, default port elided;
    L{None} when it is not an origin (C{null}, a path, user info, no host).
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if (
        scheme not in _DEFAULT_PORTS
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or not origin.isascii()
    ):
        return None
    shown = f"[{host}]" if ":" in host else host
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{shown}"
    return f"{scheme}://{shown}:{port}"


def origin_allowed(
    origins: Sequence[bytes], external_origin: str, allowed: Iterable[str] = ()
) -> bool:
    """
    Whether a handshake with C{Origin} values C{origins} may open a WebSocket
    to an app whose pages are at C{external_origin}, or at one of C{allowed}
    (both normalised as L{normalise_origin} does, or normalised here).

    No C{Origin}: allowed (see the module docstring).  More than one, or one
    that is not an origin: refused.
    """
    if not origins:
        return True
    if len(origins) != 1:
        return False
    try:
        given = normalise_origin(origins[0].decode("ascii"))
    except UnicodeDecodeError:
        return False
    if given is None:
        return False
    for candidate in (external_origin, *allowed):
        if normalise_origin(candidate) == given:
            return True
    return False


def switching_protocols_head(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """
    The C{101 Switching Protocols} response head the client gets: the
    upgrade fields, then the app's 101 fields (C{Sec-WebSocket-Accept}, the
    subprotocol and extensions it chose, cookies...) but for connection
    management fields, which are the service's own.
    """
    lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade"]
    for name, value in fields:
        if name.lower() in _OWN_101_FIELDS or not is_valid_header_value(value):
            continue
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"
