"""
The WebSocket handshake as the public listener judges it
(L{appproxy.http.websocket}): properties over generated requests, and the
frame boundaries of L{appproxy.frontend.ws_frames} over frames wsproto
writes.
"""

from __future__ import annotations

import base64
import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

from appproxy.frontend.ws_frames import FrameBoundaries, close_frame
from appproxy.http.headers import is_valid_header_value
from appproxy.http.websocket import (
    HandshakeKind,
    classify_handshake,
    normalise_origin,
    origin_allowed,
    switching_protocols_head,
)

Fields = list[tuple[bytes, bytes]]

KEY = base64.b64encode(b"0123456789abcdef")


def good(**changes: bytes | None) -> Fields:
    base: dict[bytes, bytes | None] = {
        b"Host": b"web.example",
        b"Upgrade": b"websocket",
        b"Connection": b"Upgrade",
        b"Sec-WebSocket-Version": b"13",
        b"Sec-WebSocket-Key": KEY,
    }
    base.update({name.replace("_", "-").encode(): value for name, value in changes.items()})
    return [(name, value) for name, value in base.items() if value is not None]


def case_variants(token: str) -> st.SearchStrategy[bytes]:
    return st.tuples(*[st.sampled_from([c.lower(), c.upper()]) for c in token]).map(
        lambda cs: "".join(cs).encode()
    )


spaces = st.sampled_from([b"", b" ", b"\t", b"  "])


class ClassifyTests(SynchronousTestCase):
    @given(
        upgrade=case_variants("websocket"),
        connection=st.lists(st.sampled_from([b"keep-alive", b"foo"]), max_size=2),
        upgrade_token=case_variants("upgrade"),
        key=st.binary(min_size=16, max_size=16),
        pad=spaces,
    )
    def test_well_formed(
        self, upgrade: bytes, connection: list[bytes], upgrade_token: bytes, key: bytes, pad: bytes
    ) -> None:
        """Any spelling of the tokens, Connection listing others too: a handshake."""
        tokens = b", ".join([*connection, pad + upgrade_token + pad])
        fields = good(
            Upgrade=pad + upgrade + pad, Connection=tokens, Sec_WebSocket_Key=base64.b64encode(key)
        )
        verdict = classify_handshake(b"GET", b"HTTP/1.1", fields)
        self.assertIs(verdict.kind, HandshakeKind.WEBSOCKET)
        self.assertEqual(verdict.status, 0)

    @given(upgrade=st.sampled_from([b"h2c", b"H2C", b"TLS/1.0", b"foo", b"h2", b"", b"web socket"]))
    def test_other_upgrades_are_ordinary_requests(self, upgrade: bytes) -> None:
        """h2c and every other token: not an upgrade (forwarded without Upgrade)."""
        verdict = classify_handshake(b"GET", b"HTTP/1.1", good(Upgrade=upgrade))
        self.assertIs(verdict.kind, HandshakeKind.NOT_UPGRADE)
        self.assertIs(
            classify_handshake(b"GET", b"HTTP/1.1", good(Upgrade=None)).kind,
            HandshakeKind.NOT_UPGRADE,
        )

    @given(
        key=st.one_of(
            st.binary(max_size=40).filter(lambda b: len(b) != 16).map(base64.b64encode),
            st.binary(min_size=1, max_size=30).filter(lambda b: b != KEY and not _is_key(b)),
        )
    )
    def test_bad_key(self, key: bytes) -> None:
        """A key that is not base64 of exactly 16 bytes: 400."""
        verdict = classify_handshake(b"GET", b"HTTP/1.1", good(Sec_WebSocket_Key=key))
        self.assertIs(verdict.kind, HandshakeKind.MALFORMED)
        self.assertEqual(verdict.status, 400)

    @given(version=st.binary(min_size=1, max_size=4).filter(lambda v: v.strip(b" \t") != b"13"))
    def test_other_version(self, version: bytes) -> None:
        """Any other version: 426 (the caller names 13)."""
        verdict = classify_handshake(b"GET", b"HTTP/1.1", good(Sec_WebSocket_Version=version))
        self.assertIs(verdict.kind, HandshakeKind.WRONG_VERSION)
        self.assertEqual(verdict.status, 426)

    def test_malformed(self) -> None:
        """Each missing or doubled part: 400."""
        cases: list[tuple[bytes, bytes, Fields]] = [
            (b"POST", b"HTTP/1.1", good()),
            (b"GET", b"HTTP/1.0", good()),
            (b"GET", b"HTTP/1.1", good(Connection=None)),
            (b"GET", b"HTTP/1.1", good(Connection=b"keep-alive")),
            (b"GET", b"HTTP/1.1", good(Sec_WebSocket_Key=None)),
            (b"GET", b"HTTP/1.1", good(Sec_WebSocket_Version=None)),
            (b"GET", b"HTTP/1.1", good(Upgrade=b"websocket, h2c")),
            (b"GET", b"HTTP/1.1", good(Content_Length=b"5")),
            (b"GET", b"HTTP/1.1", good(Transfer_Encoding=b"chunked")),
            (b"GET", b"HTTP/1.1", [*good(), (b"sec-websocket-key", KEY)]),
            (b"GET", b"HTTP/1.1", [*good(), (b"Sec-WebSocket-Version", b"13")]),
        ]
        for method, version, fields in cases:
            verdict = classify_handshake(method, version, fields)
            self.assertEqual(verdict.status, 400, (method, version, fields))
        # An empty body is no body.
        self.assertIs(
            classify_handshake(b"GET", b"HTTP/1.1", good(Content_Length=b"0")).kind,
            HandshakeKind.WEBSOCKET,
        )


def _is_key(value: bytes) -> bool:
    try:
        return len(base64.b64decode(value.strip(b" \t"), validate=True)) == 16
    except ValueError:
        return False


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True)


class OriginTests(SynchronousTestCase):
    @given(host=hosts, port=st.one_of(st.none(), st.integers(1, 65535)), upper=st.booleans())
    def test_own_origin(self, host: str, port: int | None, upper: bool) -> None:
        """The app's own origin in any case, with the default port or not: allowed."""
        netloc = host if port is None else f"{host}:{port}"
        external = normalise_origin(f"https://{netloc}")
        assert external is not None
        sent = f"https://{netloc}"
        if upper:
            sent = sent.upper()
        self.assertTrue(origin_allowed([sent.encode()], external))
        if port in (None, 443):
            self.assertTrue(origin_allowed([f"https://{host}:443".encode()], external))

    @given(host=hosts, other=hosts, scheme=st.sampled_from(["http", "https"]))
    def test_foreign_origin(self, host: str, other: str, scheme: str) -> None:
        """Another host, the plain-HTTP page of the same host: refused, unless listed."""
        external = f"https://{host}"
        sent = f"{scheme}://{other}"
        expected = normalise_origin(sent) == normalise_origin(external)
        self.assertEqual(origin_allowed([sent.encode()], external), expected)
        self.assertTrue(origin_allowed([sent.encode()], external, [f"{scheme}://{other}"]))

    def test_odd_origins(self) -> None:
        """No Origin: allowed (non-browsers); null, junk, two of them: refused."""
        external = "https://web.example"
        self.assertTrue(origin_allowed([], external))
        for sent in [
            [b"null"],
            [b"https://web.example/path"],
            [b"https://user@web.example"],
            [b"web.example"],
            [b"https://web.example", b"https://web.example"],
            ["https://wéb.example".encode()],
            [b"https://web.example:99999"],
        ]:
            self.assertFalse(origin_allowed(sent, external), sent)


class HeadTests(SynchronousTestCase):
    @given(
        fields=st.lists(
            st.tuples(
                st.sampled_from(
                    [b"sec-websocket-accept", b"connection", b"upgrade", b"set-cookie", b"x-a"]
                ),
                st.binary(max_size=10),
            ),
            max_size=6,
        )
    )
    def test_head(self, fields: Fields) -> None:
        """The 101 head: our upgrade fields once, the app's others, no control bytes."""
        head = switching_protocols_head(fields)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertTrue(head.endswith(b"\r\n\r\n"))
        lines = head[:-4].split(b"\r\n")[1:]
        names = [line.split(b":", 1)[0].lower() for line in lines]
        self.assertEqual(names.count(b"upgrade"), 1)
        self.assertEqual(names.count(b"connection"), 1)
        kept = [
            (n, v)
            for n, v in fields
            if n not in (b"connection", b"upgrade") and is_valid_header_value(v)
        ]
        self.assertEqual(lines[2:], [n + b": " + v for n, v in kept])


class FrameBoundaryTests(SynchronousTestCase):
    @given(
        messages=st.lists(
            st.tuples(st.binary(max_size=300), st.booleans(), st.booleans()), max_size=8
        ),
        cuts=st.lists(st.integers(0, 4000), max_size=6),
    )
    def test_boundaries(self, messages: list[tuple[bytes, bool, bool]], cuts: list[int]) -> None:
        """
        However the app's bytes are cut, the tracker is at a boundary exactly
        at the ends of frames, and stopping there keeps the frames whole.
        """
        server = FrameProtocol(client=False, extensions=[])
        frames: list[bytes] = []
        for payload, fin, ping in messages:
            frames.append(bytes(server.send_data(payload, fin=fin)))
            if ping:
                frames.append(bytes(server.ping(payload[:100])))
        stream = b"".join(frames)
        ends = {0}
        total = 0
        for frame in frames:
            total += len(frame)
            ends.add(total)
        pieces = sorted({0, len(stream), *[c for c in cuts if c < len(stream)]})
        tracker = FrameBoundaries()
        for start, end in itertools.pairwise(pieces):
            self.assertEqual(tracker.feed(stream[start:end]), end - start)
            self.assertEqual(tracker.at_boundary, end in ends)
        # Stopping at the first boundary after some offset.
        for cut in pieces[:-1]:
            stopper = FrameBoundaries()
            stopper.feed(stream[:cut])
            taken = stopper.feed(stream[cut:], stop_at_boundary=True)
            first_end = min(e for e in ends if e >= cut)
            if first_end == cut and stopper.at_boundary:
                self.assertEqual(taken, 0)
            else:
                self.assertEqual(cut + taken, min(e for e in ends if e > cut))

    def test_not_frames(self) -> None:
        """Bytes that are not frames (a reserved opcode): no boundary any more."""
        tracker = FrameBoundaries()
        tracker.feed(b"\x83\x00")
        self.assertTrue(tracker.lost)
        self.assertFalse(tracker.at_boundary)

    def test_compressed_frames(self) -> None:
        """RSV1 (permessage-deflate) frames pass: text that is not UTF-8 too."""
        tracker = FrameBoundaries()
        tracker.feed(b"\xc1\x03\xff\xfe\xfd")
        self.assertTrue(tracker.at_boundary)

    def test_close_frame(self) -> None:
        """The service's close frame, as a client reads it: 1008, session ended."""
        client = FrameProtocol(client=True, extensions=[])
        client.receive_bytes(close_frame())
        (frame,) = list(client.received_frames())
        self.assertIs(frame.opcode, Opcode.CLOSE)
        self.assertEqual(frame.payload, (CloseReason.POLICY_VIOLATION, "session ended"))
