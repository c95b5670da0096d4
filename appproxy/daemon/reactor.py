"""
The daemons' reactor: Twisted's epoll reactor, dispatching each ready
descriptor without a log context around it.

Twisted's C{EPollReactor.doPoll} runs every read or write event through
C{twisted.python.log.callWithLogger}: the selectable's C{logPrefix()}, a
copy of the legacy log context with C{system} set, and C{context.call}
around the handler, about ten Python calls and two dictionary copies per
event, four events per proxied request in each daemon.  The context only
names the C{system} of old-style C{log.msg} calls made while the handler
runs; appproxy logs through C{twisted.logger}, whose events carry their
namespace instead.  L{AppproxyEPollReactor} calls the handler directly and,
as C{callWithLogger} does, logs whatever it raises (with the selectable's
log prefix as its system) and goes on with the next event.

It also runs what C{call_before_poll} was given (the TLS transport's writes
held during the turn, L{appproxy.daemon.tls_transport}) just before it
polls, after the timers and the events of the turn have run: one step per
turn for all of them, where C{callLater(0)} would make a timer each.

A connected socket that has data to send is not registered for
C{EPOLLOUT} at once: Twisted's reactor would make an C{epoll_ctl} call to
watch it, a poll that returns at once to say it is writable, the send, and
a second C{epoll_ctl} call to stop watching it, for every response and
every tunnel write.  Here such a writer waits in a list, and just before
the reactor polls (after the calls above) each is given its C{doWrite}, as
a writable event would; only one whose data the kernel did not take all of
(or that asked to write again meanwhile) is then watched for C{EPOLLOUT},
as Twisted would have.  The data goes out in the same turn as before,
with two system calls and a poll fewer.  Descriptors that are not
connected sockets being read (a client still connecting, a pipe, one
already half-closed) are watched at once, as Twisted does.

L{install} puts it in place when the daemon starts, unless a reactor is
already installed (C{twistd --reactor=...} chooses its own, which wins).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.epollreactor import EPOLLOUT, EPollReactor
from twisted.python import log

__all__ = ["AppproxyEPollReactor", "install"]


class AppproxyEPollReactor(EPollReactor):
    """L{EPollReactor} whose events are dispatched without a log context."""

    def __init__(self) -> None:
        self._before_poll: list[Callable[[], object]] = []
        #: Connected sockets with data to send, not yet watched for EPOLLOUT
        #: (a dict for its order; the values are all None).
        self._pending_writers: dict[Any, None] = {}
        super().__init__()

    def addWriter(self, writer: Any) -> None:
        if writer in self._pending_writers:
            return
        fd = writer.fileno()
        if fd in self._writes or fd not in self._reads or not getattr(writer, "connected", 0):
            super().addWriter(writer)
        else:
            self._pending_writers[writer] = None

    def removeWriter(self, writer: Any) -> None:
        if self._pending_writers.pop(writer, False) is None:
            return
        super().removeWriter(writer)

    def getWriters(self) -> list[Any]:
        writers: list[Any] = super().getWriters()
        return writers + list(self._pending_writers)

    def removeAll(self) -> list[Any]:
        pending, self._pending_writers = self._pending_writers, {}
        removed: list[Any] = super().removeAll()
        # A pending writer is a reader too, so already among the removed.
        return removed + [writer for writer in pending if writer not in removed]

    def _write_pending(self) -> None:
        """
        Give each pending writer its C{doWrite}, as a writable event would;
        watch for C{EPOLLOUT} those that still have data to send, and any
        that became pending meanwhile.
        """
        pending = self._pending_writers
        done = set()
        while pending:
            writer = next(iter(pending))
            if writer in done:
                # Pending again after its turn (a producer it resumed wrote):
                # watched, not written twice in one flush.
                del pending[writer]
                super().addWriter(writer)
                continue
            done.add(writer)
            # It stays pending while its doWrite runs: all sent, it stops
            # writing, which takes it out (so does losing the connection).
            try:
                self._doReadOrWrite(writer, writer.fileno(), EPOLLOUT)
            except KeyboardInterrupt:
                raise
            except BaseException:
                _log_dispatch_failure(writer)
            if pending.pop(writer, False) is None:
                # Still pending: the kernel did not take all of its data.
                super().addWriter(writer)

    def call_before_poll(self, call: Callable[[], object]) -> None:
        """Run C{call} (once) before the reactor next waits for events."""
        self._before_poll.append(call)

    def _run_before_poll(self) -> None:
        while self._before_poll:
            calls, self._before_poll = self._before_poll, []
            for call in calls:
                try:
                    call()
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    log.err(system="-")

    def doPoll(self, timeout: float | None) -> None:
        if self._before_poll:
            self._run_before_poll()
            if self._newTimedCalls:
                timeout = 0  # a timer made by those calls is due at once, maybe
        if self._pending_writers:
            self._write_pending()
            if self._before_poll or self._newTimedCalls:
                timeout = 0  # the writes made more to do: back at once
        if timeout is None:
            timeout = -1  # Wait indefinitely.
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        dispatch = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                _log_dispatch_failure(selectable)

    doIteration = doPoll


def _log_dispatch_failure(selectable: Any) -> None:
    """As C{log.callWithLogger}: the failure being handled, with the selectable's prefix."""
    try:
        prefix = selectable.logPrefix()
    except BaseException:
        prefix = "(buggy logPrefix method)"
    log.err(system=prefix)


def install() -> Any:
    """
    Install L{AppproxyEPollReactor} unless a reactor is installed already;
    return the reactor in place.
    """
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet.main import installReactor

        installReactor(AppproxyEPollReactor())
    from twisted.internet import reactor

    return reactor
