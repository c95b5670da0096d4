"""
The tunnel's HTTP/2 connection: our own lean, strict implementation of
RFC 9113 (L{appproxy.tunnel.wire_send}, L{appproxy.tunnel.wire_receive}),
with h2's API, events and exceptions, that never sends a header block the
far end would take for a protocol error of the whole connection and sends
secrets and unique values as HPACK never-indexed fields (see
L{appproxy.tunnel.fields}).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from appproxy.tunnel.fields import UnsendableFields, field_problem
from appproxy.tunnel.wire_receive import WireConnection

#: Closed streams each tunnel connection remembers (h2 keeps 65,536, about
#: 8 MiB per connection once that many requests have gone through it):
#: enough to recognise the frames a peer had in flight when a stream was
#: reset.
CLOSED_STREAMS_KEPT = 4096


class TunnelConnection(WireConnection):
    """
    A L{WireConnection} that never sends a header block the far end would
    take for a protocol error of the whole connection (it raises
    L{UnsendableFields}, which ends one stream), and that sends secrets and
    unique values as HPACK never-indexed fields (its encoder,
    L{appproxy.tunnel.fields.TunnelEncoder}, picks them by name).

    Received header blocks are checked by
    L{appproxy.tunnel.received.received_problem} (h2's checks, a protocol
    error of the connection as in h2) and decoded by
    L{appproxy.tunnel.received.TunnelDecoder}.
    """

    __slots__ = ()

    MAX_CLOSED_STREAMS = CLOSED_STREAMS_KEPT

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[Any],
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        fields = headers if isinstance(headers, list) else list(headers)
        problem = field_problem(fields)
        if problem is not None:
            raise UnsendableFields(problem)
        super().send_headers(
            stream_id, fields, end_stream, priority_weight, priority_depends_on, priority_exclusive
        )
