"""
What an idle public connection gives back (L{appproxy.frontend.idle},
L{appproxy.frontend.h2_idle}, L{appproxy.frontend.h2_settings},
L{appproxy.frontend.h2_fields}): the TLS connection goes on after its
buffers are replaced, shared settings behave as h2's own, the client
encoder's blocks decode to what was sent, and an HTTP/2 connection that went
idle (stand-ins for its priority tree and sending loop's Deferred, shared
parts) answers the next requests.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import h2.errors
import h2.events
from h2.exceptions import InvalidSettingsValueError
from h2.settings import SettingCodes, Settings
from hpack import Decoder
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appproxy.config.model import ClientLimits
from appproxy.daemon import pki
from appproxy.daemon.tls import SNIServerContextFactory
from appproxy.daemon.tls_transport import swap_empty_bios
from appproxy.frontend import h2_idle
from appproxy.frontend.h2_fields import ONE_RESPONSE_FIELDS, ClientEncoder
from appproxy.frontend.h2_settings import SharedSettings, share_settings
from appproxy.frontend.idle import (
    IdleSweep,
    compact_attributes,
    release_tls_buffers,
    shared_address,
)
from tests.h2_client import h2_client, pseudo

_CA = pki.generate_ca("appproxy idle test CA")
_SERVER = pki.issue_server_certificate(_CA, ["idle.test"])


def _pump(a: SSL.Connection, b: SSL.Connection) -> None:
    """Run both handshakes and move the bytes each end wrote to the other, until none are left."""
    for _ in range(20):
        for end in (a, b):
            try:
                end.do_handshake()
            except SSL.WantReadError:
                pass
        moved = False
        for src, dst in ((a, b), (b, a)):
            try:
                data = src.bio_read(1 << 20)
            except SSL.WantReadError:
                continue
            dst.bio_write(data)
            moved = True
        if not moved:
            return


def _received(end: SSL.Connection) -> bytes:
    chunks = []
    try:
        while True:
            chunks.append(end.recv(65536))
    except SSL.WantReadError:
        pass
    return b"".join(chunks)


class TLSBuffersTests(SynchronousTestCase):
    def setUp(self) -> None:
        factory = SNIServerContextFactory([(_SERVER.cert_pem, _SERVER.key_pem)], ())
        self.server = factory.serverConnectionForTLS(None)
        self.server.set_accept_state()
        self.client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        self.client.set_connect_state()
        self.client.set_tlsext_host_name(b"idle.test")
        _pump(self.client, self.server)

    def exchange(self, request: bytes, response: bytes) -> None:
        self.client.sendall(request)
        _pump(self.client, self.server)
        self.assertEqual(_received(self.server), request)
        self.server.sendall(response)
        _pump(self.client, self.server)
        self.assertEqual(_received(self.client), response)

    def test_connection_goes_on(self) -> None:
        """Both ways, the connection works as before once its BIOs are new."""
        self.exchange(b"GET / HTTP/1.1\r\n\r\n", b"x" * 50_000)
        old = self.server._into_ssl, self.server._from_ssl
        self.assertTrue(swap_empty_bios(self.server))
        self.assertNotEqual((self.server._into_ssl, self.server._from_ssl), old)
        for n in range(3):
            self.exchange(b"request %d" % n, b"response %d" % n * 1000)
            self.assertTrue(swap_empty_bios(self.server))

    def test_bytes_in_flight_kept(self) -> None:
        """A BIO still holding bytes is not replaced: they are still sent, or read."""
        self.server.send(b"not yet read from the BIO")
        self.assertFalse(swap_empty_bios(self.server))
        _pump(self.client, self.server)
        self.assertEqual(_received(self.client), b"not yet read from the BIO")
        self.client.send(b"not yet read by the server")
        _pump(self.client, self.server)
        self.assertFalse(swap_empty_bios(self.server))
        self.assertEqual(_received(self.server), b"not yet read by the server")
        self.assertTrue(swap_empty_bios(self.server))

    def test_not_a_tls_transport(self) -> None:
        """Only a transport that can give its buffers back is asked to."""
        self.assertFalse(release_tls_buffers(None))
        self.assertFalse(release_tls_buffers(object()))
        self.assertFalse(swap_empty_bios(object()))  # type: ignore[arg-type]


class _Connection:
    """A connection as the sweep sees it: busy or idle, lost or not."""

    def __init__(self) -> None:
        self.busy = False
        self.lost = False
        self.settled = 0
        self.fails = False

    def still_idle(self) -> bool:
        return not self.busy and not self.lost

    def settle_idle(self) -> None:
        self.settled += 1
        if self.fails:
            raise RuntimeError("settling failed")


_STEPS = st.lists(st.tuples(st.sampled_from(["idle", "busy", "lose", "tick"]), st.integers(0, 3)))


class IdleSweepTests(SynchronousTestCase):
    """
    L{IdleSweep}: a connection gives back what it holds once it has stayed
    idle from one sweep to the next, never while busy or once lost.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sweep = IdleSweep(self.clock, settle=1.0)

    def test_settled_once_idle_a_while(self) -> None:
        conn = _Connection()
        self.sweep.went_idle(conn)
        self.clock.advance(1.0)
        self.assertEqual(conn.settled, 0, "idle for less than a sweep")
        self.clock.advance(1.0)
        self.assertEqual(conn.settled, 1)
        self.assertEqual(len(self.sweep), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [], "nothing idle: no timer")
        self.clock.advance(10)
        self.assertEqual(conn.settled, 1, "settled once per idle time")

    def test_busy_connection_left_alone(self) -> None:
        """Busy at the sweep: not settled, and forgotten until it goes idle again."""
        conn = _Connection()
        self.sweep.went_idle(conn)
        conn.busy = True
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(conn.settled, 0)
        self.assertEqual(len(self.sweep), 0)
        conn.busy = False
        self.sweep.went_idle(conn)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(conn.settled, 1)

    def test_idle_again_waits_again(self) -> None:
        """A connection busy and idle again between sweeps starts its wait afresh."""
        conn = _Connection()
        self.sweep.went_idle(conn)
        self.clock.advance(1.0)
        self.sweep.went_idle(conn)  # a request came and went
        self.clock.advance(1.0)
        self.assertEqual(conn.settled, 0)
        self.clock.advance(1.0)
        self.assertEqual(conn.settled, 1)

    def test_lost_connection_dropped(self) -> None:
        conn = _Connection()
        self.sweep.went_idle(conn)
        conn.lost = True
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(conn.settled, 0)
        self.assertEqual(len(self.sweep), 0)

    def test_failure_logged_others_settled(self) -> None:
        bad, good = _Connection(), _Connection()
        bad.fails = True
        for conn in (bad, good):
            self.sweep.went_idle(conn)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual((bad.settled, good.settled), (1, 1))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.tuples(st.sampled_from(["idle", "busy", "lose", "tick"]), st.integers(0, 3)))
    )
    def test_model(self, steps: list[tuple[str, int]]) -> None:
        """
        Against a model: a connection is settled at a sweep only if it is
        idle and not lost then, and went idle before the previous sweep
        without a request since; and every such connection is.
        """
        clock = Clock()
        sweep = IdleSweep(clock, settle=1.0)
        conns = [_Connection() for _ in range(4)]
        # Per connection: the sweep count when it last went idle (None: busy or never).
        idle_since: list[int | None] = [None] * 4
        sweeps = 0
        for op, n in steps:
            conn = conns[n]
            if op == "idle" and not conn.lost:
                conn.busy = False
                sweep.went_idle(conn)
                idle_since[n] = sweeps
            elif op == "busy" and not conn.lost:
                conn.busy = True
                idle_since[n] = None
            elif op == "lose":
                conn.lost = True
                idle_since[n] = None
            elif op == "tick":
                before = [c.settled for c in conns]
                due = [
                    since is not None and since < sweeps and not c.busy and not c.lost
                    for c, since in zip(conns, idle_since, strict=True)
                ]
                if clock.getDelayedCalls():
                    clock.advance(1.0)
                    sweeps += 1
                else:
                    due = [False] * 4
                for i, c in enumerate(conns):
                    self.assertEqual(c.settled - before[i], int(due[i]), (steps, i))
                    if due[i]:
                        idle_since[i] = None
        self.assertLessEqual(len(clock.getDelayedCalls()), 1)


class AttributesTests(SynchronousTestCase):
    def test_compact_attributes(self) -> None:
        """The same attributes, in a smaller dict; a small one is left alone."""

        class Many:
            pass

        many: Any = Many()
        for n in range(36):
            setattr(many, f"a{n}", n)
        before = sys.getsizeof(many.__dict__)
        expected = dict(vars(many))
        self.assertTrue(compact_attributes(many))
        self.assertLess(sys.getsizeof(many.__dict__), before)
        self.assertEqual(vars(many), expected)
        self.assertFalse(compact_attributes(many))

    def test_shared_address(self) -> None:
        first = shared_address(IPv4Address("TCP", "127.0.0.1", 443))
        again = shared_address(IPv4Address("TCP", "127.0.0.1", 443))
        self.assertIs(first, again)
        other = shared_address(IPv4Address("TCP", "127.0.0.2", 443))
        self.assertEqual(other, IPv4Address("TCP", "127.0.0.2", 443))


_CODES = [
    SettingCodes.HEADER_TABLE_SIZE,
    SettingCodes.ENABLE_PUSH,
    SettingCodes.INITIAL_WINDOW_SIZE,
    SettingCodes.MAX_FRAME_SIZE,
    SettingCodes.MAX_CONCURRENT_STREAMS,
    SettingCodes.MAX_HEADER_LIST_SIZE,
]
_settings_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.integers(0, 1),
            st.sampled_from(_CODES),
            st.sampled_from([0, 1, 2, 100, 4096, 16384, 65535, 2**24, 2**31]),
        ),
        st.tuples(st.just("ack"), st.integers(0, 1), st.none(), st.none()),
        st.tuples(st.just("del"), st.integers(0, 1), st.sampled_from(_CODES), st.none()),
    ),
    max_size=30,
)


def _view(s: Settings) -> dict[Any, Any]:
    return {code: s.get(code) for code in _CODES}


class SharedSettingsTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.booleans(), _settings_ops)
    def test_as_h2s(self, client: bool, ops: list[tuple[str, int, Any, Any]]) -> None:
        """Two connections' settings, shared while settled: each as h2's own."""
        ours: list[Any] = [Settings(client=client), Settings(client=client)]
        for s in ours:
            share_settings(s)
        theirs = [Settings(client=client), Settings(client=client)]
        self.assertIs(ours[0]._settings, ours[1]._settings)
        for op, which, code, value in ops:
            results: list[Any] = []
            for s in (ours[which], theirs[which]):
                try:
                    if op == "set":
                        s[code] = value
                        results.append(None)
                    elif op == "ack":
                        changed = s.acknowledge()
                        results.append(
                            {
                                k: (c.setting, c.original_value, c.new_value)
                                for k, c in changed.items()
                            }
                        )
                    else:
                        del s[code]
                        results.append(None)
                except (InvalidSettingsValueError, KeyError) as e:
                    results.append(type(e))
            self.assertEqual(results[0], results[1])
            for mine, reference in zip(ours, theirs, strict=True):
                self.assertEqual(_view(mine), _view(reference))
                self.assertEqual(
                    {k: list(v) for k, v in mine._settings.items()},
                    {k: list(v) for k, v in reference._settings.items()},
                )

    def test_settled_tables_shared(self) -> None:
        a: Any = Settings(client=False)
        b: Any = Settings(client=False)
        share_settings(a)
        share_settings(b)
        self.assertIsInstance(a, SharedSettings)
        self.assertIs(a._settings, b._settings)
        a.initial_window_size = 100
        self.assertIsNot(a._settings, b._settings)
        self.assertEqual((a.initial_window_size, b.initial_window_size), (65535, 65535))
        a.acknowledge()
        self.assertEqual((a.initial_window_size, b.initial_window_size), (100, 65535))
        b.initial_window_size = 100
        b.acknowledge()
        self.assertIs(a._settings, b._settings)


_names = st.sampled_from(
    [*sorted(ONE_RESPONSE_FIELDS), b"content-type", b"server", b"x-a", b"set-cookie", b"vary"]
)
_blocks = st.lists(
    st.lists(st.tuples(_names, st.binary(max_size=20)), max_size=8), min_size=1, max_size=6
)


class ClientEncoderTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_blocks, st.booleans())
    def test_round_trip(self, blocks: list[list[tuple[bytes, bytes]]], huffman: bool) -> None:
        """Block after block, hpack's decoder reads what was sent; no value of
        a field unique to one response enters the table."""
        encoder = ClientEncoder()
        decoder = Decoder()
        for block in blocks:
            fields = [(b":status", b"200"), *block]
            decoded = decoder.decode(encoder.encode(fields, huffman=huffman), raw=True)
            self.assertEqual([(n, v) for n, v in decoded], fields)
            names = {name for name, _ in encoder.header_table.dynamic_entries}
            self.assertFalse(names & ONE_RESPONSE_FIELDS)
            self.assertEqual(
                list(encoder.header_table.dynamic_entries),
                list(decoder.header_table.dynamic_entries),
            )


def _borrowed(name: str) -> Any:
    """A helper of test_h2_compact's connection tests (not its tests)."""
    return getattr(importlib.import_module("tests.test_h2_compact").IdleConnectionTests, name)


class IdleH2ConnectionTests(SynchronousTestCase):
    """An HTTP/2 connection after its last stream: lighter, and answering still."""

    server: Any
    transport: Any
    client: Any
    clock: Any
    setUp = _borrowed("setUp")
    connect = _borrowed("connect")
    turn = _borrowed("turn")
    exchange = _borrowed("exchange")
    get = _borrowed("get")

    def settle(self) -> None:
        """Idle from one sweep to the next (L{appproxy.frontend.idle.IdleSweep})."""
        self.clock.advance(1.0)
        self.clock.advance(1.0)

    def test_stand_ins_then_next_requests(self) -> None:
        sid, _ = self.get()
        server: Any = self.server
        self.assertNotIsInstance(server.priority, h2_idle._IdleTree)  # not idle long yet
        self.settle()
        self.assertIsInstance(server.priority, h2_idle._IdleTree)
        self.assertIsInstance(server._sendingDeferred, h2_idle._Wake)
        for n in range(3):
            # A priority frame on the idle connection, then a request.
            self.client.prioritize(sid + 2 + 2 * n, weight=64)
            _, events = self.get(b"n%d" % n)
            data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
            self.assertEqual(data, b"n%d" % n)
            self.settle()
            self.assertIsInstance(server.priority, h2_idle._IdleTree)
        # A response written while idle wakes the sending loop.
        sid3 = self.client.get_next_available_stream_id()
        self.client.send_headers(sid3, pseudo(b"GET", b"/"), end_stream=True)
        self.server.dataReceived(self.client.data_to_send())
        request: Any = server.streams[sid3]._request
        request.write(b"later")
        self.turn()
        request.finish()
        self.turn()
        events = self.client.receive_data(self.transport.value())
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        self.assertEqual(data, b"later")
        self.assertTrue(any(isinstance(e, h2.events.StreamEnded) for e in events))

    def test_shared_parts(self) -> None:
        """Two connections share their configuration and Huffman coder."""
        other, _ = self.connect()
        mine: Any = self.server.conn
        theirs: Any = other.conn
        self.assertIs(mine.config, theirs.config)
        self.assertIs(mine.encoder.huffman_coder, theirs.encoder.huffman_coder)
        self.assertFalse(mine.config.validate_outbound_headers)

    def test_wake_logs_a_failure(self) -> None:
        """The stand-in for the Deferred reports a failing loop as the Deferred would."""

        class Failing:
            def _sendPrioritisedData(self, *args: Any) -> None:
                raise RuntimeError("boom")

        h2_idle._Wake(Failing()).callback(1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


#: What settling replaces on purpose (with empty or stand-in objects), or
#: forgets (a full token bucket's time of last refill).
_REPLACED = {
    "streams",
    "_outboundStreamQueues",
    "_streamCleanupCallbacks",
    "priority",
    "_sendingDeferred",
    "_resetTokenTimestamp",
    "_empty_tokens_at",
}


class IdleH2AttributesTests(SynchronousTestCase):
    """
    An idle HTTP/2 connection keeps fewer attributes of its own (those the
    class holds the same value for), and behaves as before: its values read
    the same and its limits still hold.
    """

    setUp = IdleH2ConnectionTests.setUp
    connect = IdleH2ConnectionTests.connect
    turn = IdleH2ConnectionTests.turn
    exchange = IdleH2ConnectionTests.exchange
    get = IdleH2ConnectionTests.get
    server: Any
    transport: Any
    client: Any
    clock: Any

    def settle(self) -> None:
        """Idle from one sweep to the next (L{appproxy.frontend.idle.IdleSweep})."""
        self.clock.advance(1.0)
        self.clock.advance(1.0)

    def test_same_values_fewer_attributes(self) -> None:
        """
        Every attribute reads as it did before settling, but for what
        settling replaces; fewer than 22 are the connection's own (CPython
        gives 22 to 42 a table twice the size).
        """
        self.get()
        self.clock.advance(0.01)  # as a sweep finds it
        before = {name: getattr(self.server, name) for name in vars(self.server)}
        self.settle()
        after = {name: getattr(self.server, name) for name in before if name not in _REPLACED}
        self.assertEqual(after, {name: before[name] for name in after})
        self.assertLess(len(vars(self.server)), 22)
        # The connection goes on, its own attributes back as it sets them.
        _, events = self.get(b"again")
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        self.assertEqual(data, b"again")

    def limited(self, settle: bool = True) -> Any:
        """A connection with limits of its own (not the defaults), one request made, settled."""
        limits = ClientLimits(h2_empty_data_burst=3, h2_empty_data_rate=0.001, h2_reset_burst=4)
        server, self.transport = self.connect(limits)
        self.server = server
        self.client = h2_client()
        self.exchange()
        self.get()
        if settle:
            self.settle()
        return server

    def empty_data(self, server: Any, sid: int, count: int) -> None:
        for _ in range(count):
            self.client.send_data(sid, b"")
        server.dataReceived(self.client.data_to_send())

    def test_empty_data_limit_after_idle(self) -> None:
        """The empty DATA frame bucket, settled full, still allows its burst and no more."""
        server = self.limited()
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, pseudo(b"POST", b"/"))
        for n in range(4):
            self.client.send_data(sid, b"")
            server.dataReceived(self.client.data_to_send())
            self.assertEqual(server._flooded, n == 3, n)

    def test_reset_limit_after_idle(self) -> None:
        """The stream reset bucket, settled full, still allows its burst and no more."""
        server = self.limited()
        for n in range(5):
            sid = self.client.get_next_available_stream_id()
            self.client.send_headers(sid, pseudo(b"GET", b"/"), end_stream=True)
            self.client.reset_stream(sid)
            server.dataReceived(self.client.data_to_send())
            events = self.client.receive_data(self.transport.value())
            self.transport.clear()
            ended = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
            self.assertEqual(bool(ended), n == 4, n)
        self.assertEqual(ended[0].error_code, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def test_partly_used_bucket_kept(self) -> None:
        """
        A bucket that is not full keeps its time of last refill through
        settling: it refills from then, not from the epoch.
        """
        self.clock.advance(1_000_000)  # far from the epoch: from there, it would refill
        server = self.limited(settle=False)
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, pseudo(b"POST", b"/"))
        self.empty_data(server, sid, 2)
        self.client.end_stream(sid)
        server.dataReceived(self.client.data_to_send())
        request: Any = server.streams[sid]._request
        request.finish()
        self.exchange()
        self.settle()
        self.assertIsInstance(server.priority, h2_idle._IdleTree)  # settled
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, pseudo(b"POST", b"/"))
        self.empty_data(server, sid, 1)
        self.assertFalse(server._flooded)
        self.empty_data(server, sid, 1)
        self.assertTrue(server._flooded)
