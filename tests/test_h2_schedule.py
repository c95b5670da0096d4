"""
The HTTP/2 stream scheduler (L{appproxy.frontend.h2_schedule.RoundRobin}):
whatever the streams' insertions, blocks and removals, the next stream is
one that can send, each such stream gets its turn once per round, and the
same operations are refused as by the C{priority} package's tree it stands
in for; a client's PRIORITY frames leave nothing behind.
"""

from __future__ import annotations

from typing import Any

import priority  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.frontend.h2_schedule import RoundRobin

streams = st.sampled_from([1, 3, 5, 7, 9])
operations = st.lists(
    st.tuples(
        st.sampled_from(["insert", "block", "unblock", "remove", "next", "priority"]), streams
    ),
    max_size=40,
)


def _apply(scheduler: Any, operation: str, stream: int) -> Any:
    """One operation; what it returned, or the type of what it raised."""
    try:
        if operation == "insert":
            return scheduler.insert_stream(stream)
        if operation == "block":
            return scheduler.block(stream)
        if operation == "unblock":
            return scheduler.unblock(stream)
        if operation == "remove":
            return scheduler.remove_stream(stream)
        if operation == "priority":
            return scheduler.reprioritize(stream, weight=200)
        return next(scheduler)
    except priority.priority.PriorityError as e:
        return type(e)


class RoundRobinTests(SynchronousTestCase):
    @given(operations)
    def test_like_the_tree(self, ops: list[tuple[str, int]]) -> None:
        """
        The same operations refused as by twisted.web's priority tree
        (a stream that is not there, or is there twice); the next stream
        one that can send; none when none can.
        """
        ours, tree = RoundRobin(), priority.PriorityTree()
        ready: set[int] = set()
        known: set[int] = set()
        for operation, stream in ops:
            if operation == "priority" and stream not in known:
                continue  # the tree takes a stream it does not know; we drop it
            got = _apply(ours, operation, stream)
            expected = _apply(tree, operation, stream)
            if operation == "next":
                if ready:
                    self.assertIn(got, ready)
                    self.assertIn(expected, ready)
                else:
                    self.assertIs(got, priority.DeadlockError)
                    self.assertIs(expected, priority.DeadlockError)
                continue
            self.assertEqual(got, expected, (operation, stream))
            if got is None:
                if operation == "insert":
                    known.add(stream)
                    ready.add(stream)
                elif operation == "remove":
                    known.discard(stream)
                    ready.discard(stream)
                elif operation == "block":
                    ready.discard(stream)
                elif operation == "unblock":
                    ready.add(stream)
            self.assertEqual(len(ours), len(known))

    @given(st.sets(streams, min_size=1), st.sets(streams), st.integers(1, 4))
    def test_turns(self, inserted: set[int], blocked: set[int], rounds: int) -> None:
        """Each stream that can send gets one turn per round; a blocked one none."""
        scheduler = RoundRobin()
        for stream in sorted(inserted):
            scheduler.insert_stream(stream)
        for stream in blocked & inserted:
            scheduler.block(stream)
        ready = inserted - blocked
        if not ready:
            self.assertRaises(priority.DeadlockError, next, scheduler)
            return
        turns = [next(scheduler) for _ in range(rounds * len(ready))]
        self.assertEqual(sorted(turns), sorted(list(ready) * rounds))
        for start in range(0, len(turns), len(ready)):
            self.assertEqual(set(turns[start : start + len(ready)]), ready)

    def test_unblocked_goes_last(self) -> None:
        scheduler = RoundRobin()
        for stream in (1, 3, 5):
            scheduler.insert_stream(stream)
        scheduler.block(1)
        scheduler.unblock(1)
        self.assertEqual([next(scheduler) for _ in range(4)], [3, 5, 1, 3])

    def test_priority_of_unknown_stream_kept_nowhere(self) -> None:
        """PRIORITY for streams never opened: nothing kept, the stream opens as any other."""
        scheduler = RoundRobin()
        for stream in range(1, 20_001, 2):
            scheduler.reprioritize(stream, depends_on=stream + 2, weight=1, exclusive=True)
        self.assertEqual(len(scheduler), 0)
        scheduler.insert_stream(3)
        self.assertEqual(next(scheduler), 3)
