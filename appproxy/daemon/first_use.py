"""
A listener's protocol factory built at its first connection, not when the
daemon starts: L{BuiltAtFirstConnection}.

For listeners whose factory needs modules the daemon otherwise does without:
the metrics listener's and the enrolment API's twisted.web site
(C{twisted.web.server} with what it imports, about 3 MiB of the service's
memory: docs/performance.md).  Their first connection imports them, once, in
the reactor thread (a few tens of milliseconds); every later connection goes
straight to the built factory.  What could be wrong with the listener (its
address) is still found at start, when the port is bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from zope.interface import implementer

__all__ = ["BuiltAtFirstConnection"]


@implementer(IProtocolFactory)
class BuiltAtFirstConnection:
    """
    Stands for the factory C{make} returns, calling C{make} at the first
    L{buildProtocol}; started and stopped as often as it would have been.
    """

    def __init__(self, make: Callable[[], IProtocolFactory]) -> None:
        self._make = make
        self._factory: IProtocolFactory | None = None
        #: Listeners started and not stopped (what the built factory is told).
        self._started = 0

    @property
    def wrappedFactory(self) -> IProtocolFactory:
        """The factory, built now if no connection has come yet."""
        if self._factory is None:
            factory = self._make()
            for _ in range(self._started):
                factory.doStart()
            self._factory = factory
        return self._factory

    @property
    def built(self) -> bool:
        """Whether the factory has been built."""
        return self._factory is not None

    def doStart(self) -> None:
        self._started += 1
        if self._factory is not None:
            self._factory.doStart()

    def doStop(self) -> None:
        if self._started:
            self._started -= 1
            if self._factory is not None:
                self._factory.doStop()

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        return self.wrappedFactory.buildProtocol(addr)

    def logPrefix(self) -> str:
        factory: Any = self._factory
        return factory.logPrefix() if factory is not None else type(self).__name__
