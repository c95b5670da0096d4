"""
The frame-repr shortcut must say exactly what hyperframe's own repr says.
"""

from __future__ import annotations

import binascii

from hyperframe.frame import DataFrame
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import appproxy.tunnel.base
from appproxy.tunnel.base import bounded_raw_data_repr


def original_raw_data_repr(data: bytes | None) -> str:
    # hyperframe 6's implementation, verbatim.
    if not data:
        return "None"
    r = binascii.hexlify(data).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


class FrameReprTests(SynchronousTestCase):
    @given(st.one_of(st.none(), st.binary(max_size=64)))
    def test_same_text(self, data: bytes | None) -> None:
        self.assertEqual(bounded_raw_data_repr(data), original_raw_data_repr(data))

    def test_installed(self) -> None:
        """
        Frames received by h2 use the shortcut (importing the tunnel installs it).
        """
        self.assertTrue(appproxy.tunnel.base.bounded_raw_data_repr)
        frame = DataFrame(1, data=b"\x01" * 1_000_000)
        self.assertIn("<hex:01010101010101010101...>", repr(frame))
