"""
Header blocks received on the tunnel, checked without I/O: the checks of
h2's own validation of received blocks (RFC 9113 section 8.2), which the
tunnel's connection (L{appproxy.tunnel.connection}) runs instead of h2's,
with the same outcome for every block, in a few operations over the whole
block rather than a chain of generators with a Python loop over every byte
of every name and value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hpack import Decoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hpack.hpack import _unicode_if_needed
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from appproxy.tunnel.fields import _BAD_VALUE, _CONNECTION_SPECIFIC, _PSEUDO, Field

# What h2 accepts in a received field name: no 0x00-0x20, no uppercase, no
# 0x7f-0xff, a colon only as a pseudo-header field's first character.
_RECEIVED_NAME_CHAR = rb"[\x21-\x39\x3b-\x40\x5b-\x7e]"
_RECEIVED_NAMES = re.compile(
    rb"(?::" + _RECEIVED_NAME_CHAR + rb"+\n)*(?:" + _RECEIVED_NAME_CHAR + rb"+\n)*"
)
_RECEIVED_BAD_FIRST = re.compile(rb"[^\x21-\x40\x5b-\x7e]")
_RECEIVED_BAD_REST = re.compile(rb"[^\x21-\x39\x3b-\x40\x5b-\x7e]")
#: hpack's static table, and a tuple's own constructor (HeaderTuple's
#: C{__new__} is a Python call making the same).
_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LENGTH = HeaderTable.STATIC_TABLE_LENGTH
_new_tuple = tuple.__new__
_REQUEST_ONLY = frozenset({b":scheme", b":path", b":authority", b":method", b":protocol"})

#: The kinds of a received header block (L{received_problem}).
REQUEST_BLOCK = "request"
RESPONSE_BLOCK = "response"
TRAILER_BLOCK = "trailers"


class TunnelDecoder(Decoder):
    """
    hpack's decoder, the same fields decoded and the same errors raised,
    with a field indexed in one byte (the usual one on a tunnel, whose
    blocks repeat) decoded in place: hpack's own loop makes four Python
    calls and a debug log call per field.
    """

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        if not raw:
            return list(super().decode(data, raw))
        table = self.header_table
        get = table.get_by_index
        limit = self.max_header_list_size
        view = memoryview(data)
        headers: list[HeaderTuple] = []
        size = 0
        at = 0
        end = len(data)
        while at < end:
            current = data[at]
            if current & 0x80:
                if current != 0xFF:
                    # hpack's get_by_index and HeaderTuple(name, value), inline.
                    index = (current & 0x7F) - 1
                    if 0 <= index < _STATIC_LENGTH:
                        entry = _STATIC[index]
                    elif 0 <= index - _STATIC_LENGTH < len(table.dynamic_entries):
                        entry = table.dynamic_entries[index - _STATIC_LENGTH]
                    else:
                        entry = get(index + 1)  # raises as hpack does
                    header = _new_tuple(HeaderTuple, entry)
                    consumed = 1
                else:
                    header, consumed = self._decode_indexed(view[at:])
            elif current & 0x40:
                header, consumed = self._decode_literal_index(view[at:])
                header = _unicode_if_needed(header, True)
            elif current & 0x20:
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                at += self._update_encoding_context(view[at:])
                continue
            else:
                # A literal not indexed (or never indexed): in place when its
                # name is indexed in one byte and its value's length fits in
                # one (hpack copies the rest of the block first, and makes
                # six Python calls and a debug log call).
                index = current & 0x0F
                second = data[at + 1] if at + 1 < end else 0x7F
                length = second & 0x7F
                if index and index != 0x0F and length != 0x7F and at + 2 + length <= end:
                    value = data[at + 2 : at + 2 + length]
                    if second & 0x80:
                        value = decode_huffman(value)
                    kind = NeverIndexedHeaderTuple if current & 0x10 else HeaderTuple
                    header = _new_tuple(kind, (get(index)[0], value))
                    consumed = 2 + length
                else:
                    header, consumed = self._decode_literal_no_index(view[at:])
                    header = _unicode_if_needed(header, True)
            headers.append(header)
            size += 32 + len(header[0]) + len(header[1])
            if size > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
            at += consumed
        if table._maxsize > self.max_allowed_table_size:  # hpack's check, its call only then
            self._assert_valid_table_size()
        return headers


def received_fields(block: list[Field]) -> list[Field]:
    """
    A received block as h2 normalises it (RFC 9113 section 8.2.3): the
    C{cookie} fields joined into one, last.
    """
    cookies = [value for name, value in block if name == b"cookie"]
    fields: list[Field] = [field for field in block if field[0] != b"cookie"]
    fields.append(NeverIndexedHeaderTuple(b"cookie", b"; ".join(cookies)))
    return fields


def received_problem(
    block: Sequence[Field], kind: str, names: list[bytes] | None = None
) -> str | None:
    """
    Why h2 would refuse this received header block (normalised first by
    L{received_fields} if it has a C{cookie}) as a protocol error, or
    C{None}: the checks of h2's C{validate_headers}, with the same
    outcome for every block (a property test holds them side by side), in
    a few operations over the whole block instead of a chain of generators
    with a Python loop over every byte of every name and value.

    @param kind: L{REQUEST_BLOCK}, L{RESPONSE_BLOCK} (informational
        responses too) or L{TRAILER_BLOCK}.
    @param names: the block's names, if the caller has them.
    """
    if names is None:
        names = [field[0] for field in block]
    values = [field[1] for field in block]
    joined = b"\n".join(names) + b"\n"
    if joined.count(b"\n") != len(names) or not _RECEIVED_NAMES.fullmatch(joined):
        problem = _received_char_problem(block)
        if problem is not None:
            return problem
    else:
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
            problem = _received_char_problem(block)
            if problem is not None:
                return problem
    if not _CONNECTION_SPECIFIC.isdisjoint(names):
        return "connection-specific field"
    if b"te" in names and any(
        value.lower() != b"trailers" for name, value in block if name == b"te"
    ):
        return "invalid te field"
    pseudo = [name for name in names if name[:1] == b":"]
    if not pseudo:
        if kind == REQUEST_BLOCK:
            return "request without :method"
        if kind == RESPONSE_BLOCK:
            return "response without :status"
        return None
    seen = set(pseudo)
    if names[: len(pseudo)] != pseudo:
        return "pseudo-header field out of sequence"
    if len(seen) != len(pseudo) or not seen <= _PSEUDO:
        return "duplicate or unknown pseudo-header field"
    if kind == TRAILER_BLOCK:
        return "pseudo-header field in trailers"
    if kind == RESPONSE_BLOCK:
        if b":status" not in seen or not seen.isdisjoint(_REQUEST_ONLY):
            return "response pseudo-header fields"
        return None
    return _request_problem(names, values, seen)


def _request_problem(names: list[bytes], values: list[bytes], seen: set[bytes]) -> str | None:
    """The checks of a request block's pseudo-header fields and C{host}."""
    if b":method" not in seen or b":status" in seen:
        return "request pseudo-header fields"
    connect = values[names.index(b":method")] == b"CONNECT"
    if connect and b":protocol" not in seen:
        if b":scheme" in seen or b":path" in seen:
            return "CONNECT with :scheme or :path"
    elif b":scheme" not in seen or b":path" not in seen:
        return "request without :scheme or :path"
    if not connect and b":protocol" in seen:
        return ":protocol without CONNECT"
    hosts = names.count(b"host")
    if hosts > 1:
        return "more than one host field"
    authority = values[names.index(b":authority")] if b":authority" in seen else None
    if hosts:
        if authority is not None and authority != values[names.index(b"host")]:
            return ":authority and host differ"
    elif authority is None:
        return "request without :authority or host"
    if b":path" in seen and not values[names.index(b":path")]:
        return "empty :path"
    return None


def _received_char_problem(block: Sequence[Field]) -> str | None:
    """The first field whose name or value has a character h2 refuses."""
    for name, value in block:
        if not name:
            return "empty field name"
        if _RECEIVED_BAD_FIRST.match(name) or _RECEIVED_BAD_REST.search(name, 1):
            return f"invalid field name {name[:64]!r}"
        if value and _BAD_VALUE.search(value):
            return f"invalid value for the field {name[:64]!r}"
    return None
