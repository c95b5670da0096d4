"""
The daemons' reactor (L{appproxy.daemon.reactor}): events dispatched
without a log context, and what a handler raises logged as Twisted's own
dispatch logs it, the other events of the same poll still handled; what
runs just before each poll (C{call_before_poll}); connected sockets'
writes sent before the poll without watching them for EPOLLOUT.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import reactor as installed_reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appproxy.daemon.reactor import AppproxyEPollReactor, install


class Reader:
    """A readable end of a socket pair that records its reads."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.reads: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return self.name

    def doRead(self) -> None:
        self.reads.append(self.sock.recv(100))

    def connectionLost(self, reason: Any) -> None:
        pass


class Broken(Exception):
    pass


class FailingDispatch(AppproxyEPollReactor):
    """Dispatch raises for one selectable (as a failing connectionLost would)."""

    bad: Any = None

    def _doReadOrWrite(self, selectable: Any, fd: int, event: int) -> None:
        if selectable is self.bad:
            raise Broken("dispatch failed")
        super()._doReadOrWrite(selectable, fd, event)


class ReactorTests(SynchronousTestCase):
    def pairs(self, count: int) -> list[tuple[socket.socket, socket.socket]]:
        out = []
        for _ in range(count):
            a, b = socket.socketpair()
            self.addCleanup(a.close)
            self.addCleanup(b.close)
            out.append((a, b))
        return out

    def test_events_dispatched(self) -> None:
        """Every ready descriptor's handler runs in one poll."""
        reactor = AppproxyEPollReactor()
        self.addCleanup(reactor._poller.close)
        readers = []
        for i, (a, b) in enumerate(self.pairs(3)):
            reader = Reader(a, f"r{i}")
            reactor.addReader(reader)
            b.sendall(b"x%d" % i)
            readers.append(reader)
        reactor.doPoll(1.0)
        self.assertEqual([r.reads for r in readers], [[b"x0"], [b"x1"], [b"x2"]])

    def test_failure_logged_others_handled(self) -> None:
        """
        What the dispatch of one event raises is logged (as
        C{log.callWithLogger} logs it) and the poll's other events are still
        handled; the reactor goes on.
        """
        reactor = FailingDispatch()
        self.addCleanup(reactor._poller.close)
        (a1, b1), (a2, b2) = self.pairs(2)
        bad, good = Reader(a1, "bad"), Reader(a2, "good")
        reactor.bad = bad
        reactor.addReader(bad)
        reactor.addReader(good)
        b1.sendall(b"1")
        b2.sendall(b"2")
        reactor.doPoll(1.0)
        self.assertEqual(good.reads, [b"2"])
        self.assertEqual(len(self.flushLoggedErrors(Broken)), 1)
        reactor.removeReader(bad)
        b2.sendall(b"3")
        reactor.doPoll(1.0)
        self.assertEqual(good.reads, [b"2", b"3"])

    def test_no_event_returns(self) -> None:
        """A poll that times out with nothing ready returns."""
        reactor = AppproxyEPollReactor()
        self.addCleanup(reactor._poller.close)
        ((a, _),) = self.pairs(1)
        reader = Reader(a, "idle")
        reactor.addReader(reader)
        reactor.doPoll(0.01)
        self.assertEqual(reader.reads, [])

    def test_before_poll_runs_once_before_polling(self) -> None:
        """
        What C{call_before_poll} was given runs once, before the poll: the
        bytes it writes are read in the same poll.
        """
        reactor = AppproxyEPollReactor()
        self.addCleanup(reactor._poller.close)
        ((a, b),) = self.pairs(1)
        reader = Reader(a, "r")
        reactor.addReader(reader)
        runs: list[int] = []

        def send() -> None:
            runs.append(1)
            b.sendall(b"held")

        reactor.call_before_poll(send)
        reactor.doPoll(5.0)
        self.assertEqual((runs, reader.reads), ([1], [b"held"]))
        reactor.doPoll(0.01)
        self.assertEqual(runs, [1])

    def test_before_poll_failure_logged(self) -> None:
        """What one such call raises is logged; the others still run."""
        reactor = AppproxyEPollReactor()
        self.addCleanup(reactor._poller.close)
        runs: list[str] = []

        def broken() -> None:
            raise Broken("flush failed")

        reactor.call_before_poll(broken)
        reactor.call_before_poll(lambda: runs.append("after"))
        reactor.doPoll(0.01)
        self.assertEqual(runs, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(Broken)), 1)

    def test_timer_made_before_poll_is_not_waited_past(self) -> None:
        """
        A timer that a before-poll call makes is not slept through: the poll
        that was to wait for ever returns at once to run it.
        """
        reactor = AppproxyEPollReactor()
        self.addCleanup(reactor._poller.close)
        fired: list[int] = []
        reactor.call_before_poll(lambda: reactor.callLater(0, fired.append, 1))
        reactor.doPoll(None)
        reactor.runUntilCurrent()
        self.assertEqual(fired, [1])

    def test_install_keeps_an_installed_reactor(self) -> None:
        """A reactor already installed (twistd --reactor, or trial's) stays."""
        self.assertIs(install(), installed_reactor)


class CountingPoller:
    """The reactor's epoll object, with its C{register}/C{modify} calls counted."""

    def __init__(self, poller: Any) -> None:
        self._poller = poller
        self.changes: list[tuple[str, int, int]] = []

    def register(self, fd: int, flags: int) -> None:
        self.changes.append(("register", fd, flags))
        self._poller.register(fd, flags)

    def modify(self, fd: int, flags: int) -> None:
        self.changes.append(("modify", fd, flags))
        self._poller.modify(fd, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


class Keep(Protocol):
    """A server protocol that keeps its transport for the test to write on."""

    def connectionMade(self) -> None:
        self.factory.made.append(self)


class WriterTests(SynchronousTestCase):
    """
    A connected socket's writes are sent just before the poll, without
    watching it for EPOLLOUT, unless the kernel does not take them all.
    """

    def setUp(self) -> None:
        self.reactor = AppproxyEPollReactor()
        self.addCleanup(self.reactor._poller.close)
        factory = Factory.forProtocol(Keep)
        factory.made = []  # type: ignore[attr-defined]
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        self.addCleanup(self.client.close)
        for _ in range(100):
            if factory.made:  # type: ignore[attr-defined]
                break
            self.reactor.doPoll(0.05)
        self.server = factory.made[0].transport  # type: ignore[attr-defined]
        self.addCleanup(self.lose)
        self.poller = CountingPoller(self.reactor._poller)
        self.reactor._poller = self.poller

    def lose(self) -> None:
        if self.server.connected:
            self.server.connectionLost(Failure(ConnectionDone()))

    def watched(self) -> bool:
        return self.server.fileno() in self.reactor._writes

    def test_write_sent_before_the_poll_unwatched(self) -> None:
        """
        Bytes written in a turn reach the peer when the reactor next polls,
        and the socket is never watched for EPOLLOUT: no epoll change.
        """
        self.server.write(b"hello, ")
        self.server.write(b"world")
        self.assertIn(self.server, self.reactor.getWriters())
        self.reactor.doPoll(0)
        self.assertEqual(self.client.recv(100), b"hello, world")
        self.assertEqual((self.poller.changes, self.watched()), ([], False))
        self.assertNotIn(self.server, self.reactor.getWriters())

    def test_what_the_kernel_does_not_take_is_watched(self) -> None:
        """
        A write larger than the socket's buffers: what is left is watched
        for EPOLLOUT and sent as the peer reads; then it is watched no more.
        """
        self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 4096  # 1 MiB
        self.server.write(data)
        self.reactor.doPoll(0)
        self.assertTrue(self.watched())
        self.client.setblocking(False)
        received = bytearray()
        deadline = time.monotonic() + 30
        while len(received) < len(data) and time.monotonic() < deadline:
            self.reactor.doPoll(0)
            try:
                received += self.client.recv(1 << 20)
            except BlockingIOError:
                pass
        self.assertEqual(bytes(received), data)
        self.reactor.doPoll(0)
        self.assertFalse(self.watched())
        self.assertNotIn(self.server, self.reactor.getWriters())

    def test_lost_connection_not_written(self) -> None:
        """A writer whose connection is lost before the poll is not written to."""
        self.server.write(b"never sent")
        self.lose()
        self.assertNotIn(self.server, self.reactor.getWriters())
        self.reactor.doPoll(0)
        self.assertEqual(self.client.recv(100), b"")

    def test_remove_all_includes_pending(self) -> None:
        """Shutting down removes a writer with data pending, once."""
        self.server.write(b"pending")
        removed = self.reactor.removeAll()
        self.assertEqual(removed.count(self.server), 1)
        self.assertEqual(self.reactor.getWriters(), [])


class PendingWriter:
    """A writer with no socket behind it: its C{doWrite} runs what the test says."""

    connected = 1

    def __init__(self, sock: socket.socket, reactor: AppproxyEPollReactor) -> None:
        self.sock = sock
        self.reactor = reactor
        self.writes = 0
        self.on_write: Any = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "pending"

    def doRead(self) -> None:
        pass

    def doWrite(self) -> None:
        self.writes += 1
        self.reactor.removeWriter(self)
        if self.on_write is not None:
            self.on_write()

    def connectionLost(self, reason: Any) -> None:
        pass


class PendingOrderTests(SynchronousTestCase):
    def writers(self, count: int) -> tuple[AppproxyEPollReactor, list[PendingWriter]]:
        reactor = AppproxyEPollReactor()
        self.addCleanup(reactor._poller.close)
        out = []
        for _ in range(count):
            a, b = socket.socketpair()
            self.addCleanup(a.close)
            self.addCleanup(b.close)
            writer = PendingWriter(a, reactor)
            reactor.addReader(writer)
            reactor.addWriter(writer)
            out.append(writer)
        return reactor, out

    def test_removed_by_another_not_written(self) -> None:
        """A writer that another's C{doWrite} removed is not written."""
        reactor, (first, second) = self.writers(2)
        first.on_write = lambda: reactor.removeWriter(second)
        reactor._write_pending()
        self.assertEqual((first.writes, second.writes), (1, 0))

    def test_pending_again_is_watched_not_rewritten(self) -> None:
        """
        A writer that asks to write again during its own turn (a producer it
        resumed wrote) is watched for EPOLLOUT, not written twice in a row.
        """
        reactor, (writer,) = self.writers(1)
        writer.on_write = lambda: reactor.addWriter(writer)
        reactor._write_pending()
        self.assertEqual(writer.writes, 1)
        self.assertIn(writer.fileno(), reactor._writes)

    def test_not_connected_watched_at_once(self) -> None:
        """A descriptor that is not a connected socket is watched at once, as Twisted does."""
        reactor, (writer,) = self.writers(1)
        reactor.removeWriter(writer)
        writer.connected = 0
        reactor.addWriter(writer)
        self.assertIn(writer.fileno(), reactor._writes)

    def test_failing_write_logged(self) -> None:
        """What a pending writer's C{doWrite} raises is logged; the others are written."""
        reactor, (bad, good) = self.writers(2)

        def broken() -> None:
            raise Broken("write failed")

        bad.on_write = broken
        reactor._write_pending()
        self.assertEqual(good.writes, 1)
        self.assertEqual(len(self.flushLoggedErrors(Broken)), 1)
