"""
A stream of requests through a deployment's public listener, for the tests
that change a connector's trust while requests flow (revocation, renewal).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks

from tests.deployment import Deployment
from tests.websocket_clients import wait_until

__all__ = ["RequestLoop"]

#: Bound on a wait for more requests to end.
WAIT = 30.0


@attrs.define
class RequestLoop:
    """
    C{workers} clients each sending C{GET /loop/N} to the app, one after the
    other, until stopped or C{limit} requests in all (loopback only).

    @ivar results: C{(started, ended, status or exception name)} of each.
    """

    deployment: Deployment
    workers: int = 4
    limit: int = 3000
    results: list[tuple[float, float, int | str]] = attrs.field(factory=list)
    _stopped: bool = False
    _running: list[Deferred[None]] = attrs.field(factory=list)

    def start(self) -> RequestLoop:
        self._running = [self._worker() for _ in range(self.workers)]
        return self

    @inlineCallbacks
    def _worker(self) -> Any:
        client = self.deployment.client()
        while not self._stopped and len(self.results) < self.limit:
            started = reactor.seconds()
            outcome: int | str
            try:
                url = self.deployment.url("web", f"/loop/{len(self.results)}")
                response = yield client.get(url, timeout=10)
                yield response.content()
                outcome = response.code
            except Exception as e:
                outcome = type(e).__name__
            self.results.append((started, reactor.seconds(), outcome))

    def wait(self, more: int, timeout: float = WAIT) -> Deferred[Any]:
        """Wait until C{more} further requests have ended."""
        target = len(self.results) + more
        return wait_until(lambda: len(self.results) >= target, f"{more} more requests", timeout)

    def stop(self) -> Deferred[list[None]]:
        self._stopped = True
        return gatherResults(self._running)

    def failures(self) -> list[tuple[float, float, int | str]]:
        return [result for result in self.results if result[2] != 200]
