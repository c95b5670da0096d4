"""
Helpers of the end-to-end WebSocket tests (L{tests.websocket_deployment}):
blocking clients run in the reactor's thread pool, waits on conditions, and
what a client or the app saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

__all__ = [
    "WAIT",
    "closed_within",
    "echoes",
    "headers_of",
    "in_thread",
    "rss_kib",
    "wait_until",
]

T = TypeVar("T")

#: Bound on any wait for a condition.
WAIT = 15.0


def in_thread(f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    """Run a blocking client call in the reactor's thread pool."""
    threads = cast(IReactorThreads, reactor)
    return deferToThreadPool(threads, threads.getThreadPool(), f, *args, **kwargs)


@inlineCallbacks
def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """
    Poll C{condition} (a callable returning a value or a Deferred of one)
    every 50 ms until it is true; its value.  Fails after C{timeout} s.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = yield condition()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {value!r})")
        yield deferLater(reactor, 0.05, lambda: None)


def rss_kib(pid: int) -> int:
    """C{VmRSS} of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def closed_within(ws: ClientConnection, timeout: float) -> tuple[int | None, str | None, float]:
    """
    Read C{ws} (blocking) until it closes; the close code and reason the
    client received (L{None} if no close frame came) and how long it took.
    Fails if it is still open after C{timeout} s or a message arrives.
    """
    started = time.monotonic()
    try:
        message = ws.recv(timeout=timeout)
    except ConnectionClosed:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {timeout} s") from None
    else:
        raise AssertionError(f"a message instead of a close: {message[:100]!r}")
    elapsed = time.monotonic() - started
    received = ws.protocol.close_rcvd
    if received is None:
        return None, None, elapsed
    return received.code, received.reason, elapsed


def echoes(ws: ClientConnection, text: str = "still there?") -> bool:
    """Whether C{ws} still echoes a message (blocking)."""
    ws.send(text)
    return ws.recv(timeout=10) == text


def headers_of(record: dict[str, Any]) -> dict[str, list[str]]:
    """A request record's headers by lowercase name."""
    result: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        result.setdefault(name, []).append(value)
    return result
