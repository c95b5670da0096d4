"""
Prometheus metrics (C{[metrics] listen}): the configuration, and a real
service scraped over plain HTTP on loopback while real TLS traffic, tunnel
connections, sign-ins and reloads move its figures.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, cast

import treq
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from appproxy.cli.main import main
from appproxy.config import ConfigError, load_service_config, parse_service_config
from tests.deployment import DOMAIN, Deployment, h2_exchange
from tests.signin_deployment import start_builtin
from tests.test_config import ConfigTestCase
from tests.test_daemons import free_ports
from tests.websocket_deployment import WebSocketDaemons, in_thread
from tests.websocket_deployment import start as start_websockets

METRICS_TOML = '\n[metrics]\nlisten = "tcp:0:interface=127.0.0.1"\n'

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when it is not there (a counter not yet touched)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def metrics_url(service: Any, path: str = "/metrics") -> str:
    assert service.metrics.port is not None
    port = cast(IPv4Address, service.metrics.port.getHost()).port
    return f"http://127.0.0.1:{port}{path}"


def _pool() -> HTTPConnectionPool:
    """No connection kept: a test's reactor ends clean."""
    return HTTPConnectionPool(reactor, persistent=False)


def scrape(service: Any) -> Any:
    """GET /metrics from an in-process service's metrics listener, parsed."""
    return scrape_url(metrics_url(service))


@inlineCallbacks
def scrape_url(url: str) -> Any:
    """GET /metrics, parsed."""
    response = yield treq.get(url, timeout=10, pool=_pool())
    assert response.code == 200, response.code
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    return parse((yield response.text("utf-8")))


class MetricsConfigTests(ConfigTestCase):
    """C{[metrics]} in service.toml."""

    def parse_metrics(self, metrics: dict[str, Any] | None) -> Any:
        data = self.service_data()
        if metrics is not None:
            data["metrics"] = metrics
        return parse_service_config(data, self.service_path)

    def test_off_by_default(self) -> None:
        self.assertIsNone(self.parse_metrics(None).metrics.listen)
        self.assertIsNone(self.parse_metrics({}).metrics.listen)

    def test_listen(self) -> None:
        config = self.parse_metrics({"listen": "tcp:9464:interface=127.0.0.1"})
        self.assertEqual(config.metrics.listen, "tcp:9464:interface=127.0.0.1")

    def test_not_the_public_or_tunnel_listener(self) -> None:
        """The public listener is tcp:443, the tunnel's tcp:8444 (all interfaces)."""
        for listen, other in [
            ("tcp:443", "service.listen"),
            ("tcp:443:interface=127.0.0.1", "service.listen"),
            ("tcp:0443:interface=127.0.0.1", "service.listen"),
            ("tcp:port=8444:interface=127.0.0.1", "tunnel.listen"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.parse_metrics({"listen": listen})
            self.assertIn("metrics.listen", str(caught.exception))
            self.assertIn(other, str(caught.exception))

    def test_other_port_or_free_port(self) -> None:
        for listen in ("tcp:9464", "tcp:0", "unix:/run/appproxy-metrics.sock"):
            self.assertEqual(self.parse_metrics({"listen": listen}).metrics.listen, listen)

    def test_bad_endpoint_and_unknown_key(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.parse_metrics({"listen": "ssl:9464"})
        self.assertIn("metrics.listen", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            self.parse_metrics({"listen": "tcp:9464", "path": "/m"})
        self.assertIn("metrics.path", str(caught.exception))


class InitTests(TestCase):
    def test_init_writes_the_metrics_listener(self) -> None:
        """appproxy init turns metrics on, on loopback port 9464; --metrics-listen=none: off."""
        for extra, expected in [
            ((), "tcp:9464:interface=127.0.0.1"),
            (("--metrics-listen=none",), None),
        ]:
            directory = Path(self.mktemp()).absolute()
            argv = ["init", "--state-dir", str(directory), "--domain", "example.test", *extra]
            with redirect_stdout(io.StringIO()):
                self.assertEqual(main(argv), 0)
            config = load_service_config(directory / "service.toml")
            self.assertEqual(config.metrics.listen, expected)


@inlineCallbacks
def start(testcase: TestCase) -> Any:
    """The real service with a metrics listener, one connector of two connections."""
    d = Deployment(
        testcase,
        [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}],
        5.0,
        extra_toml=METRICS_TOML,
    )
    d.start_service()
    d.start_connector(connections=2)
    yield d.wait_for_connections(2)
    return d


class ServiceMetricsTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_traffic_moves_the_figures(self) -> Any:
        """
        Requests over real TLS count by app and status class, with their
        duration, bytes and queue wait; the tunnel's figures are per connector.
        """
        d = yield start(self)
        before = yield scrape(d.service)
        client = d.client()
        for _ in range(3):
            response = yield client.get(d.url("web", "/bytes?n=1000"))
            self.assertEqual(len((yield response.content())), 1000)
        response = yield client.post(d.url("web", "/echo"), data=b"y" * 500)
        yield response.content()
        response = yield client.get(f"https://nowhere.{DOMAIN}/")
        self.assertEqual(response.code, 404)
        yield response.content()
        # HTTP/2 too: a GET of 2000 bytes and a POST of 700.
        answers = yield h2_exchange(
            d, [("GET", "/bytes?n=2000", b""), ("POST", "/echo", b"z" * 700)]
        )
        self.assertEqual([status for status, _ in answers], [200, 200])
        after = yield scrape(d.service)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(moved("appproxy_requests_total", app="web", status_class="2xx"), 6)
        self.assertEqual(moved("appproxy_requests_total", app="-", status_class="4xx"), 1)
        self.assertEqual(moved("appproxy_request_duration_seconds_count", app="web"), 6)
        self.assertGreaterEqual(
            moved("appproxy_request_bytes_total", app="web", direction="out"), 5000
        )
        self.assertEqual(moved("appproxy_request_bytes_total", app="web", direction="in"), 1200)
        self.assertEqual(moved("appproxy_queue_wait_seconds_count", group="default"), 6)
        self.assertEqual(
            value(after, "appproxy_tunnel_connections", connector="connector-1", group="default"),
            2,
        )
        self.assertEqual(value(after, "appproxy_queue_depth", group="default", queue="requests"), 0)
        pem = (d.root / "connector-1" / "connector.pem").read_bytes()
        not_after = x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()
        self.assertEqual(
            value(
                after,
                "appproxy_connector_certificate_expiry_timestamp_seconds",
                connector="connector-1",
            ),
            not_after,
        )

    @inlineCallbacks
    def test_streams_in_flight(self) -> Any:
        """A request the app has not answered yet is a stream of its connector."""
        d = yield start(self)
        pending = d.client().get(d.url("web", "/slow?delay=2"))
        for _ in range(500):
            if d.backend.pending:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        during = yield scrape(d.service)
        self.assertEqual(
            value(during, "appproxy_tunnel_streams", connector="connector-1", group="default"), 1
        )
        response = yield pending
        yield response.content()
        after = yield scrape(d.service)
        self.assertEqual(
            value(after, "appproxy_tunnel_streams", connector="connector-1", group="default"), 0
        )

    @inlineCallbacks
    def test_queue_depth_and_wait(self) -> Any:
        """
        A connector with room for one request: a second one waits in the
        group's queue (its depth is 1) until the first is answered, and its
        wait is in the histogram.
        """
        d = Deployment(
            self,
            [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}],
            10.0,
            extra_toml=METRICS_TOML,
        )
        d.start_service()
        d.start_connector(connections=1, capacity=1)
        yield d.wait_for_connections(1)
        before = yield scrape(d.service)
        client = d.client()
        first = client.get(d.url("web", "/slow?delay=1"))
        for _ in range(500):
            if d.backend.pending:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        second = client.get(d.url("web", "/second"))
        during = before
        for _ in range(500):
            during = yield scrape(d.service)
            if value(during, "appproxy_queue_depth", group="default", queue="requests"):
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(
            value(during, "appproxy_queue_depth", group="default", queue="requests"), 1
        )
        for pending in (first, second):
            response = yield pending
            self.assertEqual(response.code, 200)
            yield response.content()
        after = yield scrape(d.service)
        self.assertEqual(value(after, "appproxy_queue_depth", group="default", queue="requests"), 0)
        waited = value(after, "appproxy_queue_wait_seconds_sum", group="default") - value(
            before, "appproxy_queue_wait_seconds_sum", group="default"
        )
        self.assertGreater(waited, 0.1)

    @inlineCallbacks
    def test_not_on_the_public_listener(self) -> Any:
        """
        /metrics on the public listener is an app's path (or a 404), never
        the exposition; the metrics listener serves nothing but /metrics.
        """
        d = yield start(self)
        client = d.client()
        response = yield client.get(d.url("web", "/metrics"))
        body = yield response.text("utf-8")
        self.assertEqual(response.code, 200)
        self.assertIn('"uri": "/metrics"', body)
        self.assertNotIn("appproxy_requests_total", body)
        for host in (f"nowhere.{DOMAIN}", DOMAIN):
            response = yield client.get(f"https://{host}/metrics")
            body = yield response.text("utf-8")
            self.assertEqual(response.code, 404)
            self.assertNotIn("appproxy_", body)
        response = yield treq.get(metrics_url(d.service, "/"), timeout=10, pool=_pool())
        self.assertEqual(response.code, 404)
        yield response.content()
        response = yield treq.post(metrics_url(d.service), b"", timeout=10, pool=_pool())
        self.assertEqual(response.code, 405)
        yield response.content()

    @inlineCallbacks
    def test_reloads(self) -> Any:
        """A reload counts as success or failure; the last success's time is a gauge."""
        d = yield start(self)
        service = d.service
        assert service is not None
        before = yield scrape(service)
        started = value(before, "appproxy_config_last_reload_success_timestamp_seconds")
        self.assertGreater(started, 0)
        yield deferLater(reactor, 0.05, lambda: None)
        service.reload()
        config = service.config.path
        good = config.read_bytes()
        config.write_bytes(good + b"\n[nonsense]\n")
        service.reload()
        config.write_bytes(good)
        after = yield scrape(service)
        for result in ("success", "failure"):
            self.assertEqual(
                value(after, "appproxy_config_reloads_total", result=result)
                - value(before, "appproxy_config_reloads_total", result=result),
                1,
            )
        self.assertGreater(
            value(after, "appproxy_config_last_reload_success_timestamp_seconds"), started
        )


class SignInMetricsTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_sign_ins_and_policy_decisions(self) -> Any:
        """A refused password, then a sign-in, then the app: counted by result and reason."""
        d = yield start_builtin(self, extra_toml=METRICS_TOML)
        before = yield scrape(d.service)
        browser = d.browser()
        page = yield browser.go(f"https://web.{DOMAIN}/")
        page = yield browser.submit(page, {"username": "alice", "password": "wrong password"})
        page = yield browser.submit(page, {"username": "alice", "password": "correct horse"})
        self.assertEqual(page.status, 200, page.text[:300])
        page = yield browser.go(f"https://web.{DOMAIN}/again")
        self.assertEqual(page.status, 200)
        after = yield scrape(d.service)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(moved("appproxy_sign_ins_total", result="failure", reason="password"), 1)
        self.assertEqual(moved("appproxy_sign_ins_total", result="success", reason="none"), 1)
        self.assertGreaterEqual(
            moved("appproxy_policy_decisions_total", app="web", decision="allow"), 2
        )
        self.assertEqual(moved("appproxy_policy_decisions_total", app="web", decision="block"), 0)


class WebSocketMetricsTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_open_websockets_and_their_bytes(self) -> Any:
        """
        The real daemons (twistd): an open WebSocket is in the app's gauge;
        once it ends it counts as a 1xx request with its bytes both ways.
        """
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}/metrics"
        d: WebSocketDaemons = yield start_websockets(self, connections=1, metrics=port)
        cookie = yield d.sign_in("alice")
        before = yield scrape_url(url)
        self.assertEqual(value(before, "appproxy_websockets_open", app="web"), 0)
        ws = yield in_thread(d.open, "/echo", cookie, compression=None)
        message = "m" * 1000
        yield in_thread(ws.send, message)
        self.assertEqual((yield in_thread(ws.recv, 10)), message)
        during = yield scrape_url(url)
        self.assertEqual(value(during, "appproxy_websockets_open", app="web"), 1)
        yield in_thread(ws.close)
        after = during
        for _ in range(300):
            after = yield scrape_url(url)
            if value(after, "appproxy_websockets_open", app="web") == 0:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(value(after, "appproxy_websockets_open", app="web"), 0)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(moved("appproxy_requests_total", app="web", status_class="1xx"), 1)
        self.assertGreaterEqual(
            moved("appproxy_request_bytes_total", app="web", direction="in"), 1000
        )
        self.assertGreaterEqual(
            moved("appproxy_request_bytes_total", app="web", direction="out"), 1000
        )
