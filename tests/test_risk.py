"""
Tests for L{appproxy.access.risk}.
"""

from __future__ import annotations

import ipaddress
from ipaddress import ip_address, ip_network
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.risk import (
    ANONYMIZER,
    FAILED_SIGN_INS,
    RISK_SIGNALS,
    AnonymizerList,
    FailedSignIns,
    load_anonymizer_list,
    risk_signals,
)

FAILED = frozenset({FAILED_SIGN_INS})
NONE: frozenset[str] = frozenset()


class FailedSignInsTests(SynchronousTestCase):
    def test_names(self) -> None:
        self.assertEqual(RISK_SIGNALS, {"failed-sign-ins", "anonymizer"})

    def test_below_limit(self) -> None:
        failures = FailedSignIns(limit=3, window=60)
        failures.record("alice", "203.0.113.1", 0)
        failures.record("alice", "203.0.113.2", 1)
        self.assertEqual(failures.signals("alice", "203.0.113.3", 2), NONE)

    def test_by_user_casefolded(self) -> None:
        failures = FailedSignIns(limit=3, window=60)
        failures.record("alice", "203.0.113.1", 0)
        failures.record("ALICE", "203.0.113.2", 1)
        failures.record("Alice", "203.0.113.3", 2)
        self.assertEqual(failures.signals("aLiCe", "198.51.100.1", 3), FAILED)
        self.assertEqual(failures.signals("bob", "198.51.100.1", 3), NONE)
        self.assertEqual(failures.signals(None, "198.51.100.1", 3), NONE)

    def test_by_address(self) -> None:
        failures = FailedSignIns(limit=3, window=60)
        for index, user in enumerate(["a", "b", None]):
            failures.record(user, "203.0.113.1", index)
        self.assertEqual(failures.signals("c", "203.0.113.1", 3), FAILED)
        self.assertEqual(failures.signals(None, "203.0.113.1", 3), FAILED)
        self.assertEqual(failures.signals("c", "203.0.113.2", 3), NONE)

    def test_ipv6_counted_per_64(self) -> None:
        failures = FailedSignIns(limit=2, window=60)
        failures.record(None, "2001:db8:1:2::1", 0)
        failures.record(None, "2001:db8:1:2:ffff::9", 1)
        self.assertEqual(failures.signals(None, "2001:db8:1:2::77", 2), FAILED)
        self.assertEqual(failures.signals(None, "2001:db8:1:3::1", 2), NONE)

    def test_mapped_address(self) -> None:
        failures = FailedSignIns(limit=2, window=60)
        failures.record(None, "::ffff:203.0.113.1", 0)
        failures.record(None, "203.0.113.1", 1)
        self.assertEqual(failures.signals(None, "203.0.113.1", 2), FAILED)

    def test_window_slides(self) -> None:
        failures = FailedSignIns(limit=2, window=60)
        failures.record("alice", "203.0.113.1", 0)
        failures.record("alice", "203.0.113.1", 30)
        self.assertEqual(failures.signals("alice", "203.0.113.1", 59), FAILED)
        self.assertEqual(failures.signals("alice", "203.0.113.1", 60), NONE)
        failures.record("alice", "203.0.113.1", 70)
        self.assertEqual(failures.signals("alice", "203.0.113.1", 80), FAILED)
        self.assertEqual(failures.signals("alice", "203.0.113.1", 90), NONE)

    def test_expired_keys_pruned(self) -> None:
        failures = FailedSignIns(limit=2, window=60)
        for index in range(50):
            failures.record(f"user{index}", f"203.0.113.{index}", index)
        self.assertEqual(len(failures), 100)
        failures.record("late", "198.51.100.1", 1000)
        self.assertEqual(len(failures), 2)
        self.assertEqual(failures.signals("user49", "203.0.113.49", 1000), NONE)

    def test_key_cap(self) -> None:
        failures = FailedSignIns(limit=2, window=1e9, max_keys=10)
        failures.record("first", "203.0.113.1", 0)
        failures.record("first", "203.0.113.1", 1)
        for index in range(100):
            failures.record(None, f"198.51.100.{index}", 2 + index)
            self.assertLessEqual(len(failures), 10)
        # The least recently failing keys went first.
        self.assertEqual(failures.signals("first", "203.0.113.1", 200), NONE)
        failures.record(None, "198.51.100.99", 300)
        self.assertEqual(failures.signals(None, "198.51.100.99", 300), FAILED)

    def test_recent_failure_keeps_key(self) -> None:
        failures = FailedSignIns(limit=2, window=1e9, max_keys=4)
        failures.record("keep", "203.0.113.1", 0)
        for index in range(10):
            failures.record(None, f"198.51.100.{index}", 1 + index)
            # Failing again makes the key the most recent one.
            failures.record("keep", "203.0.113.1", 1 + index)
        self.assertEqual(failures.signals("keep", "203.0.113.2", 20), FAILED)

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, FailedSignIns, limit=0)
        self.assertRaises(ValueError, FailedSignIns, window=0)
        self.assertRaises(ValueError, FailedSignIns, max_keys=1)

    @given(
        st.integers(1, 6),
        st.integers(1, 30),
        st.lists(
            st.tuples(
                st.sampled_from(["alice", "ALICE", "bob", None]),
                st.sampled_from(["203.0.113.1", "203.0.113.2", "2001:db8::1"]),
                st.integers(0, 20),
            ),
            max_size=40,
        ),
        st.sampled_from(["alice", "bob", "carol", None]),
        st.sampled_from(["203.0.113.1", "203.0.113.2", "2001:db8::2", "198.51.100.1"]),
    )
    def test_matches_naive_count(
        self,
        limit: int,
        window: int,
        events: list[tuple[str | None, str, int]],
        user: str | None,
        address: str,
    ) -> None:
        failures = FailedSignIns(limit=limit, window=window)
        now = 0
        log: list[tuple[str | None, str, int]] = []

        def same_address(a: str, b: str) -> bool:
            if ":" in a and ":" in b:
                return ip_network(a + "/64", strict=False) == ip_network(b + "/64", strict=False)
            return a == b

        def expected(at: int) -> frozenset[str]:
            by_user = sum(
                1
                for who, _, when in log
                if user is not None
                and who is not None
                and who.casefold() == user.casefold()
                and when > at - window
            )
            by_address = sum(
                1 for _, where, when in log if same_address(where, address) and when > at - window
            )
            return FAILED if by_user >= limit or by_address >= limit else NONE

        for who, where, step in events:
            now += step
            failures.record(who, where, now)
            log.append((who, where, now))
            for at in (now, now + window // 2, now + window - 1, now + window):
                self.assertEqual(failures.signals(user, address, at), expected(at))


def _network(
    version: int, value: int, prefix: int
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if version == 4:
        return ipaddress.IPv4Network((value % 2**32, prefix), strict=False)
    return ipaddress.IPv6Network((value, prefix * 4), strict=False)


class AnonymizerListTests(SynchronousTestCase):
    def write(self, text: str | bytes) -> Path:
        path = Path(self.mktemp())
        path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def test_load(self) -> None:
        path = self.write(
            "# Tor exit nodes\n"
            "\n"
            "203.0.113.7\n"
            "  198.51.100.0/24   # an open proxy range\n"
            "2001:db8:bad::/48\n"
            "\t\n"
        )
        anonymizers = load_anonymizer_list(path)
        for address in ("203.0.113.7", "198.51.100.0", "198.51.100.255", "2001:db8:bad::1"):
            self.assertTrue(anonymizers.contains(ip_address(address)), address)
        for address in ("203.0.113.6", "203.0.113.8", "198.51.101.0", "2001:db8:bae::1", "::1"):
            self.assertFalse(anonymizers.contains(ip_address(address)), address)
        self.assertTrue(anonymizers.contains(ip_address("::ffff:203.0.113.7")))
        self.assertEqual(len(anonymizers), 3)

    def test_empty(self) -> None:
        anonymizers = load_anonymizer_list(self.write("# nothing yet\n"))
        self.assertFalse(anonymizers.contains(ip_address("203.0.113.7")))
        self.assertFalse(anonymizers.contains(ip_address("::")))

    def test_errors_name_file_and_line(self) -> None:
        for text, problem in [
            (
                "203.0.113.7\nnot-an-address\n",
                "line 2: 'not-an-address' is not an IP address or network",
            ),
            ("\n\n10.0.0.1/33\n", "line 3: '10.0.0.1/33' is not an IP address or network"),
            ("10.0.0.1/8 # typo\n", "line 1: '10.0.0.1/8' has host bits set"),
        ]:
            path = self.write(text)
            e = self.assertRaises(ValueError, load_anonymizer_list, path)
            self.assertEqual(str(e), f"{path}, {problem}")

    def test_not_utf8(self) -> None:
        path = self.write(b"203.0.113.7\n\xff\xfe\n")
        e = self.assertRaises(ValueError, load_anonymizer_list, path)
        self.assertEqual(str(e), f"{path}, line 2: not UTF-8 text")

    def test_missing_file(self) -> None:
        self.assertRaises(OSError, load_anonymizer_list, Path(self.mktemp()))

    def test_merges_overlaps(self) -> None:
        anonymizers = AnonymizerList(
            [
                ip_network("10.0.0.0/24"),
                ip_network("10.0.0.128/25"),
                ip_network("10.0.1.0/24"),
                ip_network("10.0.3.0/24"),
            ]
        )
        self.assertEqual(len(anonymizers), 2)
        self.assertTrue(anonymizers.contains(ip_address("10.0.1.255")))
        self.assertFalse(anonymizers.contains(ip_address("10.0.2.0")))

    def test_large_list(self) -> None:
        networks = [ipaddress.IPv4Network((index * 4, 32)) for index in range(100_000)]
        anonymizers = AnonymizerList(networks)
        self.assertTrue(anonymizers.contains(ipaddress.IPv4Address(4 * 77_777)))
        self.assertFalse(anonymizers.contains(ipaddress.IPv4Address(4 * 77_777 + 1)))

    @given(
        st.lists(
            st.builds(
                _network, st.sampled_from([4, 6]), st.integers(0, 2**128 - 1), st.integers(0, 32)
            ),
            max_size=20,
        ),
        st.lists(st.integers(0, 2**128 - 1), min_size=1, max_size=20),
    )
    def test_matches_naive_lookup(
        self, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], values: list[int]
    ) -> None:
        anonymizers = AnonymizerList(networks)
        probes: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for value in values:
            probes.append(ipaddress.IPv4Address(value % 2**32))
            probes.append(ipaddress.IPv6Address(value))
        for network in networks:
            probes.extend([network.network_address, network.broadcast_address])
            if int(network.network_address) > 0:
                probes.append(network.network_address - 1)
            if int(network.broadcast_address) < 2**network.max_prefixlen - 1:
                probes.append(network.broadcast_address + 1)
        for probe in probes:
            expected = any(probe in network for network in networks)
            if isinstance(probe, ipaddress.IPv6Address) and probe.ipv4_mapped is not None:
                expected = expected or any(probe.ipv4_mapped in network for network in networks)
            self.assertEqual(anonymizers.contains(probe), expected, probe)


class RiskSignalsTests(SynchronousTestCase):
    def test_combined(self) -> None:
        failures = FailedSignIns(limit=1, window=60)
        failures.record("alice", "203.0.113.1", 0)
        anonymizers = AnonymizerList([ip_network("198.51.100.0/24")])
        self.assertEqual(risk_signals(failures, anonymizers, "bob", "203.0.113.2", 1), NONE)
        self.assertEqual(risk_signals(failures, anonymizers, "alice", "203.0.113.2", 1), FAILED)
        self.assertEqual(
            risk_signals(failures, anonymizers, "bob", "198.51.100.9", 1), {ANONYMIZER}
        )
        self.assertEqual(
            risk_signals(failures, anonymizers, "alice", "::ffff:198.51.100.9", 1),
            {ANONYMIZER, FAILED_SIGN_INS},
        )

    def test_sources_optional(self) -> None:
        self.assertEqual(risk_signals(None, None, "alice", "198.51.100.9", 1), NONE)
        anonymizers = AnonymizerList([ip_network("198.51.100.0/24")])
        self.assertEqual(risk_signals(None, anonymizers, None, "198.51.100.9", 1), {ANONYMIZER})

    def test_not_an_address(self) -> None:
        anonymizers = AnonymizerList([ip_network("0.0.0.0/0")])
        self.assertEqual(risk_signals(None, anonymizers, None, "unix-socket", 1), NONE)
