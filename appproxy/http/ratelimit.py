"""
The public listener's abuse limits, as arithmetic: token buckets per client
address, the address a bucket counts (IPv4 per address, IPv6 per /64), a
table of buckets bounded in memory, and connection counts per address and
in total.

A bucket holds at most C{burst} tokens and gains C{rate} per second; a
request takes one.  Without a token the request is refused, and told how
long until the next one (its C{Retry-After}).  This is nginx's C{limit_req}
with C{burst} and C{nodelay}: up to C{burst} requests at once, then C{rate}
per second.

The table keeps at most C{capacity} addresses, so memory stays bounded
whatever the number of addresses sending, and never forgets a bucket that
is not full: when full, it forgets buckets that have refilled to their
burst (a forgotten address starts again with a full bucket: forgetting
those changes nothing), and if none has, a new address is charged to one
shared overflow bucket (of the same budget) instead, until there is room.
It looks for full buckets among the L{TokenBuckets.SCAN} least recently used
only (the work per request stays bounded; a bucket unused for
C{burst / rate} seconds is full).  A smaller C{capacity} (a reload) keeps
the buckets beyond it until they are full again.
So whatever other addresses do, an address never gets more than its own
C{burst + rate * elapsed}, the overflow bucket counting as one more address
(with a clock that does not step back).

Pure: no reactor, no I/O; the caller gives the time.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import math
from collections import OrderedDict

import attrs

from appproxy.http.forwarding import IPAddress, unmapped

__all__ = [
    "IPV6_PREFIX",
    "Budget",
    "ConnectionCounts",
    "Throttle",
    "TokenBuckets",
    "address_key",
    "connection_key",
    "refill",
    "retry_after",
    "retry_after_header",
]

#: IPv6 addresses are counted per network of this prefix length: one
#: subscriber usually holds a whole /64.
IPV6_PREFIX = 64


@attrs.frozen
class Budget:
    """A bucket's size (C{burst} tokens) and refill (C{rate} per second; 0: no limit)."""

    rate: float
    burst: int

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0


@functools.lru_cache(maxsize=4096)
def address_key(address: IPAddress) -> str:
    """
    The key an address is counted under: an IPv4 address itself (an
    IPv4-mapped IPv6 address as the IPv4 one), an IPv6 address's /64.
    """
    address = unmapped(address)
    if isinstance(address, ipaddress.IPv6Address):
        base = int(address) >> (128 - IPV6_PREFIX) << (128 - IPV6_PREFIX)
        return f"{ipaddress.IPv6Address(base)}/{IPV6_PREFIX}"
    return str(address)


def connection_key(host: str) -> str:
    """L{address_key} of a peer's address text (not an IP address: itself)."""
    try:
        return address_key(ipaddress.ip_address(host))
    except ValueError:
        return host


def refill(tokens: float, elapsed: float, budget: Budget) -> float:
    """The tokens a bucket holds C{elapsed} seconds later (a step back in time adds none)."""
    return min(float(budget.burst), tokens + max(0.0, elapsed) * budget.rate)


def retry_after(tokens: float, budget: Budget) -> float:
    """Seconds until a bucket holding C{tokens} (fewer than one) has one."""
    return max(0.0, (1.0 - tokens) / budget.rate)


class TokenBuckets:
    """
    One budget's buckets, one per address key, at most C{capacity} of them;
    past it, new keys share one overflow bucket (see the module).
    """

    #: How many of the least recently used buckets a new key looks at for
    #: full ones to forget when the table is full (bounds the work per request).
    SCAN = 32

    def __init__(self, budget: Budget, capacity: int) -> None:
        self.budget = budget
        self.capacity = capacity
        #: key -> (tokens, when they were counted), least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        #: The bucket new keys share while the table is full of buckets not full.
        self._overflow: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        """Whether C{key} has a bucket of its own (not the overflow one)."""
        return key in self._buckets

    def take(self, key: str, now: float) -> float:
        """
        Take a token of C{key}'s bucket (the overflow bucket for a new key
        while the table is full): C{0.0} if there was one, else the seconds
        until there is one (nothing is taken).
        """
        if self.budget.unlimited:
            return 0.0
        held = self._buckets.pop(key, None)
        if held is None and len(self._buckets) >= max(1, self.capacity):
            self._forget_full(now)
            if len(self._buckets) >= max(1, self.capacity):
                wait, self._overflow = self._charge(self._overflow, now)
                return wait
        wait, self._buckets[key] = self._charge(held, now)
        return wait

    def _charge(
        self, held: tuple[float, float] | None, now: float
    ) -> tuple[float, tuple[float, float]]:
        """The wait (see L{take}) and the bucket after a request, from the bucket C{held}."""
        budget = self.budget
        tokens = float(budget.burst)
        if held is not None:
            tokens = refill(held[0], now - held[1], budget)
            # A clock stepping back is not credit to spend later.
            now = max(now, held[1])
        if tokens >= 1.0:
            return 0.0, (tokens - 1.0, now)
        return retry_after(tokens, budget), (tokens, now)

    def _forget_full(self, now: float) -> None:
        """Forget the buckets among the L{SCAN} least recently used that are full again."""
        budget = self.budget
        full = [
            key
            for key, (tokens, when) in itertools.islice(self._buckets.items(), self.SCAN)
            if refill(tokens, now - when, budget) >= budget.burst
        ]
        for key in full:
            del self._buckets[key]


class Throttle:
    """
    Whether something about a key (a log line about an address) is due:
    at most once per C{interval} seconds per key, for at most C{capacity}
    keys (the least recently due forgotten first).
    """

    def __init__(self, interval: float, capacity: int = 1024) -> None:
        self.interval, self.capacity = interval, capacity
        self._last: OrderedDict[str, float] = OrderedDict()

    def due(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and 0 <= now - last < self.interval:
            return False
        self._last.pop(key, None)
        self._last[key] = now
        while len(self._last) > max(1, self.capacity):
            self._last.popitem(last=False)
        return True


def retry_after_header(wait: float) -> bytes:
    """A C{Retry-After} value (whole seconds, at least 1) for a wait of C{wait} seconds."""
    return b"%d" % max(1, math.ceil(wait))


@attrs.define
class ConnectionCounts:
    """
    Open connections per address key and in total, with their caps
    (C{per_address}, C{total}).
    """

    per_address: int
    total: int
    counts: dict[str, int] = attrs.field(factory=dict)
    open: int = 0

    def enter(self, key: str | None) -> str | None:
        """
        One more connection (of C{key}; L{None}: an address not bounded per
        address, a trusted proxy's).  Returns the name of the cap it would
        pass (nothing is counted then), or L{None}: counted.
        """
        if self.open >= self.total:
            return "connections_total"
        if key is not None:
            count = self.counts.get(key, 0)
            if count >= self.per_address:
                return "connections_per_address"
            self.counts[key] = count + 1
        self.open += 1
        return None

    def leave(self, key: str | None) -> None:
        """A connection counted by L{enter} is closed."""
        self.open = max(0, self.open - 1)
        if key is None:
            return
        count = self.counts.get(key, 0) - 1
        if count > 0:
            self.counts[key] = count
        else:
            self.counts.pop(key, None)
