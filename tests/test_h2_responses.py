"""
Response header blocks on the public listener's HTTP/2 connections, as a raw
h2 client decodes them: names lowercase, values intact, and the fields whose
values are unique to one response (the request id) or secret (cookies) never
indexed, so they stay out of the HPACK table the connection's responses share.
"""

from __future__ import annotations

from typing import Any

from hpack import NeverIndexedHeaderTuple
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests import deployment
from tests.h2_client import h2_client, pseudo, tls_socket

Fields = list[tuple[bytes, bytes]]


def _responses(d: deployment.Deployment, paths: list[bytes]) -> tuple[list[Fields], set[bytes]]:
    """
    GET each of C{paths} in turn on one connection: each response's header
    block as decoded, and the names left in the client's HPACK table.
    """
    blocks: list[Fields] = []
    with tls_socket(d) as tls:
        conn = h2_client()
        for path in paths:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, pseudo(b"GET", path), end_stream=True)
            tls.sendall(conn.data_to_send())
            done = False
            for _ in range(1000):
                if done:
                    break
                data = tls.recv(65536)
                if not data:
                    raise AssertionError("the service closed the connection")
                for event in conn.receive_data(data):
                    if getattr(event, "stream_id", None) != sid:
                        continue
                    if hasattr(event, "headers") and event.headers is not None:
                        if any(name == b":status" for name, _ in event.headers):
                            blocks.append(list(event.headers))
                    if hasattr(event, "flow_controlled_length") and event.flow_controlled_length:
                        conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    if type(event).__name__ == "StreamEnded":
                        done = True
                tls.sendall(conn.data_to_send())
        table = {name for name, _ in conn.decoder.header_table.dynamic_entries}
    return blocks, table


class ResponseHeaderBlockTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_unique_and_secret_fields_never_indexed(self) -> Any:
        """
        Over five responses (two of the app's setting a cookie, three of the
        service's own, each with its request id), every field name is
        lowercase, C{set-cookie} and C{x-request-id} arrive as never-indexed
        literals with their values intact, and neither enters the table.
        """
        d = yield deployment.start(self)
        paths = [b"/cookie?c=a%3Db", b"/cookie?c=c%3Dd", *[b"/robots.txt"] * 3]
        blocks, table = yield deferToThread(_responses, d, paths)
        self.assertEqual([dict(block)[b":status"] for block in blocks], [b"200"] * 5)
        for block in blocks:
            for name, _ in block:
                self.assertEqual(name, name.lower())
        cookies = [f for block in blocks[:2] for f in block if f[0] == b"set-cookie"]
        self.assertEqual([value for _, value in cookies], [b"a=b", b"c=d"])
        ids = [f for block in blocks[2:] for f in block if f[0] == b"x-request-id"]
        self.assertEqual(len({value for _, value in ids}), 3)
        for field in [*cookies, *ids]:
            self.assertIsInstance(field, NeverIndexedHeaderTuple)
        for _, value in ids:
            self.assertRegex(value, rb"\A[0-9a-f]{32}\Z")
        self.assertFalse(table & {b"x-request-id", b"set-cookie"})
        self.assertIn(b"content-type", table)
