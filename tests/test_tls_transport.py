"""
The daemons' lean TLS transport (L{appproxy.daemon.tls_transport}) against
Twisted's own tests of C{TLSMemoryBIOProtocol}: handshakes, verification
failures, half-close, abort, producers through TLS, large and many small
writes, writes before the handshake ends, all run again with
L{LeanTLSFactory} where those tests build a C{TLSMemoryBIOFactory}.  Then
what the lean transport adds: writes of one turn joined into one record
and one TCP write, and the reactor's step before it polls; the memory BIOs
the handshake grew given back at the end of its turn, and on demand.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.test import test_tls as twisted_tls
from twisted.trial.unittest import SynchronousTestCase

from appproxy.daemon.tls_transport import MAX_HELD, LeanTLSFactory, LeanTLSProtocol


class _Lean:
    """Run the Twisted test case with L{LeanTLSFactory} as its factory."""

    def setUp(self) -> None:
        self.patch(twisted_tls, "TLSMemoryBIOFactory", LeanTLSFactory)  # type: ignore[attr-defined]
        parent: Any = super()
        if hasattr(parent, "setUp"):
            parent.setUp()


class LeanTLSMemoryBIOTests(_Lean, twisted_tls.TLSMemoryBIOTests):
    """Twisted's transport tests."""


class LeanDeterministicTests(_Lean, twisted_tls.DeterministicTLSMemoryBIOTests):
    """Twisted's deterministic transport tests."""


class LeanTLSProducerTests(_Lean, twisted_tls.TLSProducerTests):
    """Twisted's producer tests (back pressure through TLS)."""


class LeanNonStreamingProducerTests(_Lean, twisted_tls.NonStreamingProducerTests):
    """Twisted's non-streaming producer tests."""


class LeanFactoryTests(_Lean, twisted_tls.TLSMemoryBIOFactoryTests):
    """Twisted's factory tests (log prefix, start and stop)."""


class HeldWritesTests(SynchronousTestCase):
    """Writes of one turn joined into one TLS record and one TCP write."""

    def setUp(self) -> None:
        self.patch(twisted_tls, "TLSMemoryBIOFactory", LeanTLSFactory)
        connected: Any = twisted_tls.handshakingClientAndServer()
        self.client, self.server, self.pump = connected
        self.pump.flush()
        self.assertTrue(self.client.wrappedProtocol.handshook)
        self.clock = self.client.factory._clock
        self.clock.advance(0)
        self.pump.flush()
        self.received = self.server.wrappedProtocol.received

    def test_factory_builds_lean_transport(self) -> None:
        self.assertIsInstance(self.client, LeanTLSProtocol)
        self.assertIsInstance(self.server, LeanTLSProtocol)

    def test_turn_writes_joined(self) -> None:
        """
        Writes made in one turn reach TCP as one write, at the turn's end,
        and arrive whole and in order.
        """
        tcp = self.client.transport
        before = len(tcp.stream)
        self.client.write(b"one ")
        self.client.writeSequence([b"two ", b"three"])
        self.client.write(bytearray(b" four"))
        self.assertEqual(len(tcp.stream), before)
        self.clock.advance(0)
        self.assertEqual(len(tcp.stream), before + 1)
        self.pump.flush()
        self.assertEqual(b"".join(self.received), b"one two three four")

    def test_large_write_not_held(self) -> None:
        """More than L{MAX_HELD} bytes are written at once."""
        tcp = self.client.transport
        before = len(tcp.stream)
        data = bytes(range(256)) * (MAX_HELD // 256 + 1)
        self.client.write(data)
        self.assertEqual(len(tcp.stream), before + 1)
        self.pump.flush()
        self.assertEqual(b"".join(self.received), data)

    def test_held_writes_precede_close(self) -> None:
        """What was written before loseConnection is sent before the close."""
        self.client.write(b"last words")
        self.client.loseConnection()
        self.pump.flush()
        self.assertEqual(b"".join(self.received), b"last words")

    def test_abort_drops_held_writes(self) -> None:
        """An abort sends nothing that was held."""
        self.client.write(b"never sent")
        self.client.abortConnection()
        self.clock.advance(0)
        self.pump.flush()
        self.assertEqual(b"".join(self.received), b"")

    def test_str_refused(self) -> None:
        """A str is refused at once, as by Twisted's transport."""
        self.assertRaises(TypeError, self.client.write, "text")


def _bios(end: Any) -> tuple[Any, Any]:
    connection = end._tlsConnection
    return connection._into_ssl, connection._from_ssl


class GivenBackBuffersTests(SynchronousTestCase):
    """
    The memory BIOs a connection's handshake grew are replaced by empty ones
    at the end of the turn it ended in, at both ends, and the connection
    goes on; L{LeanTLSProtocol.release_buffers} does the same on demand.
    """

    def setUp(self) -> None:
        self.patch(twisted_tls, "TLSMemoryBIOFactory", LeanTLSFactory)

    def connect(self, greeting: bytes | None = None) -> Any:
        """Twisted's test client and server (lean transports), not yet handshaking."""
        return twisted_tls.handshakingClientAndServer(greeting)

    def test_after_handshake(self) -> None:
        """
        Bytes the client wrote before the handshake ended (as a browser's
        first request rides with its last handshake message) arrive, then
        both ends' BIOs are new, and bytes go both ways after.
        """
        greeting = b"written before the handshake ended"
        client, server, pump = self.connect(greeting)
        before = {end: _bios(end) for end in (client, server)}
        pump.flush()
        self.assertTrue(client.wrappedProtocol.handshook)
        self.assertEqual(b"".join(server.wrappedProtocol.received), greeting)
        for end in (client, server):
            self.assertNotEqual(_bios(end), before[end])
        server.write(b"answer")
        client.write(b"next")
        pump.flush()
        self.assertEqual(b"".join(client.wrappedProtocol.received), b"answer")
        self.assertEqual(b"".join(server.wrappedProtocol.received), greeting + b"next")

    def test_not_before_the_turn_ends(self) -> None:
        """Within the handshake's turn the BIOs are kept: its writes are not out yet."""
        client, server, pump = self.connect()
        before = _bios(server)
        while not server._handshakeDone:
            self.assertTrue(pump.pump(advanceClock=False))
        self.assertEqual(_bios(server), before)
        client.factory._clock.advance(0)
        self.assertNotEqual(_bios(server), before)

    def test_on_demand(self) -> None:
        """
        The writes held in this turn go out first; a closing connection
        keeps its BIOs.
        """
        client, server, pump = self.connect()
        pump.flush()
        server.write(b"held in this turn")
        before = _bios(server)
        self.assertTrue(server.release_buffers())
        self.assertNotEqual(_bios(server), before)
        pump.flush()
        self.assertEqual(b"".join(client.wrappedProtocol.received), b"held in this turn")
        server.loseConnection()
        self.assertFalse(server.release_buffers())
