"""
A tunnel connection closes at its connector certificate's notAfter: the real
service and a real connector on loopback TLS, with a client certificate
valid for a few seconds.  Each end does it alone (the other end's watch is
stopped), so a connector that never closes its own connection is still cut
off by the service, and a service that forgets is still left by the
connector.  Those services cannot sign (no C{[tunnel] connector_ca_key}):
the connector's renewal is refused, and it keeps trying, with backoff,
until its certificate expires.  A service that signs renews the connector's
certificate before it expires, and the connector serves on.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from appproxy.daemon import pki
from appproxy.tunnel import expiry
from appproxy.tunnel.queue import NO_CONNECTOR_GRACE
from tests import connectors_db, deployment
from tests.test_integration import _wait_until
from tests.test_tunnel_tls_failures import REPRS, _events, _text

#: How long the short-lived certificates live: time enough for the
#: connection to come up first on a loaded machine.
LIFETIME = 5.0


def short_lived(ca: pki.KeyPair, pair: pki.KeyPair, seconds: float) -> pki.KeyPair:
    """C{pair}'s certificate again, expiring C{seconds} from now."""
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds))
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    signed = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return pki.KeyPair(signed.public_bytes(serialization.Encoding.PEM), pair.key_pem)


def _not_after(cert_pem: bytes) -> float:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.timestamp()


class CertificateExpiryTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        issue = pki.issue_connector_certificate

        def issue_short(ca: pki.KeyPair, connector_id: str, group: str) -> pki.KeyPair:
            return short_lived(ca, issue(ca, connector_id, group), LIFETIME)

        # The connectors' certificates live LIFETIME seconds (and are due for
        # renewal at once: their life began minutes ago).
        self.patch(pki, "issue_connector_certificate", issue_short)
        self.events = _events(self)

    @inlineCallbacks
    def expire_with_request_in_flight(self, keep: str) -> Any:
        """
        One connector whose certificate expires in L{LIFETIME} seconds (its
        renewal refused), a request in flight across its notAfter, and only
        the C{keep} end ("service" or "connector") watching the certificate.
        """
        d = yield deployment.start(self, connectors=0)
        connector = d.start_connector(connections=1)
        yield d.wait_for_connections(1)
        assert d.service is not None
        group = d.service.groups["default"]
        [service_end] = list(d.service.tunnel_factory.protocols)
        [connector_end] = list(connector.factory.protocols)
        assert service_end.expiry is not None and connector_end._expiry is not None
        not_after = service_end.expiry.not_after
        assert not_after is not None
        self.assertEqual(not_after, connector_end._expiry.not_after)
        self.assertGreater(not_after, time.time())
        if keep == "service":
            connector_end._expiry.stop()
        else:
            service_end.expiry.stop()

        # In flight across notAfter, finishing well within EXPIRY_DRAIN.
        delay = not_after - time.time() + 1.0
        client = d.client()
        in_flight = client.get(d.url("web", f"/slow?delay={delay:.2f}"))
        yield _wait_until(lambda: d.backend.hits == 1)

        # At notAfter the connection stops taking requests.
        yield _wait_until(lambda: not any(p.ready for p in group.connections), timeout=LIFETIME + 5)
        self.assertGreaterEqual(reactor.seconds(), not_after)
        late = yield client.get(d.url("web", "/echo"))
        self.assertEqual(late.code, 503)
        yield late.content()
        self.assertGreaterEqual(reactor.seconds(), not_after + NO_CONNECTOR_GRACE - 0.5)

        # The request in flight finished, then the connection closed.
        response = yield in_flight
        self.assertEqual(response.code, 200)
        yield response.content()
        yield _wait_until(lambda: not service_end.connected and not connector_end.connected)
        self.assertEqual(d.backend.hits, 1)
        self.assertEqual(connector.factory.streams_started, 1)
        yield self.check_renewal_refused(connector)
        return d, connector

    @inlineCallbacks
    def check_renewal_refused(self, connector: Any) -> Any:
        """
        The connector tried to renew, was refused, said why once in plain
        words, tried again with backoff (not at every call) until the
        certificate expired, then said once what to run.
        """
        trust = connector.trust

        def expired() -> list[str]:
            return [
                t
                for t in _text(self.events)
                if t.startswith("Cannot renew: the connector certificate")
            ]

        yield _wait_until(lambda: bool(expired()))
        self.assertEqual(trust.renewals, 0)
        # Attempts about 1, 2, then at most 1 s apart as notAfter nears.
        self.assertGreaterEqual(trust.renew_attempts, 2)
        self.assertLessEqual(trust.renew_attempts, LIFETIME + 3)
        text = _text(self.events)
        refused = [t for t in text if t.startswith("Cannot renew this connector's certificate")]
        self.assertEqual([t for t in refused + expired() if REPRS.search(t)], [])
        self.assertEqual(len(refused), 1, refused)
        self.assertIn("503 registration_disabled", refused[0])
        self.assertIn("connector_ca_key", refused[0])
        self.assertIn("the certificate expires at", refused[0])
        told = expired()
        self.assertEqual(len(told), 1, told)
        self.assertIn("appproxy connectors token create --group default", told[0])

    def test_service_closes_expired_connector(self) -> Any:
        """
        The connector keeps its expired connection open: the service takes
        no new request on it and closes it once its request is done.
        """
        return self.expire_with_request_in_flight("service")

    @inlineCallbacks
    def test_connector_renews_before_expiry_and_serves_on(self) -> Any:
        """
        A service that signs: the connector renews its certificate before it
        expires (before it dials); the certificate on disk and its tunnel
        connections are the new one's, and requests are served past the old
        one's notAfter, one in flight across it included.
        """
        d = yield deployment.start(self, connectors=0, connector_ca_key=True)
        connector = d.start_connector(connections=1)
        old = (d.root / "connector-1" / "connector.pem").read_bytes()
        old_not_after = _not_after(old)
        yield d.wait_for_connections(1)
        self.assertEqual(connector.trust.renewals, 1)
        self.assertLess(time.time(), old_not_after)
        new = (d.root / "connector-1" / "connector.pem").read_bytes()
        self.assertNotEqual(new, old)
        self.assertGreater(_not_after(new), time.time() + 3600)
        assert d.service is not None
        [service_end] = list(d.service.tunnel_factory.protocols)
        assert service_end.expiry is not None
        self.assertEqual(service_end.expiry.not_after, _not_after(new))
        client = d.client()
        delay = old_not_after - time.time() + 1.0
        in_flight = client.get(d.url("web", f"/slow?delay={delay:.2f}"))
        yield _wait_until(lambda: d.backend.hits == 1)
        yield _wait_until(lambda: time.time() > old_not_after + 0.5, timeout=LIFETIME + 5)
        response = yield client.get(d.url("web", "/echo"))
        self.assertEqual(response.code, 200)
        yield response.content()
        response = yield in_flight
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertTrue(service_end.connected)
        self.assertEqual(connector.trust.renewals, 1)
        self.assertEqual(connector.trust.renew_attempts, 1)

    @inlineCallbacks
    def test_connector_closes_at_its_expiry_and_renewal_replaces(self) -> Any:
        """
        The service does not watch, and refuses renewals: the connector
        drains its connection at its certificate's notAfter; once a renewed
        certificate is reloaded (an administrator's), the next connection
        uses it and serves again.
        """
        d, connector = yield self.expire_with_request_in_flight("connector")
        renewed = pki.issue_connector_certificate(d.ca, "connector-1", "default")
        # A renewal as the service records one: the expired serial retired.
        expired = (d.root / "connector-1" / "connector.pem").read_bytes()
        connectors_db.renew(d.state_dir, expired, renewed.cert_pem)
        d._write("connector-1/connector.pem", renewed.cert_pem)
        d._write("connector-1/connector.key", renewed.key_pem)
        # The service reads the renewal before the connector dials with it, as
        # its 1 s poll would: dialled first, the connector is refused as
        # unregistered and retries after a backoff longer than the renewed
        # certificate's own LIFETIME.
        assert d.service is not None
        yield d.service.refresh_admission()
        connector.reload()
        yield d.wait_for_connections(1, timeout=40)
        response = yield d.client().get(d.url("web", "/echo"))
        self.assertEqual(response.code, 200)
        yield response.content()

    @inlineCallbacks
    def test_drain_is_bounded(self) -> Any:
        """
        A request still running EXPIRY_DRAIN seconds after notAfter does not
        keep the expired connection: it is cut.
        """
        self.patch(expiry, "EXPIRY_DRAIN", 0.5)
        d = yield deployment.start(self, connectors=0)
        d.start_connector(connections=1)
        yield d.wait_for_connections(1)
        assert d.service is not None
        [service_end] = list(d.service.tunnel_factory.protocols)
        in_flight = d.client().get(d.url("web", "/slow?delay=30"))
        yield _wait_until(lambda: d.backend.hits == 1)
        yield _wait_until(lambda: not service_end.connected, timeout=LIFETIME + 5)
        assert service_end.expiry is not None
        not_after = service_end.expiry.not_after
        assert not_after is not None
        self.assertGreaterEqual(reactor.seconds(), not_after + 0.5)
        # Cut off before it answered, the GET was retried; no connector is left.
        response = yield in_flight
        self.assertEqual(response.code, 503)
        yield response.content()
        self.assertEqual(d.backend.hits, 1)
