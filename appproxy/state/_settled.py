"""Waiting for Deferreds to fire without touching their results."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList

__all__ = ["all_settled"]


def all_settled(deferreds: Iterable[Deferred[Any]]) -> Deferred[None]:
    """
    A new L{Deferred} that fires with L{None} once every one of C{deferreds}
    has fired (at once if there are none), leaving their results alone:
    their own callbacks still see them, failures included.
    """
    observers: list[Deferred[None]] = []
    for d in deferreds:
        observer: Deferred[None] = Deferred()
        d.addBoth(_fire, observer)
        observers.append(observer)
    return DeferredList(observers).addCallback(lambda _: None)


def _fire(result: object, observer: Deferred[None]) -> object:
    observer.callback(None)
    return result
