"""
An HTTP/2 client of the real stack (L{tests.deployment}: service, connector
and backend, real TLS on loopback) gets a small response's body in one DATA
frame that carries END_STREAM, not the data and then an empty DATA frame:
the tunnel's "this data ends the stream" is passed on with the data
(L{appproxy.tunnel.service_events}, L{appproxy.frontend.relay.ResponseRelay.last},
L{appproxy.frontend.h2_guard.GuardedH2Connection.write_last}).
"""

from __future__ import annotations

from typing import Any

import attrs
import h2.events
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests import deployment
from tests.h2_client import h2_client, pseudo, tls_socket


@attrs.define
class Frames:
    """What one stream got: its status and its DATA frames (length, ended)."""

    status: int = 0
    data: list[tuple[int, bool]] = attrs.Factory(list)
    body: bytes = b""
    ended: bool = False


def fetch(d: deployment.Deployment, requests: list[tuple[bytes, bytes]]) -> dict[int, Frames]:
    """Send each (method, path) on its own stream of one connection; record the frames."""
    got: dict[int, Frames] = {}
    with tls_socket(d) as tls:
        conn = h2_client()
        for method, path in requests:
            sid = conn.get_next_available_stream_id()
            got[sid] = Frames()
            conn.send_headers(sid, pseudo(method, path), end_stream=True)
        tls.sendall(conn.data_to_send())
        while not all(frames.ended for frames in got.values()):
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                frames = got.get(getattr(event, "stream_id", 0))
                if frames is None:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    frames.status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    frames.data.append((len(event.data), event.stream_ended is not None))
                    frames.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    frames.ended = True
            tls.sendall(conn.data_to_send())
    return got


class LastFrameTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_small_responses_end_with_their_data(self) -> Any:
        """
        Small responses (and several at once on a connection): each body in
        one DATA frame with END_STREAM; a HEAD and a response without body
        end as before.
        """
        d = yield deployment.start(self)
        got = yield deferToThread(
            fetch,
            d,
            [
                (b"GET", b"/bytes?n=100"),
                (b"GET", b"/echo?a=1"),
                (b"GET", b"/bytes?n=5000"),
                (b"HEAD", b"/bytes?n=100"),
                (b"GET", b"/redirect?to=/x"),
            ],
        )
        small, echo, larger, head, redirect = (got[sid] for sid in (1, 3, 5, 7, 9))
        self.assertEqual((small.status, small.body), (200, b"x" * 100))
        self.assertEqual(small.data, [(100, True)])
        self.assertEqual(echo.status, 200)
        self.assertEqual(echo.data, [(len(echo.body), True)])
        self.assertEqual(larger.body, b"x" * 5000)
        self.assertEqual(larger.data[-1], (larger.data[-1][0], True))
        self.assertNotIn((0, True), larger.data)
        self.assertEqual((head.status, head.body, head.ended), (200, b"", True))
        self.assertEqual((redirect.status, redirect.ended), (302, True))
