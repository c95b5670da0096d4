"""
Connector registration with one-time enrolment tokens, end to end: the
service and the connector as daemons, C{appproxy-connector register} and the
C{appproxy connectors}/C{appproxy logs audit} commands as subprocesses, over
real TLS to the tunnel listener, with the service's real state database
(L{tests.trust_deployment}).
"""

from __future__ import annotations

import os
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from appproxy.daemon.pki import CONNECTOR_GROUP_URI_PREFIX, CONNECTOR_URI_PREFIX
from appproxy.tunnel.enrolment import RegisterRequest, encode
from tests.deployment import DOMAIN
from tests.trust_deployment import WAIT, Connector, TrustDeployment, start

CONNECTOR_ID = re.compile(r"cn-[0-9a-f]{16}\Z")


def uris(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in names}


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


class EnrolmentTokenTests(TestCase):
    timeout = 120

    def check_certificate(self, d: TrustDeployment, connector: Connector, group: str) -> None:
        """What the service decides, and nothing else: id, group, clientAuth only."""
        cert = connector.certificate
        self.assertRegex(connector.id, CONNECTOR_ID)
        self.assertEqual(
            uris(cert),
            {f"{CONNECTOR_URI_PREFIX}{connector.id}", f"{CONNECTOR_GROUP_URI_PREFIX}{group}"},
        )
        self.assertEqual(eku(cert), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        ca = x509.load_pem_x509_certificate(d.ca.cert_pem)
        self.assertEqual(cert.issuer, ca.subject)
        cert.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(connector.key_pem, password=None)
        self.assertEqual(
            cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        self.assertEqual(os.stat(connector.directory / "connector.key").st_mode & 0o777, 0o600)
        self.assertEqual((connector.directory / "ca.pem").read_bytes(), d.ca.cert_pem)

    @inlineCallbacks
    def test_one_time_tokens(self) -> Any:
        """
        A one-time token registers a connector whose certificate the service
        chose (a new connector id, the token's group, clientAuth only) for the
        key made on the connector's host (0600); the connector then serves
        requests. The same token again is refused (used up), and so is an
        expired one, each with one clear line, no traceback and exit status
        1; the audit log has the registration (by the token's id) and both
        refusals with their reasons, and never a token.
        """
        d = yield start(self)
        token = yield d.token("default", "--uses", "1", "--ttl", "30m")
        connector = yield d.register_with_token("first", token=token)
        self.check_certificate(d, connector, "default")
        self.assertIn(
            f"Registered connector {connector.id} of group default on first.internal",
            d.service_process.output(),
        )

        for name, bad, reason in [
            ("again", token, "used up"),
            ("late", d.expired_token(), "expired"),
        ]:
            process = d.register(name, token=bad)
            status = yield process.ended(WAIT)
            self.assertEqual(status, (1, None), process.describe())
            self.assertIn(reason, process.output())
            self.assertNotIn("Traceback", process.output())
            self.assertFalse((d.root / name / "connector.pem").exists())

        registered = yield d.audit("register")
        self.assertEqual([e["connector_id"] for e in registered], [connector.id])
        self.assertEqual(registered[0]["actor"], f"token:{token.split('.')[1]}")
        refused = yield d.audit("register-refused")
        self.assertEqual(len(refused), 2, refused)
        self.assertIn("used up", str(refused[0]))
        self.assertIn("expired", str(refused[1]))
        everything = yield d.appproxy("logs", "audit", "--json")
        self.assertNotIn(token.split(".")[2], everything.output())

        yield d.start_connector_daemon(connector, connections=1)
        response = yield d.client().get(d.url("web", "/hello"), timeout=WAIT)
        self.assertEqual(response.code, 200)
        body = yield response.json()
        self.assertEqual(body["uri"], "/hello")

    @inlineCallbacks
    def test_csr_asking_for_more(self) -> Any:
        """
        A CSR with a weak key (RSA 1024) is refused (bad_csr, audited) and
        does not use up the token. A CSR that asks for a server certificate
        (serverAuth), a CA, another connector's id and another group in its
        subject and SANs, and a DNS name, gets what the service decides only:
        a new connector id, the token's group, clientAuth only, not a CA, no
        DNS name; only the CSR's public key is used. Without a client
        certificate, the configuration is refused.
        """
        d = yield start(self)
        token = yield d.token("default")
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        weak_csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")]))
            .sign(weak, hashes.SHA256())
        )
        request = RegisterRequest(
            token=token,
            csr=weak_csr.public_bytes(serialization.Encoding.PEM).decode(),
            group=None,
            host_name="weak.internal",
            version="0",
        )
        status, answer = yield d.api("POST", "/v1/register", encode(request))
        self.assertEqual((status, answer["error"]), (400, "bad_csr"), answer)
        refused = yield d.audit("register-refused")
        self.assertEqual(len(refused), 1, refused)
        status, answer = yield d.api("GET", "/v1/config")
        self.assertEqual((status, answer["error"]), (401, "certificate_required"), answer)

        key = ec.generate_private_key(ec.SECP256R1())
        other = "cn-0123456789abcdef"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, other)]))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(f"{CONNECTOR_URI_PREFIX}{other}"),
                        x509.UniformResourceIdentifier(f"{CONNECTOR_GROUP_URI_PREFIX}admins"),
                        x509.DNSName(f"web.{DOMAIN}"),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        request = RegisterRequest(
            token=token,
            csr=csr.public_bytes(serialization.Encoding.PEM).decode(),
            group=None,
            host_name="greedy.internal",
            version="0",
        )
        status, answer = yield d.api("POST", "/v1/register", encode(request))
        self.assertEqual(status, 201, answer)
        cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
        (cn,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        connector_id = str(cn.value)
        self.assertRegex(connector_id, CONNECTOR_ID)
        self.assertNotEqual(connector_id, other)
        self.assertEqual(answer["connector_id"], connector_id)
        self.assertEqual(answer["group"], "default")
        self.assertEqual(
            uris(cert),
            {f"{CONNECTOR_URI_PREFIX}{connector_id}", f"{CONNECTOR_GROUP_URI_PREFIX}default"},
        )
        self.assertEqual(eku(cert), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(cert.public_key(), key.public_key())
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(d.ca.cert_pem))
