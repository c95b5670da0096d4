"""
Tests for L{appproxy.daemon.pki}.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from appproxy.daemon import pki

# Key generation is the slow part; one CA serves the whole module.
_CA = pki.generate_ca("appproxy test CA")


def _load(pair: pki.KeyPair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert_pem)


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


class CATests(SynchronousTestCase):
    def test_extensions(self) -> None:
        cert = _load(_CA)
        constraints = _ext(cert, x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertTrue(constraints.value.ca)
        self.assertEqual(constraints.value.path_length, 0)
        usage = _ext(cert, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_cert_sign)
        self.assertTrue(usage.value.crl_sign)
        self.assertFalse(usage.value.digital_signature)
        ski = _ext(cert, x509.SubjectKeyIdentifier).value
        self.assertEqual(ski, x509.SubjectKeyIdentifier.from_public_key(cert.public_key()))
        self.assertEqual(
            cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "appproxy test CA",
        )
        self.assertEqual(cert.subject, cert.issuer)
        cert.verify_directly_issued_by(cert)

    def test_key(self) -> None:
        self.assertIn(b"-----BEGIN PRIVATE KEY-----", _CA.key_pem)  # PKCS#8, unencrypted
        key = serialization.load_pem_private_key(_CA.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(key.curve, ec.SECP256R1)
        self.assertEqual(key.public_key(), _load(_CA).public_key())

    def test_validity(self) -> None:
        cert = _load(_CA)
        now = datetime.datetime.now(datetime.UTC)
        skew = now - cert.not_valid_before_utc
        self.assertTrue(datetime.timedelta(minutes=4) < skew < datetime.timedelta(minutes=6), skew)
        lifetime = cert.not_valid_after_utc - now
        self.assertTrue(
            datetime.timedelta(days=3649) < lifetime <= datetime.timedelta(days=3650), lifetime
        )

    def test_random_serials(self) -> None:
        other = pki.generate_ca("appproxy test CA")
        self.assertNotEqual(_load(_CA).serial_number, _load(other).serial_number)
        self.assertGreater(_load(_CA).serial_number.bit_length(), 64)


class ServerCertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = pki.issue_server_certificate(_CA, ["*.Example.com", "example.com"])
        self.cert = _load(self.pair)

    def test_names(self) -> None:
        san = _ext(self.cert, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["*.example.com", "example.com"])

    def test_extensions(self) -> None:
        eku = _ext(self.cert, x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertFalse(_ext(self.cert, x509.BasicConstraints).value.ca)
        aki = _ext(self.cert, x509.AuthorityKeyIdentifier).value
        ca_ski = _ext(_load(_CA), x509.SubjectKeyIdentifier).value
        self.assertEqual(aki.key_identifier, ca_ski.digest)
        self.assertTrue(_ext(self.cert, x509.KeyUsage).value.digital_signature)

    def test_leaf_only(self) -> None:
        self.assertEqual(len(x509.load_pem_x509_certificates(self.pair.cert_pem)), 1)

    def test_verifies_against_ca(self) -> None:
        self.cert.verify_directly_issued_by(_load(_CA))
        # Same name, different key: only the signature tells them apart.
        impostor = pki.generate_ca("appproxy test CA")
        with self.assertRaises(InvalidSignature):
            self.cert.verify_directly_issued_by(_load(impostor))

    def test_key_matches(self) -> None:
        key = serialization.load_pem_private_key(self.pair.key_pem, password=None)
        self.assertEqual(key.public_key(), self.cert.public_key())

    def test_lifetime_capped_by_ca(self) -> None:
        short_ca = pki.generate_ca("short", lifetime_days=30)
        cert = _load(pki.issue_server_certificate(short_ca, ["a.test"]))
        self.assertLessEqual(cert.not_valid_after_utc, _load(short_ca).not_valid_after_utc)

    def test_no_names(self) -> None:
        with self.assertRaises(ValueError):
            pki.issue_server_certificate(_CA, [])

    def test_leaf_cannot_sign(self) -> None:
        """A leaf key pair is refused as a CA."""
        with self.assertRaises(ValueError):
            pki.issue_server_certificate(self.pair, ["a.test"])

    def test_mismatched_ca_key(self) -> None:
        other = pki.generate_ca("another CA")
        with self.assertRaises(ValueError):
            pki.issue_server_certificate(
                pki.KeyPair(cert_pem=_CA.cert_pem, key_pem=other.key_pem), ["a.test"]
            )


class ConnectorCertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = pki.issue_connector_certificate(_CA, "connector-7", "finance")
        self.cert = _load(self.pair)

    def test_extensions(self) -> None:
        eku = _ext(self.cert, x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.CLIENT_AUTH])
        san = _ext(self.cert, x509.SubjectAlternativeName).value
        self.assertEqual(
            san.get_values_for_type(x509.UniformResourceIdentifier),
            ["urn:appproxy:connector:connector-7", "urn:appproxy:connector-group:finance"],
        )
        self.assertEqual(
            self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "connector-7",
        )
        self.cert.verify_directly_issued_by(_load(_CA))

    def test_identity_round_trip(self) -> None:
        self.assertEqual(
            pki.connector_identity(self.cert),
            pki.ConnectorIdentity(connector_id="connector-7", group="finance"),
        )

    def test_invalid_names(self) -> None:
        for connector_id, group in [
            ("", "g"),
            ("c", ""),
            ("c", "has space"),
            ("c", "a:b"),
            ("x" * 65, "g"),
            ("c", "g" * 65),
        ]:
            with self.assertRaises(ValueError, msg=(connector_id, group)):
                pki.issue_connector_certificate(_CA, connector_id, group)


def _custom_cert(
    names: list[x509.NameAttribute],
    sans: list[x509.GeneralName] | None,
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


class ConnectorIdentityTests(SynchronousTestCase):
    def cn(self, value: str) -> x509.NameAttribute:
        return x509.NameAttribute(NameOID.COMMON_NAME, value)

    def uri(self, group: str) -> x509.UniformResourceIdentifier:
        return x509.UniformResourceIdentifier(pki.CONNECTOR_GROUP_URI_PREFIX + group)

    def connector(self, connector_id: str) -> x509.UniformResourceIdentifier:
        return x509.UniformResourceIdentifier(pki.CONNECTOR_URI_PREFIX + connector_id)

    def test_with_connector_uri(self) -> None:
        cert = _custom_cert([self.cn("c1")], [self.connector("c1"), self.uri("g")])
        self.assertEqual(pki.connector_identity(cert), pki.ConnectorIdentity("c1", "g"))

    def test_valid(self) -> None:
        cert = _custom_cert(
            [self.cn("c1")],
            [
                x509.DNSName("ignored.test"),
                x509.UniformResourceIdentifier("urn:x:y"),
                self.uri("g"),
            ],
        )
        self.assertEqual(pki.connector_identity(cert), pki.ConnectorIdentity("c1", "g"))

    def test_rejects(self) -> None:
        cases = {
            "no common name": _custom_cert([], [self.uri("g")]),
            "two common names": _custom_cert([self.cn("a"), self.cn("b")], [self.uri("g")]),
            "no SAN": _custom_cert([self.cn("c1")], None),
            "no group URI": _custom_cert([self.cn("c1")], [x509.DNSName("c1.test")]),
            "empty group": _custom_cert([self.cn("c1")], [self.uri("")]),
            "two groups": _custom_cert([self.cn("c1")], [self.uri("a"), self.uri("b")]),
            "server certificate": _load(pki.issue_server_certificate(_CA, ["a.test"])),
            "CA certificate": _load(_CA),
            "connector URI not the CN": _custom_cert(
                [self.cn("c1")], [self.connector("c2"), self.uri("g")]
            ),
            "two connector URIs": _custom_cert(
                [self.cn("c1")], [self.connector("c1"), self.connector("c1"), self.uri("g")]
            ),
        }
        for label, cert in cases.items():
            with self.assertRaises(ValueError, msg=label):
                pki.connector_identity(cert)
