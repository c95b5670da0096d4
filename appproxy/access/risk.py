"""
Sign-in risk signals for conditional access.

Two signals, named as policies name them in C{risks}:

  - C{"failed-sign-ins"} (L{FAILED_SIGN_INS}): the user name or the client
    address has failed to sign in too often recently (L{FailedSignIns});
  - C{"anonymizer"} (L{ANONYMIZER}): the client address is on a list of
    anonymizing networks, such as Tor exit nodes or open proxies
    (L{AnonymizerList}).

Nothing here reads the clock: times are passed in.  Only
L{load_anonymizer_list} reads a file.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections import deque
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "ANONYMIZER",
    "FAILED_SIGN_INS",
    "RISK_SIGNALS",
    "AnonymizerList",
    "FailedSignIns",
    "load_anonymizer_list",
    "risk_signals",
]

#: Too many recent failed sign-ins for the user name or the client address.
FAILED_SIGN_INS = "failed-sign-ins"
#: The client address belongs to an anonymizing network.
ANONYMIZER = "anonymizer"
#: Every risk signal a policy may name.
RISK_SIGNALS: frozenset[str] = frozenset({FAILED_SIGN_INS, ANONYMIZER})
_NO_SIGNALS: frozenset[str] = frozenset()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 clients usually hold a whole /64: counting failures per address would
# let one client spread its attempts over 2**64 addresses.
_IPV6_PREFIX = 64


def _unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (C{::ffff:a.b.c.d}) as the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=1024)
def _address_key(address: str) -> str:
    """
    The key failures are counted under for a client address: the address
    itself for IPv4, its /64 network for IPv6, the string as given if it is
    not an IP address.
    """
    try:
        parsed = _unmapped(ipaddress.ip_address(address))
    except ValueError:
        return "address:" + address
    if isinstance(parsed, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((parsed, _IPV6_PREFIX), strict=False)
        return "address:" + str(network)
    return "address:" + str(parsed)


class FailedSignIns:
    """
    Counts failed sign-ins in a sliding window, per user name (casefolded)
    and per client address (per /64 for IPv6).

    In memory and per process: it is a risk signal, not a lockout store.
    Memory is bounded: at most C{limit} times are kept per key (enough to
    tell whether C{limit} fell within the window), at most C{max_keys} keys
    are kept (the keys that failed least recently are evicted first), and
    keys whose failures have all left the window are pruned as failures are
    recorded.

    @ivar limit: the number of failures within C{window} that raises the
        signal.
    @ivar window: the window, in seconds.
    @ivar max_keys: the most keys kept.
    """

    def __init__(self, limit: int = 5, window: float = 600.0, max_keys: int = 100_000) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if not window > 0:
            raise ValueError(f"window must be positive, not {window}")
        if max_keys < 2:
            raise ValueError(f"max_keys must be at least 2, not {max_keys}")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        # Insertion order is the order of each key's latest failure: the
        # first key is the one that failed least recently.
        self._failures: dict[str, deque[float]] = {}
        #: How many failures were recorded: what the signals depend on has
        #: changed when it has.
        self.changes = 0

    def __len__(self) -> int:
        """The number of keys currently kept."""
        return len(self._failures)

    def _keys(self, user: str | None, address: str) -> list[str]:
        keys = [_address_key(address)]
        if user is not None:
            keys.append("user:" + user.casefold())
        return keys

    def record(self, user: str | None, address: str, now: float) -> None:
        """
        Record a failed sign-in at time C{now}.

        @param user: the user name the sign-in was for, or L{None} when it is
            not known (for example when the provider returned an error).
        @param address: the client address.
        """
        self.changes += 1
        self._prune(now)
        for key in self._keys(user, address):
            times = self._failures.pop(key, None)
            if times is None:
                times = deque(maxlen=self.limit)
            times.append(now)
            self._failures[key] = times
        while len(self._failures) > self.max_keys:
            del self._failures[next(iter(self._failures))]

    def _prune(self, now: float) -> None:
        """Forget the least recently failed keys whose failures are all expired."""
        horizon = now - self.window
        while self._failures:
            key = next(iter(self._failures))
            if self._failures[key][-1] > horizon:
                break
            del self._failures[key]

    def _count(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        horizon = now - self.window
        return sum(1 for when in times if when > horizon)

    def signals(self, user: str | None, address: str, now: float) -> frozenset[str]:
        """
        The signals for a sign-in at time C{now}: C{{"failed-sign-ins"}} when
        the user name or the address has at least C{limit} failures in the
        C{window} seconds before C{now}, else nothing.
        """
        if not self._failures:
            return _NO_SIGNALS  # the usual case: nothing to look up
        if any(self._count(key, now) >= self.limit for key in self._keys(user, address)):
            return frozenset({FAILED_SIGN_INS})
        return frozenset()


class _Ranges:
    """Disjoint, sorted integer ranges C{[start, end]} of one address family."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        starts: list[int] = []
        ends: list[int] = []
        for start, end in sorted(ranges):
            if ends and start <= ends[-1] + 1:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        self._starts = starts
        self._ends = ends

    def __len__(self) -> int:
        return len(self._starts)

    def __contains__(self, value: int) -> bool:
        index = bisect.bisect_right(self._starts, value) - 1
        return index >= 0 and value <= self._ends[index]


class AnonymizerList:
    """
    A set of anonymizing networks (Tor exit nodes, open proxies, VPN
    services).  Lookups take logarithmic time: the networks are merged into
    sorted integer ranges per address family.
    """

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for network in networks:
            span = (int(network.network_address), int(network.broadcast_address))
            (v4 if network.version == 4 else v6).append(span)
        self._v4 = _Ranges(v4)
        self._v6 = _Ranges(v6)

    def __len__(self) -> int:
        """The number of disjoint address ranges (after merging)."""
        return len(self._v4) + len(self._v6)

    def contains(self, ip: IPAddress) -> bool:
        """
        Is C{ip} in one of the networks?  An IPv4-mapped IPv6 address is
        also looked up as the IPv4 address.
        """
        if ip.version == 4:
            return int(ip) in self._v4
        unmapped = _unmapped(ip)
        return int(ip) in self._v6 or (unmapped is not ip and int(unmapped) in self._v4)


def load_anonymizer_list(path: str | Path) -> AnonymizerList:
    """
    Read a list of anonymizing networks: one IP address or network (CIDR,
    without host bits) per line; C{#} starts a comment; blank lines are
    ignored.

    @raise OSError: if the file cannot be read.
    @raise ValueError: naming the file and line, if a line is not an address
        or network, or the file is not UTF-8.
    """
    path = Path(path)
    networks: list[IPNetwork] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}, line {number}: not UTF-8 text") from None
            text = line.partition("#")[0].strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text))
            except ValueError:
                problem = (
                    "has host bits set"
                    if "/" in text and _is_network_with_host_bits(text)
                    else "is not an IP address or network"
                )
                raise ValueError(f"{path}, line {number}: {text!r} {problem}") from None
    return AnonymizerList(networks)


def _is_network_with_host_bits(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def risk_signals(
    failures: FailedSignIns | None,
    anonymizers: AnonymizerList | None,
    user: str | None,
    address: str,
    now: float,
) -> frozenset[str]:
    """
    The risk signals present for a sign-in: L{FAILED_SIGN_INS} from
    C{failures}, L{ANONYMIZER} when C{address} is in C{anonymizers}.  Either
    source may be L{None} (not configured).  An C{address} that is not an IP
    address is never an anonymizer.
    """
    signals: set[str] = set()
    if failures is not None:
        signals |= failures.signals(user, address, now)
    if anonymizers is not None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            pass
        else:
            if anonymizers.contains(ip):
                signals.add(ANONYMIZER)
    return frozenset(signals)
