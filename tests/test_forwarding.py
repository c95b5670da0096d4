"""
Tests for L{appproxy.http.forwarding}: the client's address behind trusted
reverse proxies.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.http import forwarding
from appproxy.http.forwarding import IPAddress, IPNetwork, client_address, ip_text

PROXIES = (ip_network("10.0.0.0/8"), ip_network("fd00::/8"))


def xff(*values: str) -> list[bytes]:
    return [value.encode("latin-1") for value in values]


@attrs.frozen
class Case:
    """One row: the client's address for a peer and its C{X-Forwarded-For} values."""

    label: str
    peer: str
    forwarded_for: Sequence[bytes]
    expected: IPAddress
    proxies: Sequence[IPNetwork] = PROXIES


#: Entries the walk accepts, with their address.
WELL_FORMED = [
    ("203.0.113.9:4711", "203.0.113.9"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"),
]

#: Entries that stop the walk.
MALFORMED = ["203.0.113.9:", "203.0.113.9:x", "[2001:db8::1", "[1.2.3.4]", "fe80::1%eth0"]

CASES = [
    Case("untrusted peer", "203.0.113.9", xff("1.2.3.4"), IPv4Address("203.0.113.9")),
    Case("no proxies", "10.0.0.1", xff("1.2.3.4"), IPv4Address("10.0.0.1"), proxies=()),
    Case("trusted peer", "10.0.0.1", xff("6.6.6.6, 203.0.113.9"), IPv4Address("203.0.113.9")),
    Case(
        "chain of proxies",
        "10.0.0.1",
        xff("6.6.6.6,203.0.113.9", "10.2.2.2 , fd00::1"),
        IPv4Address("203.0.113.9"),
    ),
    Case("all trusted", "10.0.0.1", xff("10.1.1.1, 10.2.2.2"), IPv4Address("10.1.1.1")),
    Case("no header", "10.0.0.1", [], IPv4Address("10.0.0.1")),
    Case(
        "malformed stops",
        "10.0.0.1",
        xff("203.0.113.9, unknown, 10.3.3.3"),
        IPv4Address("10.3.3.3"),
    ),
    Case("malformed first", "10.0.0.1", xff("203.0.113.9, garbage"), IPv4Address("10.0.0.1")),
    Case(
        "empty entries skipped",
        "10.0.0.1",
        xff("203.0.113.9", "", " ,,"),
        IPv4Address("203.0.113.9"),
    ),
    *(Case(entry, "10.0.0.1", xff(entry), ip_address(address)) for entry, address in WELL_FORMED),
    *(Case(entry, "10.0.0.1", xff(entry), IPv4Address("10.0.0.1")) for entry in MALFORMED),
    Case("IPv6", "fd00::5", xff("2001:db8::7"), IPv6Address("2001:db8::7")),
    Case("mapped", "::ffff:10.0.0.1", xff("::ffff:203.0.113.9"), IPv4Address("203.0.113.9")),
    Case("mapped peer", "::ffff:203.0.113.9", [], IPv4Address("203.0.113.9")),
    Case("not ASCII", "10.0.0.1", [b"203.0.113.9, \xff\xfe"], IPv4Address("10.0.0.1")),
]


class ClientAddressTests(SynchronousTestCase):
    def test_cases(self) -> None:
        for case in CASES:
            self.assertEqual(
                client_address(case.peer, case.forwarded_for, case.proxies),
                case.expected,
                case.label,
            )

    def test_bad_peer(self) -> None:
        self.assertRaises(ValueError, client_address, "not-an-ip", [], PROXIES)


trusted_ips = st.sampled_from(["10.0.0.1", "10.200.3.4", "fd00::1", "fdff::abcd"])
untrusted_ips = st.sampled_from(["203.0.113.9", "198.51.100.1", "2001:db8::5", "1.1.1.1"])
any_entries = (
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=","), max_size=12
    )
    | trusted_ips
    | untrusted_ips
)


def _split_headers(entries: list[str], cuts: list[int]) -> list[bytes]:
    """Spread the entries over several header values, as several hops might."""
    joined = ",".join(entries)
    parts: list[bytes] = []
    start = 0
    for cut in sorted(set(cuts)):
        if start <= cut <= len(joined) and (cut == len(joined) or joined[cut] == ","):
            parts.append(joined[start:cut].encode("latin-1"))
            start = cut + 1
    parts.append(joined[start:].encode("latin-1"))
    return parts


class ClientAddressPropertyTests(SynchronousTestCase):
    @given(untrusted_ips, st.lists(any_entries, max_size=6))
    def test_untrusted_peer_wins(self, peer: str, entries: list[str]) -> None:
        self.assertEqual(client_address(peer, xff(",".join(entries)), PROXIES), ip_address(peer))

    @given(
        trusted_ips,
        st.lists(any_entries, max_size=5),
        untrusted_ips,
        st.lists(trusted_ips, max_size=3),
    )
    def test_spoofed_entries_never_win(
        self, peer: str, spoofed: list[str], client: str, proxies: list[str]
    ) -> None:
        entries = [*spoofed, client, *proxies]
        self.assertEqual(client_address(peer, xff(", ".join(entries)), PROXIES), ip_address(client))

    @given(trusted_ips, st.lists(any_entries, max_size=8), st.lists(st.integers(0, 100)))
    def test_result_is_peer_or_entry(self, peer: str, entries: list[str], cuts: list[int]) -> None:
        result = client_address(peer, _split_headers(entries, cuts), PROXIES)
        candidates = {ip_address(peer)}
        for entry in entries:
            for form in (entry.strip(), entry.strip().strip("[]")):
                try:
                    candidates.add(ip_address(form))
                except ValueError:
                    pass
            try:
                candidates.add(ip_address(entry.strip().rpartition(":")[0].strip("[]")))
            except ValueError:
                pass
        candidates |= {
            candidate.ipv4_mapped
            for candidate in candidates
            if isinstance(candidate, IPv6Address) and candidate.ipv4_mapped is not None
        }
        self.assertIn(result, candidates)

    @given(trusted_ips, st.lists(any_entries, max_size=8), st.lists(st.integers(0, 100)))
    def test_header_split_irrelevant(self, peer: str, entries: list[str], cuts: list[int]) -> None:
        self.assertEqual(
            client_address(peer, _split_headers(entries, cuts), PROXIES),
            client_address(peer, xff(",".join(entries)), PROXIES),
        )

    @given(
        trusted_ips,
        st.lists(any_entries, max_size=6),
        untrusted_ips,
        st.lists(trusted_ips, max_size=3),
    )
    def test_untrusted_result_is_rightmost_untrusted(
        self, peer: str, left: list[str], client: str, right: list[str]
    ) -> None:
        result = client_address(peer, xff(",".join([*left, client, *right])), PROXIES)
        self.assertFalse(any(result in network for network in PROXIES))


class IpTextTests(SynchronousTestCase):
    """L{ip_text}: an address as text, as C{str} writes it, remembered."""

    @given(
        st.lists(
            st.one_of(
                st.ip_addresses(),
                st.builds(
                    lambda a, scope: IPv6Address(f"{a}%{scope}"),
                    st.ip_addresses(v=6),
                    st.sampled_from(["eth0", "1", "lo"]),
                ),
            ),
            max_size=50,
        )
    )
    def test_as_str(self, addresses: list[IPAddress]) -> None:
        """Whatever addresses come, in any order and again, each is written as C{str} writes it."""
        for address in addresses + addresses[::-1]:
            self.assertEqual(ip_text(address), str(address))

    def test_bounded(self) -> None:
        """The cache is emptied when full, so it never holds more than its bound."""
        self.patch(forwarding, "_TEXTS", {})
        self.patch(forwarding, "_TEXTS_KEPT", 8)
        for n in range(20):
            self.assertEqual(ip_text(IPv4Address(n)), str(IPv4Address(n)))
            self.assertLessEqual(len(forwarding._TEXTS), 8)
