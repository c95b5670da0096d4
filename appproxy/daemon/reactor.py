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

L{install} puts it in place when the daemon starts, unless a reactor is
already installed (C{twistd --reactor=...} chooses its own, which wins).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

__all__ = ["AppproxyEPollReactor", "install"]


class AppproxyEPollReactor(EPollReactor):
    """L{EPollReactor} whose events are dispatched without a log context."""

    def __init__(self) -> None:
        self._before_poll: list[Callable[[], object]] = []
        super().__init__()

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
                # As log.callWithLogger: logged with the selectable's prefix.
                try:
                    prefix = selectable.logPrefix()
                except BaseException:
                    prefix = "(buggy logPrefix method)"
                log.err(system=prefix)

    doIteration = doPoll


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
