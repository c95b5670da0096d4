"""
A renewal whose answer is lost, against the real service over real TLS: the
connector, left with its old certificate only, still pulls its
configuration and renews again (the unused certificate is retired); once the
new certificate is used, the old one is refused (clone-suspected).
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.python.failure import Failure

from appproxy.daemon import pki
from appproxy.state import connectors
from appproxy.tunnel.enrolment import RENEW_PATH, CertificateAnswer
from tests.test_trust_api import _Base, _events, wait_for_events
from tests.trust_harness import TUNNEL_HOST


class _Deaf(Protocol):
    """Sends a request and never reads the answer (the answer is lost)."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost.callback(None)


class LostRenewalTests(_Base):
    @inlineCallbacks
    def registered(self) -> Generator[Deferred[Any], Any, tuple[CertificateAnswer, bytes]]:
        status, answer = yield self.register(self.token())
        self.assertEqual(status, 201)
        return CertificateAnswer.from_json(answer), answer["certificate"].encode() + self.key

    def admission(self) -> connectors.Admission:
        with self.d.database() as db:
            return connectors.read_admission(db)

    @inlineCallbacks
    def renew_unheard(self, client_pem: bytes) -> Generator[Deferred[Any], Any, str]:
        """A renewal sent over raw TLS, the connection aborted once the service recorded it."""
        _, request = self.d.new_csr()
        body = json.dumps({"csr": request}).encode()
        options = optionsForClientTLS(
            TUNNEL_HOST,
            trustRoot=Certificate.loadPEM(self.d.ca.cert_pem),
            clientCertificate=PrivateCertificate.loadPEM(client_pem),
            acceptableProtocols=[b"http/1.1"],
        )
        deaf = _Deaf()
        endpoint = wrapClientTLS(
            options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.d.tunnel_port)
        )
        yield connectProtocol(endpoint, deaf)
        renewals = len(_events(self.d, "renew"))
        transport: Any = deaf.transport
        transport.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (RENEW_PATH, TUNNEL_HOST.encode(), len(body)) + body
        )
        events = yield wait_for_events(self.d, "renew", renewals + 1)
        transport.abortConnection()
        yield deaf.lost
        return str(events[-1].detail["serial"])

    @inlineCallbacks
    def test_lost_answer(self) -> Generator[Deferred[Any], Any, None]:
        issued, old_pem = yield self.registered()
        old_serial = pki.certificate_serial(issued.certificate.encode())
        lost_serial = yield self.renew_unheard(old_pem)
        self.assertEqual(self.admission().pending, {lost_serial})

        # The connector has only its old certificate: it still works.
        status, answer = yield self.d.call("GET", "/v1/config", client_pem=old_pem)
        self.assertEqual(status, 200, answer)
        _, request = self.d.new_csr()
        status, answer = yield self.d.call(
            "POST", "/v1/renew", {"csr": request}, client_pem=old_pem
        )
        self.assertEqual(status, 200, answer)
        # The unused certificate is retired; the old one still admitted.
        admission = self.admission()
        self.assertIn(lost_serial, admission.retired)
        self.assertIsNone(admission.decide(old_serial, issued.connector_id))
        self.assertEqual(_events(self.d, "clone-suspected"), [])

        # The connector gets and uses its new certificate: the old one retires.
        newkey, request = self.d.new_csr()
        status, answer = yield self.d.call(
            "POST", "/v1/renew", {"csr": request}, client_pem=old_pem
        )
        self.assertEqual(status, 200, answer)
        new_pem = CertificateAnswer.from_json(answer).certificate.encode() + newkey
        status, answer = yield self.d.call("GET", "/v1/config", client_pem=new_pem)
        self.assertEqual(status, 200, answer)
        status, answer = yield self.d.call("GET", "/v1/config", client_pem=old_pem)
        self.assertEqual((status, answer["error"]), (403, "certificate_retired"))
        [suspected] = yield wait_for_events(self.d, "clone-suspected")
        self.assertEqual(suspected.detail["serial"], old_serial)
        self.assertEqual(self.admission().pending, frozenset())
