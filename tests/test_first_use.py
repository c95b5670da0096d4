"""
L{appproxy.daemon.first_use}: a listener's factory built at its first
connection (the metrics site), started and stopped as the listener is; and
L{appproxy.http.render.NOT_DONE_YET}, which stands for twisted.web's.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web import server

from appproxy.daemon.first_use import BuiltAtFirstConnection
from appproxy.http.render import NOT_DONE_YET

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class _Counted(Factory[Protocol]):
    protocol = Protocol

    def __init__(self) -> None:
        self.started = 0
        self.stopped = 0

    def startFactory(self) -> None:
        self.started += 1

    def stopFactory(self) -> None:
        self.stopped += 1


class BuiltAtFirstConnectionTests(TestCase):
    def setUp(self) -> None:
        self.built: list[_Counted] = []

    def make(self) -> _Counted:
        factory = _Counted()
        self.built.append(factory)
        return factory

    def test_built_at_the_first_connection(self) -> None:
        """
        Nothing is built when the listener starts; the first connection
        builds the factory, started as the listener was, and its protocol
        serves the connection; later connections use the same factory.
        """
        lazy = BuiltAtFirstConnection(self.make)
        lazy.doStart()
        self.assertEqual((self.built, lazy.built), ([], False))
        first = lazy.buildProtocol(ADDRESS)
        self.assertEqual(len(self.built), 1)
        factory = self.built[0]
        self.assertIsInstance(first, Protocol)
        self.assertIs(first.factory, factory)  # type: ignore[union-attr]
        self.assertEqual(factory.started, 1)
        lazy.buildProtocol(ADDRESS)
        self.assertEqual((len(self.built), factory.started), (1, 1))
        lazy.doStop()
        self.assertEqual(factory.stopped, 1)

    def test_stopped_before_any_connection(self) -> None:
        """A listener stopped before any connection never builds the factory."""
        lazy = BuiltAtFirstConnection(self.make)
        lazy.doStart()
        lazy.doStop()
        self.assertEqual(self.built, [])
        self.assertIsInstance(lazy.wrappedFactory, _Counted)
        self.assertEqual(self.built[0].started, 0)

    def test_not_done_yet(self) -> None:
        """The service's own pages answer later with twisted.web's value."""
        self.assertIs(NOT_DONE_YET, server.NOT_DONE_YET)
