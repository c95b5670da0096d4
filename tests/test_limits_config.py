"""
C{[limits]} in C{service.toml}: the abuse limits, the data-path limits moved
from C{[service]} (still accepted there, not in both), the HTTP/2 frame
budgets; and the queue cap as L{appproxy.tunnel.queue} applies it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appproxy.config import ConfigError, parse_service_config
from appproxy.config.model import ClientLimits, LimitsConfig, ServiceConfig
from appproxy.frontend.limits import ANONYMOUS, SIGNIN, RequestLimiter
from appproxy.observe.metrics import REGISTRY
from appproxy.tunnel.queue import ConnectorGroups, NoCapacity
from tests.test_config import ConfigTestCase
from tests.test_queue import job


def hits(limit: str) -> float:
    return REGISTRY.get_sample_value("appproxy_limit_hits_total", {"limit": limit}) or 0.0


class LimitsConfigTests(ConfigTestCase):
    def config(self, limits: dict[str, Any] | None = None, **service: Any) -> ServiceConfig:
        data = self.service_data()
        data["service"].update(service)
        if limits is not None:
            data["limits"] = limits
        return parse_service_config(data, self.service_path)

    def test_defaults(self) -> None:
        config = self.config()
        self.assertEqual(config.limits, LimitsConfig())
        self.assertEqual(config.client_limits, ClientLimits())
        self.assertEqual(self.config({}).limits, LimitsConfig())

    def test_set(self) -> None:
        config = self.config(
            {
                "anonymous_rate": 0,
                "anonymous_burst": 7,
                "signin_rate": 0.5,
                "signin_burst": 3,
                "signed_in_rate": 100,
                "signed_in_burst": 9,
                "tracked_addresses": 1000,
                "connections_per_address": 4,
                "connections_total": 40,
                "queued_per_group": 12,
                "client_header_timeout": 5,
                "client_body_min_rate": 0,
                "client_header_connections_per_address": 3,
                "h2_empty_data_burst": 20,
                "h2_empty_data_rate": 2,
                "h2_reset_burst": 50,
                "h2_reset_rate": 5,
            }
        )
        self.assertEqual(
            config.limits,
            LimitsConfig(
                anonymous_rate=0.0,
                anonymous_burst=7,
                signin_rate=0.5,
                signin_burst=3,
                signed_in_rate=100.0,
                signed_in_burst=9,
                tracked_addresses=1000,
                connections_per_address=4,
                connections_total=40,
                queued_per_group=12,
            ),
        )
        self.assertEqual(
            config.client_limits,
            ClientLimits(
                header_timeout=5.0,
                body_min_rate=0,
                header_connections_per_address=3,
                h2_empty_data_burst=20,
                h2_empty_data_rate=2.0,
                h2_reset_burst=50,
                h2_reset_rate=5.0,
            ),
        )

    def test_old_keys_accepted(self) -> None:
        """The data-path keys of [service] still work, beside a [limits] without them."""
        config = self.config(
            {"anonymous_burst": 2}, client_header_timeout=7, client_body_min_rate=9
        )
        self.assertEqual(config.client_limits.header_timeout, 7.0)
        self.assertEqual(config.client_limits.body_min_rate, 9)
        self.assertEqual(config.limits.anonymous_burst, 2)
        mixed = self.config({"client_body_min_rate": 11}, client_header_timeout=7)
        self.assertEqual(
            (mixed.client_limits.header_timeout, mixed.client_limits.body_min_rate), (7.0, 11)
        )

    def test_both_refused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.config({"client_header_timeout": 5}, client_header_timeout=7)
        self.assertEqual(caught.exception.key, "limits.client_header_timeout")
        self.assertIn("also given as service.client_header_timeout", caught.exception.problem)

    def test_bad(self) -> None:
        for key, value, problem in [
            ("anonymous_rate", -1, "must be from 0 (no limit) to 1000000, not -1"),
            ("signin_rate", "fast", "must be a number, not string"),
            ("signed_in_burst", 0, "must be from 1 to 1000000, not 0"),
            ("tracked_addresses", 0, "must be from 1 to 10000000, not 0"),
            ("connections_total", 0, "must be from 1 to 10000000, not 0"),
            ("queued_per_group", 0, "must be from 1 to 1000000, not 0"),
            ("h2_empty_data_rate", 0, "must be more than 0 and at most 1e+06, not 0"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.config({key: value})
            self.assertEqual(caught.exception.key, f"limits.{key}")
            self.assertEqual(caught.exception.problem, problem)

    def test_unknown_key(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.config({"anonymous_rat": 1})
        self.assertEqual(caught.exception.key, "limits.anonymous_rat")


class QueueCapTests(SynchronousTestCase):
    def test_backlog_from_limits(self) -> None:
        """C{queued_per_group}: past it, a job is refused at once (and counted)."""
        groups = ConnectorGroups(Clock(), 10.0, 2)
        queue = groups["default"]
        for _ in range(2):
            queue.put(job(), lambda job: None)
        before = hits("queued_per_group")
        self.assertRaises(NoCapacity, queue.put, job(), lambda job: None)
        self.assertEqual(hits("queued_per_group"), before + 1)
        # On reload, every queue (and new ones) take the new cap.
        groups.set_backlog(3)
        queue.put(job(), lambda job: None)
        self.assertEqual(groups["other"].backlog, 3)
        self.assertEqual(groups.upgrade_queue("default").backlog, 3)


class RequestLimiterTests(SynchronousTestCase):
    def test_reconfigure_keeps_buckets(self) -> None:
        limiter = RequestLimiter(LimitsConfig(anonymous_rate=1.0, anonymous_burst=1))
        address = ipaddress.ip_address("192.0.2.1")
        before = hits(ANONYMOUS)
        self.assertEqual(limiter.take(ANONYMOUS, address, 0.0), 0.0)
        self.assertEqual(limiter.take(ANONYMOUS, address, 0.0), 1.0)
        self.assertEqual(hits(ANONYMOUS), before + 1)
        limiter.configure(LimitsConfig(anonymous_rate=4.0, anonymous_burst=1))
        self.assertEqual(limiter.take(ANONYMOUS, address, 0.0), 0.25)
        self.assertEqual(limiter.tracked(ANONYMOUS), 1)
        retry, answer = limiter.answer(ANONYMOUS, 0.25, "rid", 0.0, b"application/json")
        self.assertEqual((retry, answer.status), (b"1", 429))
        self.assertIn(b"anonymous_rate", answer.body)

    def test_login_budget(self) -> None:
        """
        The sign-in endpoints are charged to C{signin}; the service's own
        back-channel calls to the built-in provider (from C{provider_address})
        to nothing.
        """
        limiter = RequestLimiter()
        limiter.configure(LimitsConfig(), "127.0.0.1:8443")
        self.assertEqual(limiter.login_budget(b"/token", False, "192.0.2.1"), SIGNIN)
        self.assertIsNone(limiter.login_budget(b"/token", False, "127.0.0.1"))
        self.assertIsNone(limiter.login_budget(b"/jwks", False, "::ffff:127.0.0.1"))
        self.assertEqual(limiter.login_budget(b"/authorize", False, "127.0.0.1"), SIGNIN)
        self.assertEqual(limiter.login_budget(b"/.appproxy/callback", True, "127.0.0.1"), SIGNIN)
        self.assertEqual(limiter.login_budget(b"/jwks", False, "192.0.2.1"), ANONYMOUS)
        for address, peer in [("[2001:db8::1]:443", "2001:db8::1"), ("2001:db8::1", "2001:db8::1")]:
            limiter.configure(LimitsConfig(), address)
            self.assertIsNone(limiter.login_budget(b"/token", False, peer))
        limiter.configure(LimitsConfig(), "login.example.com:443")
        self.assertEqual(limiter.login_budget(b"/token", False, "127.0.0.1"), SIGNIN)
