"""
A tunnel connection closes at its connector certificate's notAfter: the real
service and a real connector on loopback TLS, with a client certificate
valid for a few seconds.  Each end does it alone (the other end's watch is
stopped), so a connector that never closes its own connection is still cut
off by the service, and a service that forgets is still left by the
connector.
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
from tests import deployment
from tests.test_integration import _wait_until

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


class CertificateExpiryTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def expire_with_request_in_flight(self, keep: str) -> Any:
        """
        One connector whose certificate expires in L{LIFETIME} seconds, a
        request in flight across its notAfter, and only the C{keep} end
        ("service" or "connector") watching the certificate.
        """
        issue = pki.issue_connector_certificate

        def issue_short(ca: pki.KeyPair, connector_id: str, group: str) -> pki.KeyPair:
            return short_lived(ca, issue(ca, connector_id, group), LIFETIME)

        self.patch(pki, "issue_connector_certificate", issue_short)
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
        return d, connector

    def test_service_closes_expired_connector(self) -> Any:
        """
        The connector keeps its expired connection open: the service takes
        no new request on it and closes it once its request is done.
        """
        return self.expire_with_request_in_flight("service")

    @inlineCallbacks
    def test_connector_closes_at_its_expiry_and_renewal_replaces(self) -> Any:
        """
        The service does not watch: the connector drains its connection at
        its certificate's notAfter; once a renewed certificate is reloaded,
        the next connection uses it and serves again.
        """
        d, connector = yield self.expire_with_request_in_flight("connector")
        renewed = pki.issue_connector_certificate(d.ca, "connector-1", "default")
        d._write("connector-1/connector.pem", renewed.cert_pem)
        d._write("connector-1/connector.key", renewed.key_pem)
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
        issue = pki.issue_connector_certificate

        def issue_short(ca: pki.KeyPair, connector_id: str, group: str) -> pki.KeyPair:
            return short_lived(ca, issue(ca, connector_id, group), LIFETIME)

        self.patch(pki, "issue_connector_certificate", issue_short)
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
