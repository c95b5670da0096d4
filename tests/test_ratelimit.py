"""
L{appproxy.http.ratelimit}: the token bucket arithmetic, the address key
(IPv4 per address, IPv6 per /64), the bound on tracked addresses, and the
connection counts.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.http.ratelimit import (
    Budget,
    ConnectionCounts,
    Throttle,
    TokenBuckets,
    address_key,
    connection_key,
    retry_after_header,
)

ipv6 = st.integers(min_value=0, max_value=(1 << 128) - 1).map(ipaddress.IPv6Address)
ipv4 = st.integers(min_value=0, max_value=(1 << 32) - 1).map(ipaddress.IPv4Address)
budgets = st.builds(
    Budget,
    rate=st.floats(min_value=0.01, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=200),
)


class AddressKeyTests(SynchronousTestCase):
    def test_ipv4_is_itself(self) -> None:
        self.assertEqual(address_key(ipaddress.ip_address("192.0.2.7")), "192.0.2.7")
        self.assertNotEqual(
            address_key(ipaddress.ip_address("192.0.2.7")),
            address_key(ipaddress.ip_address("192.0.2.8")),
        )

    def test_ipv6_per_64(self) -> None:
        """Two addresses of one /64 share a key; the next /64 has another."""
        a = address_key(ipaddress.ip_address("2001:db8:1:2:aaaa::1"))
        b = address_key(ipaddress.ip_address("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        c = address_key(ipaddress.ip_address("2001:db8:1:3::1"))
        self.assertEqual(a, "2001:db8:1:2::/64")
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def test_mapped_ipv4(self) -> None:
        """An IPv4-mapped IPv6 address counts as the IPv4 address, not as ::ffff:0:0/64."""
        self.assertEqual(address_key(ipaddress.ip_address("::ffff:192.0.2.7")), "192.0.2.7")

    def test_connection_key(self) -> None:
        self.assertEqual(connection_key("2001:db8::5"), "2001:db8::/64")
        self.assertEqual(connection_key("127.0.0.2"), "127.0.0.2")
        self.assertEqual(connection_key("/run/socket"), "/run/socket")

    @given(ipv6, ipv6)
    def test_same_key_iff_same_64(self, a: ipaddress.IPv6Address, b: ipaddress.IPv6Address) -> None:
        if a.ipv4_mapped is not None or b.ipv4_mapped is not None:
            return
        same = int(a) >> 64 == int(b) >> 64
        self.assertEqual(address_key(a) == address_key(b), same)

    @given(ipv6)
    def test_ipv6_key_is_its_network(self, a: ipaddress.IPv6Address) -> None:
        if a.ipv4_mapped is not None:
            return
        network = ipaddress.IPv6Network(address_key(a))
        self.assertEqual(network.prefixlen, 64)
        self.assertIn(a, network)

    @given(ipv4, ipv4)
    def test_ipv4_keys_apart(self, a: ipaddress.IPv4Address, b: ipaddress.IPv4Address) -> None:
        self.assertEqual(address_key(a) == address_key(b), a == b)


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        buckets = TokenBuckets(Budget(rate=2.0, burst=3), capacity=10)
        self.assertEqual([buckets.take("a", 0.0) for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertAlmostEqual(buckets.take("a", 0.0), 0.5)
        # Other addresses have their own buckets.
        self.assertEqual(buckets.take("b", 0.0), 0.0)
        self.assertAlmostEqual(buckets.take("a", 0.25), 0.25)
        self.assertEqual(buckets.take("a", 0.5), 0.0)
        self.assertGreater(buckets.take("a", 0.5), 0.0)

    def test_unlimited(self) -> None:
        buckets = TokenBuckets(Budget(rate=0.0, burst=1), capacity=10)
        self.assertEqual([buckets.take("a", 0.0) for _ in range(100)], [0.0] * 100)
        self.assertEqual(len(buckets), 0)

    def test_clock_step_back(self) -> None:
        """A clock that steps back adds no tokens (and takes none)."""
        buckets = TokenBuckets(Budget(rate=1.0, burst=1), capacity=10)
        self.assertEqual(buckets.take("a", 100.0), 0.0)
        self.assertAlmostEqual(buckets.take("a", 50.0), 1.0)

    def test_retry_after_header(self) -> None:
        self.assertEqual(retry_after_header(0.01), b"1")
        self.assertEqual(retry_after_header(1.0), b"1")
        self.assertEqual(retry_after_header(1.2), b"2")

    def test_memory_bound(self) -> None:
        """
        However many addresses, at most C{capacity} buckets; past it, new
        addresses share the overflow bucket while no bucket is full again,
        and take the place of full ones once they are.
        """
        buckets = TokenBuckets(Budget(rate=1.0, burst=1), capacity=100)
        for n in range(10_000):
            buckets.take(f"10.0.{n >> 8}.{n & 255}", 0.0)
            self.assertLessEqual(len(buckets), 100)
        # The first 100 kept their (empty) buckets; the others shared one.
        self.assertIn("10.0.0.0", buckets)
        self.assertNotIn("10.0.39.15", buckets)
        self.assertGreater(buckets.take("10.0.0.0", 0.0), 0.0)
        self.assertGreater(buckets.take("10.0.39.15", 0.0), 0.0)
        # A second later every bucket is full again: a new address gets its own.
        self.assertEqual(buckets.take("10.0.39.15", 1.0), 0.0)
        self.assertIn("10.0.39.15", buckets)
        self.assertLessEqual(len(buckets), 100)

    def test_no_reset_by_other_addresses(self) -> None:
        """
        A client over its budget stays over it however many other addresses
        send (the table forgets no bucket that is not full): the least
        recently used one is not forgotten to make room.
        """
        buckets = TokenBuckets(Budget(rate=0.01, burst=2), capacity=8)
        spent = [buckets.take("2001:db8:1:1::/64", 0.0) for _ in range(3)]
        self.assertEqual(spent[:2], [0.0, 0.0])
        self.assertGreater(spent[2], 0.0)
        for n in range(2, 10_000):
            buckets.take(f"2001:db8:1:{n:x}::/64", 0.0)
        self.assertGreater(buckets.take("2001:db8:1:1::/64", 0.0), 0.0)
        # The overflow bucket is one more shared key: spent after its burst.
        self.assertGreater(buckets.take("2001:db8:2::/64", 0.0), 0.0)

    @settings(max_examples=300, deadline=None)
    @given(
        budgets,
        st.integers(min_value=1, max_value=4),
        st.lists(
            st.tuples(st.integers(0, 7), st.floats(min_value=0.0, max_value=3.0)), max_size=80
        ),
    )
    def test_bounded_table_is_unbounded_per_key(
        self, budget: Budget, capacity: int, steps: list[tuple[int, float]]
    ) -> None:
        """
        Whatever other keys do, each key (the overflow bucket as one more)
        is answered exactly as by a table that never forgets: so a key's
        admitted requests never exceed C{burst + rate * elapsed}.
        """
        buckets = TokenBuckets(budget, capacity=capacity)
        reference = TokenBuckets(budget, capacity=1_000)
        admitted: dict[str, int] = {}
        first: dict[str, float] = {}
        now = 0.0
        for key_number, gap in steps:
            now += gap
            key = str(key_number)
            wait = buckets.take(key, now)
            self.assertLessEqual(len(buckets), capacity)
            charged = key if key in buckets else "overflow"
            self.assertEqual(wait, reference.take(charged, now))
            first.setdefault(charged, now)
            admitted[charged] = admitted.get(charged, 0) + (wait == 0.0)
            allowed = budget.burst + budget.rate * (now - first[charged]) + 1e-6
            self.assertLessEqual(admitted[charged], allowed)

    @settings(max_examples=200, deadline=None)
    @given(budgets, st.lists(st.floats(min_value=0.0, max_value=5.0), max_size=60))
    def test_never_more_than_burst_plus_rate(self, budget: Budget, gaps: list[float]) -> None:
        """Over any run, at most C{burst + rate * elapsed} requests pass."""
        buckets = TokenBuckets(budget, capacity=4)
        now = 0.0
        passed = 0
        for gap in gaps:
            now += gap
            if buckets.take("k", now) == 0.0:
                passed += 1
            self.assertLessEqual(passed, budget.burst + budget.rate * now + 1e-6)

    @settings(max_examples=200, deadline=None)
    @given(budgets, st.integers(min_value=0, max_value=300))
    def test_wait_is_enough(self, budget: Budget, spent: int) -> None:
        """After the wait it says, a refused request passes; the burst always passes first."""
        buckets = TokenBuckets(budget, capacity=4)
        results = [buckets.take("k", 0.0) for _ in range(spent)]
        self.assertEqual(results[: budget.burst], [0.0] * min(spent, budget.burst))
        wait = buckets.take("k", 0.0)
        if spent < budget.burst:
            self.assertEqual(wait, 0.0)
            return
        self.assertGreater(wait, 0.0)
        self.assertEqual(buckets.take("k", wait * (1 + 1e-9) + 1e-9), 0.0)

    @given(st.integers(min_value=1, max_value=50), st.lists(st.integers(0, 200), max_size=300))
    def test_bounded(self, capacity: int, keys: list[int]) -> None:
        buckets = TokenBuckets(Budget(rate=1.0, burst=2), capacity=capacity)
        for key in keys:
            buckets.take(str(key), 0.0)
            self.assertLessEqual(len(buckets), capacity)


class ConnectionCountsTests(SynchronousTestCase):
    def test_caps(self) -> None:
        counts = ConnectionCounts(per_address=2, total=3)
        self.assertIsNone(counts.enter("a"))
        self.assertIsNone(counts.enter("a"))
        self.assertEqual(counts.enter("a"), "connections_per_address")
        self.assertIsNone(counts.enter(None))  # a trusted proxy: the total only
        self.assertEqual(counts.enter("b"), "connections_total")
        counts.leave("a")
        self.assertIsNone(counts.enter("b"))
        self.assertEqual((counts.open, counts.counts), (3, {"a": 1, "b": 1}))

    @given(st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c", None]))))
    def test_invariants(self, steps: list[tuple[bool, str | None]]) -> None:
        """Counts never pass their caps and return to nothing once all leave."""
        counts = ConnectionCounts(per_address=2, total=4)
        held: list[str | None] = []
        for enter, key in steps:
            if enter:
                if counts.enter(key) is None:
                    held.append(key)
            elif key in held:
                held.remove(key)
                counts.leave(key)
            self.assertEqual(counts.open, len(held))
            self.assertLessEqual(counts.open, 4)
            self.assertTrue(all(n <= 2 for n in counts.counts.values()))
        for key in held:
            counts.leave(key)
        self.assertEqual((counts.open, counts.counts), (0, {}))


class ThrottleTests(SynchronousTestCase):
    def test_once_per_interval_per_key(self) -> None:
        throttle = Throttle(60.0, capacity=2)
        self.assertEqual(
            [throttle.due("a", 0.0), throttle.due("a", 59.0), throttle.due("b", 59.0)],
            [True, False, True],
        )
        self.assertTrue(throttle.due("a", 60.0))
        # Bounded: a third key pushes out the least recently due one ("b").
        self.assertTrue(throttle.due("c", 61.0))
        self.assertTrue(throttle.due("b", 62.0))
        self.assertFalse(throttle.due("c", 62.0))
