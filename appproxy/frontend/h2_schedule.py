"""
Which stream of an HTTP/2 client connection sends its next frame: each
stream with data to send in turn (round robin).

twisted.web asks a priority tree (the C{priority} package, RFC 7540's
dependencies and weights) for the next stream, and inserts, blocks and
removes every stream there: about 1.5% of the service's CPU for each request
of an HTTP/2 client, for a scheme RFC 9113 (section 5.3) deprecates and lets
a server ignore; browsers no longer send it.  L{RoundRobin} has the tree's
interface as twisted.web uses it, and gives each stream that can send a
frame in turn.  A client's PRIORITY frames change nothing and, for a stream
not yet opened, are not kept (the tree kept each such stream until the
connection closed).
"""

from __future__ import annotations

from priority import (  # type: ignore[import-untyped]
    DeadlockError,
    DuplicateStreamError,
    MissingStreamError,
)

__all__ = ["RoundRobin"]


class RoundRobin:
    """
    The streams of one connection, each blocked (nothing to send, or no
    window) or not; the streams not blocked take turns, in the order they
    were last unblocked.
    """

    __slots__ = ("_ready", "_streams")

    def __init__(self) -> None:
        #: Each stream: whether it is not blocked.
        self._streams: dict[int, bool] = {}
        #: The streams not blocked, the next one first (a list: a deque
        #: is 0.6 KiB however few it holds; there are few).
        self._ready: list[int] = []

    def insert_stream(
        self,
        stream_id: int,
        depends_on: int | None = None,
        weight: int = 16,
        exclusive: bool = False,
    ) -> None:
        """A new stream, not blocked (its priority is not used)."""
        if stream_id in self._streams:
            raise DuplicateStreamError(f"Stream {stream_id} already in the scheduler")
        self._streams[stream_id] = True
        self._ready.append(stream_id)

    def reprioritize(
        self,
        stream_id: int,
        depends_on: int | None = None,
        weight: int = 16,
        exclusive: bool = False,
    ) -> None:
        """A client's new priority for a stream: not used, whichever stream."""

    def block(self, stream_id: int) -> None:
        """C{stream_id} cannot send now."""
        ready = self._state(stream_id)
        if ready:
            self._streams[stream_id] = False
            self._ready.remove(stream_id)

    def unblock(self, stream_id: int) -> None:
        """C{stream_id} can send again: its turn comes after the others'."""
        if not self._state(stream_id):
            self._streams[stream_id] = True
            self._ready.append(stream_id)

    def remove_stream(self, stream_id: int) -> None:
        """C{stream_id} has ended."""
        if self._state(stream_id):
            self._ready.remove(stream_id)
        del self._streams[stream_id]

    def _state(self, stream_id: int) -> bool:
        ready = self._streams.get(stream_id)
        if ready is None:
            raise MissingStreamError(f"Stream {stream_id} not in the scheduler")
        return ready

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> RoundRobin:
        return self

    def __next__(self) -> int:
        """The stream whose turn it is (it goes last), or L{DeadlockError} if none can send."""
        ready = self._ready
        if not ready:
            raise DeadlockError("No unblocked streams to schedule.")
        stream_id = ready.pop(0)
        ready.append(stream_id)
        return stream_id
