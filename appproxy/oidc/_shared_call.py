"""
L{SharedCall}: one asynchronous operation whose outcome every caller that
arrives while it runs shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

_T = TypeVar("_T")


@attrs.define(eq=False)
class SharedCall(Generic[_T]):
    """
    Run an asynchronous operation for many callers at once: callers that
    arrive while it runs share its outcome.  A waiter that is cancelled
    simply stops waiting.

    @ivar _operation: starts the operation.
    @ivar _waiters: the callers waiting for the operation under way; L{None}
        when none is.
    """

    _operation: Callable[[], Deferred[_T]]
    _waiters: list[Deferred[_T]] | None = attrs.field(default=None, init=False)

    @property
    def running(self) -> bool:
        return self._waiters is not None

    def __call__(self) -> Deferred[_T]:
        waiter: Deferred[_T] = Deferred(self._forget)
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        maybeDeferred(self._operation).addBoth(self._finished)
        return waiter

    def _forget(self, waiter: Deferred[_T]) -> None:
        if self._waiters is not None and waiter in self._waiters:
            self._waiters.remove(waiter)

    def _finished(self, result: _T | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        # A failure nobody waits for any more (all cancelled) is dropped.
