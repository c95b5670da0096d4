"""
A connector whose TLS with the service fails says why, once, and backs off;
the service logs the connector certificates it refuses, with the peer's
address (L{appproxy.daemon.redial}, L{appproxy.daemon.tls_failures}),
through the real service and connector on loopback with real TLS.  The
connector's first call is its configuration pull (it dials no tunnel
before it has a configuration): that is where such failures show.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Generator
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.config import load_connector_config
from appproxy.connector import trust as connector_trust
from appproxy.daemon import connector_tap, pki, tls
from appproxy.daemon.connector_tap import ConnectorService
from appproxy.daemon.redial import DialReport, Redial, watched_factory
from appproxy.daemon.tls_failures import RefusalLog
from tests import connectors_db
from tests.deployment import DOMAIN, Deployment

PULL_FAILED = "Cannot pull the configuration from"
#: What a Python object's repr, or an exception's, looks like in a log line.
REPRS = re.compile(r" at 0x[0-9a-f]+|[A-Za-z]+Error\(|\(errors=\[")


def _events(testcase: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def _text(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


@inlineCallbacks
def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> Any:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        yield deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


@inlineCallbacks
def _start_connector(
    testcase: Any,
    d: Deployment,
    name: str,
    service_host: str = f"tunnel.{DOMAIN}",
    ca: pki.KeyPair | None = None,
    trust: pki.KeyPair | None = None,
) -> Generator[Deferred[Any], Any, ConnectorService]:
    """
    A connector of one connection; C{ca} signs its certificate, it trusts
    C{trust} for the service's.
    """
    pair = pki.issue_connector_certificate(ca or d.ca, name, "default")
    if ca is None:
        # The service's own CA signed it: recorded and admitted, so that
        # only TLS can fail.
        connectors_db.record(d.state_dir, pair.cert_pem)
        assert d.service is not None
        yield d.service.refresh_admission()
    directory = d.root / name
    directory.mkdir()
    (directory / "connector.pem").write_bytes(pair.cert_pem)
    (directory / "connector.key").write_bytes(pair.key_pem)
    (directory / "ca.pem").write_bytes((trust or d.ca).cert_pem)
    path = directory / "connector.toml"
    path.write_text(
        "\n".join(
            [
                "[connector]",
                f'service_host = "{service_host}"',
                f"service_port = {d.tunnel_port}",
                'service_address = "127.0.0.1"',
                "connections = 1",
                'ca = "ca.pem"',
                'cert = "connector.pem"',
                'key = "connector.key"',
            ]
        )
    )
    connector = ConnectorService(load_connector_config(path), reactor)
    connector.startService()
    testcase.addCleanup(lambda: connector.stopService() if connector.running else None)
    return connector


class TunnelTLSFailureTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        # Short delays, so that several retries fit in a test.
        self.patch(connector_tap, "INITIAL_RETRY_DELAY", 0.05)
        self.patch(connector_tap, "MAX_RETRY_DELAY", 10.0)
        self.patch(connector_trust, "FIRST_RETRY", 0.05)
        self.patch(connector_trust, "MAX_RETRY", 10.0)
        # A refusal log of its own: another test's refusals within the
        # minute would otherwise hold this test's back.
        self.patch(tls, "TUNNEL_REFUSALS", RefusalLog(Logger(namespace="appproxy.daemon.tls")))
        self.d = Deployment(self, [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}], 5.0)
        self.d.start_service()
        self.events = _events(self)

    def reasons(self) -> list[str]:
        """
        Why the connector's calls fail, as logged; checked to be plain words
        (no Python repr) and to dial no tunnel (it has no configuration).
        """
        text = _text(self.events)
        self.assertEqual([t for t in text if REPRS.search(t)], [])
        self.assertEqual([t for t in text if "Tunnel connection to" in t], [])
        return [t for t in text if t.startswith(PULL_FAILED)]

    @inlineCallbacks
    def test_name_mismatch(self) -> Generator[Deferred[Any], Any, None]:
        """
        A service certificate for another name: the connector says so once,
        in an operator's terms, and each retry waits longer than the last.
        """
        connector = yield _start_connector(self, self.d, "c-name", service_host=f"wrong.{DOMAIN}")
        delays = connector.trust.pull_delays
        yield _until(lambda: len(delays) >= 5, "five retries")
        delays = list(delays)[:5]
        self.assertEqual(delays, sorted(delays), delays)
        self.assertGreater(delays[4], 8 * delays[0], delays)
        self.assertEqual(connector.redials, [])
        reasons = self.reasons()
        self.assertEqual(len(reasons), 1, reasons)
        self.assertIn("certificate verify failed", reasons[0])
        self.assertIn(f"not valid for wrong.{DOMAIN}", reasons[0])
        self.assertIn("name mismatch", reasons[0])

    @inlineCallbacks
    def test_foreign_connector_certificate(self) -> Generator[Deferred[Any], Any, None]:
        """
        A connector certificate from another CA: the service logs the refusal
        with the peer's address (once, though the connector retries), and the
        connector says the service refused its certificate.
        """
        other = pki.generate_ca("another appproxy init")
        connector = yield _start_connector(self, self.d, "c-foreign", ca=other)
        delays = connector.trust.pull_delays
        yield _until(lambda: len(delays) >= 4, "four retries")
        refusals = [
            e
            for e in self.events
            if e.get("log_namespace") == "appproxy.daemon.tls"
            and "Refused a tunnel connection" in formatEvent(e)
        ]
        self.assertEqual(len(refusals), 1, [formatEvent(e) for e in refusals])
        self.assertEqual(refusals[0]["log_level"], LogLevel.warn)
        text = formatEvent(refusals[0])
        self.assertIn("from 127.0.0.1", text)
        self.assertIn("CN=c-foreign", text)
        self.assertIn("unknown CA", text)
        reasons = self.reasons()
        self.assertEqual(len(reasons), 1, reasons)
        self.assertIn("the service refused this connector's certificate", reasons[0])
        self.assertIn("unknown CA", reasons[0])
        delays = list(delays)[:4]
        self.assertEqual(delays, sorted(delays), delays)

    @inlineCallbacks
    def test_unknown_service_ca(self) -> Generator[Deferred[Any], Any, None]:
        """A service certificate from a CA the connector does not trust."""
        connector = yield _start_connector(
            self, self.d, "c-trust", trust=pki.generate_ca("elsewhere")
        )
        yield _until(lambda: len(connector.trust.pull_delays) >= 3, "three retries")
        reasons = self.reasons()
        self.assertEqual(len(reasons), 1, reasons)
        self.assertIn("certificate verify failed: the service's certificate", reasons[0])
        self.assertIn("(unknown CA)", reasons[0])
        self.assertIn("check ca in connector.toml", reasons[0])

    @inlineCallbacks
    def test_established_resets(self) -> Generator[Deferred[Any], Any, None]:
        """A tunnel that comes up resets its connection's failure count."""
        made: list[Redial] = []

        def failed_before(*args: Any) -> Redial:
            # Its connection failed five times already (it dials once it has
            # pulled its configuration, and is up at once on loopback).
            redial = Redial(*args)
            redial.failures = 5
            made.append(redial)
            return redial

        self.patch(connector_tap, "Redial", failed_before)
        connector = yield _start_connector(self, self.d, "c-good")
        yield self.d.wait_for_connections(1)
        self.assertEqual(connector.redials, made)
        yield _until(lambda: connector.redials[0].failures == 0, "the reset")


class _Recording(Protocol):
    def __init__(self, received: list[bytes]) -> None:
        self.received = received

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class RedialPolicyTests(SynchronousTestCase):
    def test_growth_cap_and_reset(self) -> None:
        for jitter in (0.0, 0.5, 0.999):
            redial = Redial(0.5, 30.0, jitter=functools.partial(float, jitter))
            delays = [redial(1) for _ in range(10)]
            self.assertEqual(delays, sorted(delays))
            self.assertAlmostEqual(delays[0], 0.5 * (0.8 + 0.4 * jitter))
            self.assertAlmostEqual(delays[-1], 30.0 * (0.8 + 0.4 * jitter))
            redial.established()
            self.assertEqual(redial(1), delays[0])

    def test_refusal_log_rate_limit(self) -> None:
        now = [0.0]
        lines: list[str] = []
        log = Logger(observer=cast(ILogObserver, lambda e: lines.append(formatEvent(e))))
        refusals = RefusalLog(log, interval=60.0, clock=lambda: now[0])
        for _ in range(3):
            refusals.refused("192.0.2.1", "has expired", "CN=c")
        refusals.refused("192.0.2.2", "has expired", "CN=c")
        now[0] = 61.0
        refusals.refused("192.0.2.1", "has expired", "CN=c")
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("2 more refusals", lines[2])

    def test_watch_leaves_the_path_once_established(self) -> None:
        """
        The watcher sees the service's preface and SETTINGS (in any pieces),
        reports the tunnel established, and from then on the tunnel's bytes
        go straight to the protocol: no layer per read.
        """
        received: list[bytes] = []
        lines: list[str] = []
        log = Logger(observer=cast(ILogObserver, lambda e: lines.append(formatEvent(e))))
        redial = Redial(0.5, 30.0)
        redial.failures = 3
        report = DialReport(log, "service:443", "service")
        report.failed("earlier")
        inner = _Recording(received)
        factory = Factory.forProtocol(lambda: inner)
        address = IPv4Address("TCP", "127.0.0.1", 443)
        protocol = watched_factory(factory, redial, report).buildProtocol(address)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        head = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        for i in range(len(head)):
            self.assertNotIn("dataReceived", vars(protocol))
            protocol.dataReceived(head[i : i + 1])
        self.assertEqual(redial.failures, 0)
        self.assertIn("established", lines[-1])
        self.assertEqual(vars(protocol)["dataReceived"], inner.dataReceived)
        protocol.dataReceived(b"more")
        self.assertEqual(b"".join(received), head + b"more")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(lines), 2, lines)  # no failure reported once established
