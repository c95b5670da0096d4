"""
Bounded in-memory state for the built-in identity provider: maps whose
entries expire, and failed-attempt counters.

Pure: no reactor; every call takes the current time.  Expired entries are
dropped lazily, as new ones come in, so nothing needs a timer.

All of this lives in one process.  Several service processes serving the
same provider would need it in shared storage (authorization codes, SSO
sessions, access tokens and device codes must be visible to whichever process
gets the next request; the counters should be shared for the limits to
hold).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

import attrs

__all__ = ["ExpiringMap", "FailureCounter"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@attrs.define
class _Entry(Generic[V]):
    expires_at: float
    value: V


class ExpiringMap(Generic[K, V]):
    """
    A map whose entries expire C{lifetime} seconds after they are put, and
    which holds at most C{capacity} entries (the oldest go first).

    Entries are kept in the order they were put; since every entry lives
    C{lifetime} seconds, that is also the order in which they expire.
    """

    def __init__(self, *, lifetime: float, capacity: int) -> None:
        if lifetime <= 0 or capacity < 1:
            raise ValueError("lifetime and capacity must be positive")
        self.lifetime = lifetime
        self.capacity = capacity
        self._entries: dict[K, _Entry[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now and len(self._entries) <= self.capacity:
                return
            del self._entries[key]

    def put(self, key: K, value: V, now: float) -> float:
        """
        Add (or replace, with a new lifetime) C{key}.

        @return: when it expires.
        """
        self._entries.pop(key, None)
        expires_at = now + self.lifetime
        self._entries[key] = _Entry(expires_at, value)
        self._prune(now)
        return expires_at

    def update(self, key: K, value: V, now: float) -> bool:
        """
        Replace the value of a live entry, keeping its expiry.

        @return: whether there was a live entry to update.
        """
        entry = self._live(key, now)
        if entry is None:
            return False
        entry.value = value
        return True

    def _live(self, key: K, now: float) -> _Entry[V] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[key]
            return None
        return entry

    def get(self, key: K, now: float) -> V | None:
        """The value of C{key}; L{None} if absent or expired."""
        entry = self._live(key, now)
        return None if entry is None else entry.value

    def expires_at(self, key: K, now: float) -> float | None:
        entry = self._live(key, now)
        return None if entry is None else entry.expires_at

    def pop(self, key: K, now: float) -> V | None:
        """Remove C{key}; its value if it was live, L{None} otherwise."""
        entry = self._entries.pop(key, None)
        if entry is None or entry.expires_at <= now:
            return None
        return entry.value


@attrs.define
class _Count:
    started: float
    failures: int


class FailureCounter:
    """
    Failed attempts per key (a user name, an address): C{limit} failures
    within C{window} seconds of the first lock the key until the window ends.

    At most C{capacity} keys are tracked; the oldest windows are forgotten
    first.
    """

    def __init__(self, *, limit: int, window: float, capacity: int = 100_000) -> None:
        if limit < 1 or window <= 0 or capacity < 1:
            raise ValueError("limit, window and capacity must be positive")
        self.limit = limit
        self.window = window
        self.capacity = capacity
        self._counts: dict[str, _Count] = {}

    def _current(self, key: str, now: float) -> _Count | None:
        count = self._counts.get(key)
        if count is not None and count.started + self.window <= now:
            del self._counts[key]
            return None
        return count

    def is_locked(self, key: str, now: float) -> bool:
        count = self._current(key, now)
        return count is not None and count.failures >= self.limit

    def failures(self, key: str, now: float) -> int:
        count = self._current(key, now)
        return 0 if count is None else count.failures

    def record(self, key: str, now: float) -> None:
        """Count a failure (or an attempt whose outcome is not known yet)."""
        count = self._current(key, now)
        if count is None:
            self._counts[key] = _Count(now, 1)
            while len(self._counts) > self.capacity:
                del self._counts[next(iter(self._counts))]
        else:
            count.failures += 1

    def forgive(self, key: str, now: float) -> None:
        """Take back one L{record}: the attempt succeeded."""
        count = self._current(key, now)
        if count is not None and count.failures > 0:
            count.failures -= 1

    def clear(self, key: str) -> None:
        self._counts.pop(key, None)
