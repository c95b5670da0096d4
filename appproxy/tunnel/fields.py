"""
Header fields on the tunnel, decided without I/O.

 - which fields HPACK must never index (RFC 7541 section 7.1.3): every user
   of a tunnel connection shares its compression context, so secrets and
   one-off values are sent as never-indexed literals and never enter it;
 - what the far end's HTTP/2 stack would refuse (RFC 9113 section 8.2.1):
   h2 treats a malformed header block as a protocol error of the whole
   connection, so each end checks what it is about to send and ends only
   that stream instead;
 - which request lines the connector's HTTP client can send;
 - the marker of control streams: a field in the tunnel's own reserved
   C{appproxy-} namespace, which the service removes from every user
   request (L{user_fields}), so no user request can be taken for control
   traffic, whatever its path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.hpack import INDEX_INCREMENTAL, INDEX_NEVER
from hpack.table import HeaderTable

from appproxy.tunnel.hpack_index import IndexedTable

Field = tuple[bytes, bytes]
# What hpack's Encoder.encode takes.
_EncoderInput = (
    Iterable[
        HeaderTuple | tuple[bytes | str, bytes | str] | tuple[bytes | str, bytes | str, bool | None]
    ]
    | dict[bytes | str, bytes | str]
)

#: Fields whose values are secrets (credentials, session cookies, the signed
#: identity assertion) or unique per request: never indexed by HPACK.
NEVER_INDEXED: frozenset[bytes] = frozenset(
    {
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"set-cookie",
        b"x-appproxy-jwt-assertion",
        b"x-request-id",
    }
)

#: The namespace of the tunnel's own fields (C{appproxy-app},
#: C{appproxy-error}, ...): set by the two ends, never taken from a user.
TUNNEL_PREFIX = b"appproxy-"
#: Marks a control stream; its value says which (C{settings}).
CONTROL_FIELD = b"appproxy-control"
#: The control stream on which the service pushes its settings.
SETTINGS_CONTROL = b"settings"

# RFC 9110 token characters, lowercase only (HTTP/2 field names).
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
# RFC 9113 8.2.1: no NUL, CR or LF; no leading or trailing SP or HTAB.
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_METHOD = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# What Twisted's HTTP client accepts as a request target (visible ASCII).
_TARGET = re.compile(rb"\A[\x21-\x7e]+\Z")
_DIGITS = re.compile(rb"\A[0-9]+\Z")
# C{:protocol}: the extended CONNECT of an upgraded stream (RFC 8441).
_PSEUDO = frozenset({b":status", b":method", b":scheme", b":authority", b":path", b":protocol"})
# The fast path of field_problem: the names joined by LF, each followed by one
# (pseudo-header fields first, then lowercase tokens).
_PLAIN_NAMES = re.compile(
    rb"(?::(?:status|method|scheme|authority|path)\n)*(?:[!#$%&'*+\-.^_`|~0-9a-z]+\n)*"
)
#: Connection-specific fields HTTP/2 forbids (RFC 9113 section 8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)


class UnsendableFields(ValueError):
    """
    A header block the far end would refuse, or a request line the
    connector's HTTP client cannot send.  It ends one stream.
    """


def protect(fields: Iterable[Field]) -> list[Field]:
    """
    C{fields} with those named in L{NEVER_INDEXED} turned into HPACK
    never-indexed fields.
    """
    return [
        NeverIndexedHeaderTuple(name, value) if name in NEVER_INDEXED else (name, value)
        for name, value in fields
    ]


class TunnelEncoder(Encoder):
    """
    hpack's encoder for the tunnel: the fields named in L{NEVER_INDEXED} go
    as never-indexed literals whatever tuple they come in (no
    L{NeverIndexedHeaderTuple} need be made per field, per block), and their
    values go as they are, without Huffman coding.

    Such a value is never in the table, so every block carries it whole:
    hpack's pure-Python Huffman coder would then code it at one end and
    decode it at the other on every request (hundreds of microseconds for a
    browser's C{Cookie}), to save a quarter of its bytes on the tunnel.

    The fields are bytes already (h2 encodes them before they get here), so
    the loop is hpack's own without its per-field conversions.
    """

    #: The dynamic table: searched in constant time (see hpack_index).
    table_class: type[HeaderTable] = IndexedTable

    def __init__(self) -> None:
        super().__init__()
        self.header_table = self.table_class()

    def encode(self, headers: _EncoderInput, huffman: bool = True) -> bytes:
        if isinstance(headers, dict):
            # As hpack orders a dict: pseudo-header fields first.
            items = list(headers.items())
            headers = [h for h in items if _as_bytes(h[0])[:1] == b":"]
            headers += [h for h in items if _as_bytes(h[0])[:1] != b":"]
        block: list[bytes] = []
        # Every size change since the last block (hpack's encoder asks its
        # table's flag, which a second change to the same size clears: the
        # first change then never reaches the decoder).
        if self.table_size_changes:
            block.append(self._encode_table_size_change())
            self.header_table.resized = False
        add = self.add
        for header in headers:
            name, value = header[0], header[1]
            if type(name) is not bytes or type(value) is not bytes:
                name, value = _as_bytes(name), _as_bytes(value)
            if (
                name in NEVER_INDEXED
                or (isinstance(header, HeaderTuple) and not header.indexable)
                or (len(header) > 2 and header[2])  # hpack's (name, value, sensitive)
            ):
                block.append(add((name, value), True, False))
            else:
                block.append(add((name, value), False, huffman))
        return b"".join(block)

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        """
        hpack's C{Encoder.add}, the same representations chosen the same way,
        without its debug log calls (two or three per field, on every block)
        and with a field in the table written in one step.
        """
        name, value = to_add
        table = self.header_table
        match = table.search(name, value)
        if match is None:
            encoded = self._encode_literal(
                name, value, INDEX_NEVER if sensitive else INDEX_INCREMENTAL, huffman
            )
            if not sensitive:
                table.add(name, value)
            return encoded
        index, _, perfect = match
        if perfect is not None:
            return _INDEXED[index] if index < len(_INDEXED) else self._encode_indexed(index)
        encoded = self._encode_indexed_literal(
            index, value, INDEX_NEVER if sensitive else INDEX_INCREMENTAL, huffman
        )
        if not sensitive:
            table.add(name, value)
        return encoded


#: The indexed representation (RFC 7541 section 6.1) of the indexes that fit
#: in its first byte.
_INDEXED = [bytes([0x80 | index]) for index in range(127)]


def _as_bytes(value: object) -> bytes:
    """A field's name or value as bytes, as hpack takes it (UTF-8 of its text)."""
    if type(value) is bytes:
        return value
    return str(value).encode("utf-8")


def field_problem(fields: Iterable[Field]) -> str | None:
    """
    Why the far end's HTTP/2 stack would refuse this header block, or
    C{None}.  Which pseudo-header fields a request or a response needs is
    the caller's business; their values are checked like any other.

    A few operations over the whole block clear the usual one
    (L{_plainly_fine}); anything they do not clear is judged field by field.
    """
    block = fields if isinstance(fields, list | tuple) else list(fields)
    if _plainly_fine(block):
        return None
    return _first_problem(block)


def _plainly_fine(block: Sequence[Field]) -> bool:
    """
    Whether C{block} is certainly fine, judged on the whole block at once;
    C{False} also for some that are (C{te: trailers}, or a value with LF,
    which L{_first_problem} then judges): never C{True} for one it refuses.
    """
    if not block:
        return True
    names, values = zip(*block, strict=True)
    joined = b"\n".join(names) + b"\n"
    # As many LFs as names: no name holds one, so each piece is one name.
    if joined.count(b"\n") != len(names) or not _PLAIN_NAMES.fullmatch(joined):
        return False
    # The values between LFs: none holds NUL, CR or LF, none begins or ends
    # with SP or HTAB.  Substring searches are faster here than a regex, and
    # find() than `in` (which first tries the operand as an integer: an
    # exception raised and cleared each time).
    joined = b"\n" + b"\n".join(values) + b"\n"
    find = joined.find
    if (
        joined.count(b"\n") != len(values) + 1
        or find(b"\x00") >= 0
        or find(b"\r") >= 0
        or find(b" \n") >= 0
        or find(b"\n ") >= 0
        or find(b"\t\n") >= 0
        or find(b"\n\t") >= 0
    ):
        return False
    if not _CONNECTION_SPECIFIC.isdisjoint(names) or b"te" in names:
        return False
    lengths = names.count(b"content-length")
    return lengths == 0 or (
        lengths == 1 and _DIGITS.match(values[names.index(b"content-length")]) is not None
    )


def _first_problem(fields: Iterable[Field]) -> str | None:
    """L{field_problem}, field by field: the first problem found."""
    lengths = 0
    regular = False
    for name, value in fields:
        if name[:1] == b":":
            if regular or name not in _PSEUDO:
                return f"misplaced or unknown pseudo-header field {name[:64]!r}"
        elif not name or _BAD_NAME.search(name):
            return f"invalid field name {name[:64]!r}"
        else:
            regular = True
        if value and _BAD_VALUE.search(value):
            return f"invalid value for the field {name.decode('ascii')!r}"
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            return f"connection-specific field {name.decode('ascii')!r}"
        if name == b"content-length":
            lengths += 1
            if lengths > 1 or not _DIGITS.match(value):
                return "invalid content-length"
    return None


def request_line_problem(method: bytes, path: bytes) -> str | None:
    """
    Why the connector's HTTP client could not send this method and path
    (it refuses any but a token method and a visible-ASCII target), or
    C{None}.
    """
    if not _METHOD.match(method):
        return "the method is not a token"
    if not _TARGET.match(path):
        return "the path has characters other than visible ASCII"
    return None


def user_fields(fields: Sequence[Field]) -> list[Field]:
    """
    A user request's fields without any a user must not set on the tunnel:
    pseudo-header fields and the tunnel's own C{appproxy-} namespace (so
    no user request can pass for control traffic).
    """
    return [
        (name, value)
        for name, value in fields
        if name[:1] != b":" and not name.startswith(TUNNEL_PREFIX)
    ]
