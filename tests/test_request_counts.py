"""
The request metrics counted outside prometheus_client per request
(L{appproxy.observe.requests}) expose exactly what incrementing the metrics
one request at a time would.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from twisted.trial.unittest import TestCase

from appproxy.observe.metrics import LATENCY_BUCKETS, REGISTRY
from appproxy.observe.requests import app_metrics


def _samples(registry: CollectorRegistry, app: str) -> dict[tuple[str, str], float]:
    """The request metrics' samples of C{app}, but C{_created}."""
    found: dict[tuple[str, str], float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.labels.get("app") == app and not sample.name.endswith("_created"):
                key = (sample.name, repr(sorted(sample.labels.items())))
                found[key] = sample.value
    return found


_names = itertools.count()

_requests = st.lists(
    st.tuples(
        st.sampled_from([101, 200, 204, 301, 404, 429, 502, 600]),
        st.one_of(st.none(), st.floats(min_value=0, max_value=100, allow_nan=False)),
        st.integers(min_value=0, max_value=10**6),
        st.integers(min_value=0, max_value=10**6),
    ),
    max_size=40,
)


class RequestCountTests(TestCase):
    @settings(max_examples=60, deadline=None)
    @given(_requests, st.lists(st.sampled_from(["allow", "block", "mfa"]), max_size=10))
    def test_same_exposition_as_direct_increments(
        self, requests: list[tuple[int, float | None, int, int]], decisions: list[str]
    ) -> None:
        """
        Counts moved into the metrics at scrape time give the same samples
        as prometheus_client's own C{inc} and C{observe} per request.
        """
        app = f"app-{next(_names)}"
        metrics = app_metrics(app)
        before = _samples(REGISTRY, app)
        expected = CollectorRegistry()
        counts = Counter("appproxy_requests", "", ("app", "status_class"), registry=expected)
        duration = Histogram(
            "appproxy_request_duration_seconds",
            "",
            ("app",),
            buckets=LATENCY_BUCKETS,
            registry=expected,
        )
        sizes = Counter("appproxy_request_bytes", "", ("app", "direction"), registry=expected)
        policy = Counter("appproxy_policy_decisions", "", ("app", "decision"), registry=expected)
        duration.labels(app)
        sizes.labels(app, "in")
        sizes.labels(app, "out")
        for status, seconds, received, sent in requests:
            metrics.finished(status, seconds, received, sent)
            klass = f"{status // 100}xx" if 100 <= status <= 599 else "other"
            counts.labels(app, klass).inc()
            if seconds is not None:
                duration.labels(app).observe(seconds)
            sizes.labels(app, "in").inc(received)
            sizes.labels(app, "out").inc(sent)
        for outcome in decisions:
            metrics.decision(outcome).inc()
            policy.labels(app, outcome).inc()
        got = _samples(REGISTRY, app)
        want = _samples(expected, app)
        self.assertEqual(set(got), set(want) | set(before))
        for key, value in want.items():
            self.assertAlmostEqual(got[key] - before.get(key, 0.0), value, places=6)
        # A second scrape moves nothing more.
        self.assertEqual(_samples(REGISTRY, app), got)

    def test_text_exposition_counts_every_request(self) -> None:
        """The text the metrics listener serves shows requests not yet moved."""
        metrics = app_metrics("exposed")
        metrics.finished(200, 0.003, 10, 20)
        metrics.finished(503, 0.2, 0, 0)
        text = generate_latest(REGISTRY).decode()
        self.assertIn('appproxy_requests_total{app="exposed",status_class="2xx"} 1.0', text)
        self.assertIn('appproxy_requests_total{app="exposed",status_class="5xx"} 1.0', text)
        bucket = 'appproxy_request_duration_seconds_bucket{app="exposed",le="0.005"} 1.0'
        self.assertIn(bucket, text)
        self.assertIn('appproxy_request_duration_seconds_count{app="exposed"} 2.0', text)
        self.assertIn('appproxy_request_bytes_total{app="exposed",direction="out"} 20.0', text)
