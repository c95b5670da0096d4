"""
A cheaper C{repr} for hyperframe's frame payloads, installed by
L{appproxy.tunnel.base}.
"""

from __future__ import annotations

import binascii


def bounded_raw_data_repr(data: bytes | None) -> str:
    """
    Exactly what C{hyperframe.frame._raw_data_repr} returns, without
    hex-encoding the whole payload first.

    h2 calls C{repr(frame)} on every frame it receives, for trace logging,
    even when nothing is logged; hyperframe's repr hex-encodes all of a DATA
    frame's payload to keep its first 20 characters.  That was a quarter of
    the service's CPU time on a download.
    """
    if not data:
        return "None"
    r = binascii.hexlify(data[:11]).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"
