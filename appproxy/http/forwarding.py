"""
The client's address behind reverse proxies: C{X-Forwarded-For}, trusted only
as far as the proxies named in the configuration.

Pure functions: no reactor, no I/O.  IPv4-mapped IPv6 addresses
(C{::ffff:a.b.c.d}) are always returned as the IPv4 address (L{unmapped}), so
that named locations and trusted proxies written as IPv4 networks match them.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

__all__ = ["IPAddress", "IPNetwork", "client_address", "ip_text", "unmapped"]

#: An IP address, either family.
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: An IP network, either family.
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


#: Addresses already written as text, by address (see L{ip_text}).
_TEXTS: dict[IPAddress, str] = {}
#: At most this many are kept: the cache is emptied when it is full.
_TEXTS_KEPT = 4096


def ip_text(address: IPAddress) -> str:
    """
    C{str(address)}, remembered: C{ipaddress} writes it anew each time
    (about 2 microseconds), and a signed-in request needs its client's
    address as text three times (forwarding fields, policy, logs).
    """
    text = _TEXTS.get(address)
    if text is None:
        if len(_TEXTS) >= _TEXTS_KEPT:
            _TEXTS.clear()
        text = _TEXTS[address] = str(address)
    return text


def unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (C{::ffff:a.b.c.d}) as the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_forwarded_entry(entry: str) -> IPAddress | None:
    """
    One C{X-Forwarded-For} entry: an IPv4 or IPv6 address, optionally
    bracketed (IPv6) and followed by a port, as some proxies write it.
    L{None} if malformed.
    """
    host = entry
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            return None
        host, rest = entry[1:close], entry[close + 1 :]
        if rest and not (rest[0] == ":" and rest[1:].isdigit() and rest[1:].isascii()):
            return None
        if ":" not in host:
            return None
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if not (port.isdigit() and port.isascii()):
            return None
    if "%" in host:
        # Scoped addresses have no place in a forwarding header.
        return None
    try:
        return unmapped(ipaddress.ip_address(host))
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def _peer_address(peer: str) -> IPAddress:
    """C{peer} parsed: the same few peers come again and again."""
    return unmapped(ipaddress.ip_address(peer))


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in proxies)


def client_address(
    peer: str, forwarded_for: Sequence[bytes], trusted_proxies: Sequence[IPNetwork]
) -> IPAddress:
    """
    The client's address.

    The TCP peer's address, unless the peer is in one of
    C{trusted_proxies}: then C{X-Forwarded-For} (all the header's values,
    joined with commas) is walked from the right, past trusted proxies, and
    the first untrusted address is the client.  A malformed entry stops the
    walk: the last address found before it is used.  Empty entries are
    skipped.  Anything left of the first untrusted address, which the client
    itself may have written, is never used.

    IPv4-mapped IPv6 addresses are returned as IPv4 addresses.

    @param peer: the TCP peer's IP address.
    @param forwarded_for: the values of the C{X-Forwarded-For} headers, in
        the order received.

    @raise ValueError: if C{peer} is not an IP address.
    """
    address = _peer_address(peer)
    if not _trusted(address, trusted_proxies):
        return address
    joined = b",".join(forwarded_for).decode("latin-1")
    for raw in reversed(joined.split(",")):
        entry = raw.strip(" \t")
        if not entry:
            continue
        parsed = _parse_forwarded_entry(entry)
        if parsed is None:
            break
        address = parsed
        if not _trusted(address, trusted_proxies):
            break
    return address
