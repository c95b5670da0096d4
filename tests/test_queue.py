"""
The connector group queue and the retry rules, driven by a fake clock.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.queue import (
    IDEMPOTENT_METHODS,
    NO_CONNECTOR_GRACE,
    ConnectorGroupQueue,
    ConnectorGroups,
    NoCapacity,
    ProxyJob,
)


def job(method: bytes = b"GET", has_body: bool = False) -> ProxyJob:
    return ProxyJob(
        app=None,  # type: ignore[arg-type]
        method=method,
        path=b"/",
        headers=[],
        request_id="r",
        has_body=has_body,
        exchange=None,  # type: ignore[arg-type]
    )


class QueueTests(SynchronousTestCase):
    def test_waiting_consumer_gets_job(self) -> None:
        clock = Clock()
        queue = ConnectorGroupQueue("g", clock, timeout=5)
        d = queue.get()
        j = job()
        queue.put(j, lambda _: self.fail("timed out"))
        self.assertIs(self.successResultOf(d), j)
        # Taken jobs never time out.
        clock.advance(10)

    def test_timeout(self) -> None:
        """
        A job nobody takes within the timeout is withdrawn and reported once.
        """
        clock = Clock()
        queue = ConnectorGroupQueue("g", clock, timeout=5)
        queue.connection_made(object())
        expired: list[ProxyJob] = []
        j = job()
        queue.put(j, expired.append)
        clock.advance(4.9)
        self.assertEqual(expired, [])
        clock.advance(0.2)
        self.assertEqual(expired, [j])
        self.assertEqual(queue.waiting, 0)
        self.assertNoResult(queue.get())

    def test_withdraw(self) -> None:
        clock = Clock()
        queue = ConnectorGroupQueue("g", clock, timeout=5)
        j = job()
        queue.put(j, lambda _: self.fail("timed out"))
        queue.withdraw(j)
        self.assertEqual(queue.waiting, 0)
        clock.advance(10)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_backlog_full(self) -> None:
        clock = Clock()
        queue = ConnectorGroupQueue("g", clock, timeout=5, backlog=2)
        queue.put(job(), lambda _: None)
        queue.put(job(), lambda _: None)
        self.assertRaises(NoCapacity, queue.put, job(), lambda _: None)
        # The refused job left no timer behind.
        self.assertEqual(len(clock.getDelayedCalls()), 2)

    def test_alternating_consumers(self) -> None:
        """
        Waiters are served in order, so consumers that re-issue one get()
        after each job share the load.
        """
        queue = ConnectorGroupQueue("g", Clock(), timeout=5)
        taken: list[str] = []

        def consume(name: str) -> None:
            def got(_: Any) -> None:
                taken.append(name)
                consume(name)

            queue.get().addCallback(got)

        consume("a")
        consume("b")
        for _ in range(6):
            queue.put(job(), lambda _: None)
        self.assertEqual(taken, ["a", "b", "a", "b", "a", "b"])


class RetryTests(SynchronousTestCase):
    @given(
        method=st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH"]),
        has_body=st.booleans(),
        dispatched=st.booleans(),
        body_sent=st.booleans(),
        attempts=st.integers(0, 3),
        cancelled=st.booleans(),
    )
    def test_retry_rule(
        self,
        method: bytes,
        has_body: bool,
        dispatched: bool,
        body_sent: bool,
        attempts: int,
        cancelled: bool,
    ) -> None:
        """
        Retried at most once, never once any body left, and after dispatch
        only when idempotent without a body.
        """
        j = job(method, has_body)
        j.dispatched, j.body_sent, j.attempts, j.cancelled = (
            dispatched,
            body_sent,
            attempts,
            cancelled,
        )
        expected = (
            not cancelled
            and attempts < 2
            and not body_sent
            and (not dispatched or (not has_body and method in IDEMPOTENT_METHODS))
        )
        self.assertEqual(j.retryable(), expected)

    def test_ack_needed(self) -> None:
        """
        Only requests that could not be safely replayed pay for a dispatch
        acknowledgement.
        """
        self.assertFalse(job(b"GET").needs_dispatch_ack)
        self.assertTrue(job(b"POST").needs_dispatch_ack)
        self.assertTrue(job(b"PUT", has_body=True).needs_dispatch_ack)


class UpgradeQueueTests(SynchronousTestCase):
    """Each group's WebSocket handshakes wait in a queue of their own."""

    def test_upgrade_queue_is_apart(self) -> None:
        clock = Clock()
        groups = ConnectorGroups(clock, 5)
        upgrades = groups.upgrade_queue("g")
        self.assertIs(groups.upgrade_queue("g"), upgrades)
        self.assertIsNot(upgrades, groups["g"])
        requests = groups["g"].get()
        j = job()
        j.upgrade = True
        upgrades.put(j, lambda _: self.fail("timed out"))
        self.assertNoResult(requests)
        self.assertIs(self.successResultOf(upgrades.get()), j)
        # A reload's new timeout reaches both kinds (the daemon iterates).
        self.assertEqual(set(map(id, groups)), {id(groups["g"]), id(upgrades)})

    def test_upgrade_field_is_keyword_only_and_false_by_default(self) -> None:
        self.assertFalse(job().upgrade)
        with self.assertRaises(TypeError):
            ProxyJob(None, b"GET", b"/", [], "r", False, None, True)  # type: ignore[arg-type,call-arg]

    def test_upgrade_queue_no_connector_grace(self) -> None:
        """Without a connection able to carry WebSockets, a handshake fails fast."""
        clock = Clock()
        groups = ConnectorGroups(clock, 60)
        groups["g"].connection_made(object())  # a connection for requests only
        expired: list[ProxyJob] = []
        groups.upgrade_queue("g").put(job(), expired.append)
        clock.advance(NO_CONNECTOR_GRACE + 0.1)
        self.assertEqual(len(expired), 1)
        self.assertIn("able to carry WebSockets", groups.upgrade_queue("g").unavailable_reason())
