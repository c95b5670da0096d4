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

L{install} puts it in place when the daemon starts, unless a reactor is
already installed (C{twistd --reactor=...} chooses its own, which wins).
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

__all__ = ["AppproxyEPollReactor", "install"]


class AppproxyEPollReactor(EPollReactor):
    """L{EPollReactor} whose events are dispatched without a log context."""

    def doPoll(self, timeout: float | None) -> None:
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
