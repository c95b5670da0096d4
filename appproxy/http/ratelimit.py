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

The table keeps at most C{capacity} addresses: the one used least recently
is forgotten first (a forgotten address starts again with a full bucket), so
memory stays bounded whatever the number of addresses sending.

Pure: no reactor, no I/O; the caller gives the time.
"""

from __future__ import annotations

import functools
import ipaddress
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
    One budget's buckets, one per address key, at most C{capacity} of them
    (the least recently used forgotten first).
    """

    def __init__(self, budget: Budget, capacity: int) -> None:
        self.budget = budget
        self.capacity = capacity
        #: key -> (tokens, when they were counted), least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """
        Take a token of C{key}'s bucket: C{0.0} if there was one, else the
        seconds until there is one (nothing is taken).
        """
        budget = self.budget
        if budget.unlimited:
            return 0.0
        held = self._buckets.pop(key, None)
        tokens = float(budget.burst)
        if held is not None:
            tokens = refill(held[0], now - held[1], budget)
            # A clock stepping back is not credit to spend later.
            now = max(now, held[1])
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = retry_after(tokens, budget)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > max(1, self.capacity):
            self._buckets.popitem(last=False)
        return wait


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
