"""
A connector group with no connector connected fails its requests promptly
(after L{NO_CONNECTOR_GRACE}), not after the whole queue timeout; driven by
a fake clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.queue import (
    NO_CONNECTOR_GRACE,
    ConnectorGroupQueue,
    ConnectorGroups,
    ProxyJob,
)
from tests.test_queue import job

#: A queue timeout far longer than the grace period.
LONG = 30.0


def alone_queue(clock: Clock) -> ConnectorGroupQueue:
    return ConnectorGroupQueue("g", clock, timeout=LONG)


class NoConnectorTests(SynchronousTestCase):
    def test_new_group_waits_grace_only(self) -> None:
        """
        A job for a group that never had a connector fails once the group is
        NO_CONNECTOR_GRACE seconds old, long before the queue timeout.
        """
        clock = Clock()
        queue = alone_queue(clock)
        expired: list[ProxyJob] = []
        j = job()
        queue.put(j, expired.append)
        clock.advance(NO_CONNECTOR_GRACE - 0.1)
        self.assertEqual(expired, [])
        clock.advance(0.2)
        self.assertEqual(expired, [j])
        self.assertEqual(queue.waiting, 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIn("no connector of group 'g' is connected", queue.unavailable_reason())

    def test_long_alone_fails_at_once(self) -> None:
        """
        Once the group has been alone for the grace period, a new job fails
        on the next turn of the reactor (never from inside put()).
        """
        clock = Clock()
        queue = alone_queue(clock)
        clock.advance(NO_CONNECTOR_GRACE + 10)
        expired: list[ProxyJob] = []
        j = job()
        queue.put(j, expired.append)
        self.assertEqual(expired, [])
        clock.advance(0)
        self.assertEqual(expired, [j])

    def test_last_connection_lost(self) -> None:
        """
        When the last connection goes, waiting jobs fail a grace period
        later, not at their queue timeout.
        """
        clock = Clock()
        queue = alone_queue(clock)
        connection = object()
        queue.connection_made(connection)
        expired: list[ProxyJob] = []
        j = job()
        queue.put(j, expired.append)
        clock.advance(5)
        self.assertEqual(expired, [])
        queue.connection_lost(connection)
        clock.advance(NO_CONNECTOR_GRACE - 0.1)
        self.assertEqual(expired, [])
        clock.advance(0.2)
        self.assertEqual(expired, [j])

    def test_one_of_two_lost(self) -> None:
        """Another connection still serves the group: the job waits on."""
        clock = Clock()
        queue = alone_queue(clock)
        first, second = object(), object()
        queue.connection_made(first)
        queue.connection_made(second)
        expired: list[ProxyJob] = []
        queue.put(job(), expired.append)
        queue.connection_lost(first)
        clock.advance(LONG - 0.1)
        self.assertEqual(expired, [])
        clock.advance(0.2)
        self.assertEqual(len(expired), 1)
        self.assertIn("took the request within 30 seconds", queue.unavailable_reason())

    def test_reconnect_within_grace(self) -> None:
        """
        A connector that comes back within the grace period keeps the jobs
        waiting, up to their queue timeout, and can take them.
        """
        clock = Clock()
        queue = alone_queue(clock)
        connection = object()
        queue.connection_made(connection)
        expired: list[ProxyJob] = []
        j = job()
        queue.put(j, expired.append)
        queue.connection_lost(connection)
        clock.advance(NO_CONNECTOR_GRACE / 2)
        queue.connection_made(object())
        clock.advance(NO_CONNECTOR_GRACE)
        self.assertEqual(expired, [])
        self.assertEqual(queue.waiting, 1)
        self.assertIs(self.successResultOf(queue.get()), j)
        j.stop_timer()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_retried_job_after_last_loss(self) -> None:
        """
        A job put back for a retry after the last connection went (the
        retry rule decides that, not the queue) fails within the grace
        period too, counted from the loss.
        """
        clock = Clock()
        queue = alone_queue(clock)
        connection = object()
        queue.connection_made(connection)
        clock.advance(1)
        queue.connection_lost(connection)
        clock.advance(1)
        expired: list[ProxyJob] = []
        queue.put(job(), expired.append)
        clock.advance(NO_CONNECTOR_GRACE - 1.1)
        self.assertEqual(expired, [])
        clock.advance(0.2)
        self.assertEqual(len(expired), 1)

    def test_withdraw_leaves_no_timer(self) -> None:
        clock = Clock()
        queue = alone_queue(clock)
        j = job()
        queue.put(j, lambda _: self.fail("expired"))
        queue.withdraw(j)
        clock.advance(LONG * 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lost_unknown_connection(self) -> None:
        """Losing a connection the group never had changes nothing."""
        clock = Clock()
        queue = alone_queue(clock)
        queue.connection_made(object())
        expired: list[ProxyJob] = []
        queue.put(job(), expired.append)
        queue.connection_lost(object())
        clock.advance(LONG - 0.1)
        self.assertEqual(expired, [])


class ConnectorGroupsTests(SynchronousTestCase):
    def test_group_alone_since_start(self) -> None:
        """
        A group first used long after the service started has had no
        connector all that time: its first request fails at once.
        """
        clock = Clock()
        groups = ConnectorGroups(clock, LONG)
        clock.advance(60)
        expired: list[ProxyJob] = []
        groups["late"].put(job(), expired.append)
        clock.advance(0)
        self.assertEqual(len(expired), 1)

    def test_group_at_start_waits_grace(self) -> None:
        clock = Clock()
        groups = ConnectorGroups(clock, LONG)
        expired: list[ProxyJob] = []
        groups["early"].put(job(), expired.append)
        clock.advance(NO_CONNECTOR_GRACE - 0.1)
        self.assertEqual(expired, [])
        clock.advance(0.2)
        self.assertEqual(len(expired), 1)
