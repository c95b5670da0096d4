"""
A finished request is freed by reference counting, not left to the garbage
collector: the service proxies thousands of requests a second, and a
reference cycle per request (the request, its job, its tunnel stream, its
response relay and their lists and headers: about 25 objects) made the
collector run every few milliseconds, several percent of its CPU.

The real service and connector in this process, with the collector off
while the requests run: whatever request is still alive afterwards is held
by a cycle.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from appproxy.frontend.exchange import ExchangeRequest
from tests import deployment


def _requests_alive() -> list[ExchangeRequest]:
    return [o for o in gc.get_objects() if isinstance(o, ExchangeRequest)]


class RequestCycleTests(TestCase):
    @inlineCallbacks
    def test_finished_requests_freed_without_the_collector(self) -> Any:
        """
        Over HTTP/1.1 (GET and POST, keep-alive) and HTTP/2, proxied
        requests and answers of the service's own are all freed once done.
        """
        d = yield deployment.start(self)
        client = d.client()
        # Warm up: connections, pools, first-use caches.
        response = yield client.get(d.url("web", "/echo"))
        yield response.content()
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        self.assertEqual(_requests_alive(), [])
        for n in range(5):
            response = yield client.get(d.url("web", f"/echo?n={n}"))
            self.assertEqual(response.code, 200)
            yield response.content()
            response = yield client.post(d.url("web", "/echo"), data=b"x" * 70_000)
            self.assertEqual(response.code, 200)
            yield response.content()
        response = yield client.get(d.url("web", "/robots.txt"))
        yield response.content()
        results = yield deployment.h2_exchange(
            d,
            [("GET", "/echo", b""), ("POST", "/echo", b"y" * 70_000), ("GET", "/robots.txt", b"")],
        )
        self.assertEqual([status for status, _ in results], [200, 200, 200])
        # The tunnel lets go of its streams on its next turns.
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(_requests_alive(), [])
