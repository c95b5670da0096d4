"""
A retry goes to another connector than the one that lost the job, when
there is one: the queue told apart by the connectors' identities.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.queue import ConnectorGroupQueue, ProxyJob
from tests.test_queue import job


class Connection:
    """A stand-in tunnel connection: the queue only needs its identity."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Connection {self.name}>"


def group(clock: Clock, **connections: str) -> tuple[ConnectorGroupQueue, dict[str, Connection]]:
    """
    A queue with the given connections (name -> connector identity)
    registered in order.
    """
    queue = ConnectorGroupQueue("g", clock, timeout=30)
    made = {}
    for name, connector in connections.items():
        made[name] = Connection(name)
        queue.connection_made(made[name], connector)
    return queue, made


def never(_: ProxyJob) -> None:
    raise AssertionError("the job timed out")


class RetryOnAnotherConnectorTests(SynchronousTestCase):
    def take(self, queue: ConnectorGroupQueue, connection: Connection) -> ProxyJob:
        j = self.successResultOf(queue.get(connection))
        j.stop_timer()
        return j

    def test_retry_skips_sibling_waiting_first(self) -> None:
        """
        The job comes back from connector A while A's other connection is the
        first to wait: it goes to connector B's connection instead.
        """
        clock = Clock()
        queue, c = group(clock, a1="A", a2="A", b1="B")
        j = job()
        queue.put(j, never)
        self.assertIs(self.take(queue, c["a1"]), j)
        # a1 dies: its sibling a2 asks first, then b1.
        queue.connection_lost(c["a1"])
        from_a2 = queue.get(c["a2"])
        from_b1 = queue.get(c["b1"])
        queue.put(j, never)
        self.assertNoResult(from_a2)
        self.assertIs(self.successResultOf(from_b1), j)
        self.assertEqual(j.carriers, {"A", "B"})
        j.stop_timer()
        # New jobs still go to the first waiter, whatever its connector.
        fresh = job()
        queue.put(fresh, never)
        self.assertIs(self.successResultOf(from_a2), fresh)
        fresh.stop_timer()

    def test_retry_waits_for_busy_other_connector(self) -> None:
        """
        No connection of B waits yet: the retry waits for one rather than
        take A's sibling, and new jobs behind it are not held up.
        """
        clock = Clock()
        queue, c = group(clock, a1="A", a2="A", b1="B")
        j = job()
        queue.put(j, never)
        self.take(queue, c["a1"])
        queue.put(j, never)
        fresh = job()
        queue.put(fresh, never)
        self.assertIs(self.take(queue, c["a2"]), fresh)
        self.assertEqual(queue.waiting, 1)
        self.assertIs(self.take(queue, c["b1"]), j)
        self.assertEqual(queue.waiting, 0)

    def test_same_connector_when_alone(self) -> None:
        """
        With no other connector connected, the retry goes back to the same
        connector (another of its connections).
        """
        clock = Clock()
        queue, c = group(clock, a1="A", a2="A")
        j = job()
        queue.put(j, never)
        self.take(queue, c["a1"])
        queue.connection_lost(c["a1"])
        queue.put(j, never)
        self.assertIs(self.take(queue, c["a2"]), j)

    def test_other_connector_leaves(self) -> None:
        """
        The retry waits for B; when B goes away, the waiting connection of A
        takes it at once.
        """
        clock = Clock()
        queue, c = group(clock, a1="A", a2="A", b1="B")
        j = job()
        queue.put(j, never)
        self.take(queue, c["a1"])
        waiting = queue.get(c["a2"])
        queue.put(j, never)
        self.assertNoResult(waiting)
        queue.connection_lost(c["b1"])
        self.assertIs(self.successResultOf(waiting), j)
        j.stop_timer()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancelled_get_is_forgotten(self) -> None:
        """A cancelled get() takes nothing, and the job goes to the next."""
        clock = Clock()
        queue, c = group(clock, a1="A", b1="B")
        first = queue.get(c["a1"])
        first.cancel()
        self.failureResultOf(first)
        second = queue.get(c["b1"])
        j = job()
        queue.put(j, never)
        self.assertIs(self.successResultOf(second), j)
        j.stop_timer()
