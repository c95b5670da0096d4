"""
The tunnel's HTTP/2 connection: h2's, with each header block checked on the
way out and its secrets sent never indexed (see L{appproxy.tunnel.fields}).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    Event,
    InformationalResponseReceived,
    RequestReceived,
    ResponseReceived,
    TrailersReceived,
)
from h2.exceptions import ProtocolError

from appproxy.tunnel.fields import Field, TunnelEncoder, UnsendableFields, field_problem
from appproxy.tunnel.received import (
    REQUEST_BLOCK,
    RESPONSE_BLOCK,
    TRAILER_BLOCK,
    TunnelDecoder,
    received_fields,
    received_problem,
)

if TYPE_CHECKING:
    from hpack.struct import HeaderWeaklyTyped
    from hyperframe.frame import Frame, HeadersFrame

#: The kind of header block each of h2's header events carries.
_BLOCK_KINDS = {
    RequestReceived: REQUEST_BLOCK,
    ResponseReceived: RESPONSE_BLOCK,
    InformationalResponseReceived: RESPONSE_BLOCK,
    TrailersReceived: TRAILER_BLOCK,
}


#: Closed streams each tunnel connection remembers (h2 keeps 65,536, about
#: 8 MiB per connection once that many requests have gone through it): enough
#: to recognise the frames a peer had in flight when a stream was reset.
CLOSED_STREAMS_KEPT = 4096


class TunnelConnection(H2Connection):
    """
    An L{H2Connection} that never sends a header block the far end would
    take for a protocol error of the whole connection (it raises
    L{UnsendableFields}, which ends one stream), and that sends secrets and
    unique values as HPACK never-indexed fields.

    h2's own outbound normalisation would do the second, but it also
    lowercases and copies every field of every block; the tunnel's fields
    are lowercase already.  The encoder (L{TunnelEncoder}) picks the
    never-indexed fields by name: no field is rewrapped per block.

    It remembers the last L{CLOSED_STREAMS_KEPT} closed streams, not h2's
    65,536 (memory that grew for the first minutes of any busy daemon).

    Received header blocks are checked by L{received_problem}, not by h2's
    own validation: the same blocks refused (as a protocol error of the
    connection, as h2 does), in a few operations over the whole block
    instead of a chain of generators with a Python loop over every byte;
    and decoded by L{TunnelDecoder}.
    """

    MAX_CLOSED_STREAMS = CLOSED_STREAMS_KEPT

    def __init__(self, client_side: bool) -> None:
        super().__init__(
            H2Configuration(
                client_side=client_side,
                header_encoding=None,
                # Checked by _receive_headers_frame, as h2 would.
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.encoder = TunnelEncoder()
        decoder = TunnelDecoder(self.decoder.max_header_list_size)
        decoder.max_allowed_table_size = self.decoder.max_allowed_table_size
        self.decoder = decoder

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[HeaderWeaklyTyped],
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        fields = cast(list[Field], headers if isinstance(headers, list) else list(headers))
        problem = field_problem(fields)
        if problem is not None:
            raise UnsendableFields(problem)
        super().send_headers(
            stream_id,
            fields,
            end_stream,
            priority_weight,
            priority_depends_on,
            priority_exclusive,
        )

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        frames, events = super()._receive_headers_frame(frame)
        for event in events:
            kind = _BLOCK_KINDS.get(type(event))
            if kind is None:
                continue
            headers: list[Field] = event.headers  # type: ignore[attr-defined]
            names = [field[0] for field in headers]
            if b"cookie" in names:
                headers = event.headers = received_fields(headers)  # type: ignore[attr-defined]
                names = [field[0] for field in headers]
            problem = received_problem(headers, kind, names)
            if problem is not None:
                raise ProtocolError(f"Received an invalid header block: {problem}")
            break
        return frames, events
