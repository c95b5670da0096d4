"""
The daemons' reactor (L{appproxy.daemon.reactor}): events dispatched
without a log context, and what a handler raises logged as Twisted's own
dispatch logs it, the other events of the same poll still handled; what
runs just before each poll (C{call_before_poll}).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor as installed_reactor
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
