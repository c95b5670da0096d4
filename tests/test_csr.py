"""
Tests for L{appproxy.daemon.csr} and the connector-trust helpers of
L{appproxy.daemon.pki}: whatever a certificate request asks for, the
certificate holds only what the service decides.
"""

from __future__ import annotations

import base64
import datetime
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.daemon import csr, pki

_CA = pki.generate_ca("appproxy csr test CA")
_CA_CERT = x509.load_pem_x509_certificate(_CA.cert_pem)
# Key generation is slow: a few keys serve every example.
_KEYS: dict[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = {
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
_DAY = datetime.timedelta(days=1)
_E = TypeVar("_E", bound=x509.ExtensionType)

_EKUS = [
    ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsageOID.CLIENT_AUTH,
    ExtendedKeyUsageOID.CODE_SIGNING,
    ExtendedKeyUsageOID.EMAIL_PROTECTION,
    ExtendedKeyUsageOID.TIME_STAMPING,
    ExtendedKeyUsageOID.OCSP_SIGNING,
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
]
_NAME_OIDS = [
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.SERIAL_NUMBER,
]
_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_sans = st.one_of(
    _words.map(lambda w: x509.DNSName(f"{w}.test")),
    _words.map(lambda w: x509.UniformResourceIdentifier(pki.CONNECTOR_URI_PREFIX + w)),
    _words.map(lambda w: x509.UniformResourceIdentifier(pki.CONNECTOR_GROUP_URI_PREFIX + w)),
    _words.map(lambda w: x509.RFC822Name(f"{w}@example.test")),
)


@st.composite
def _hostile_requests(draw: st.DrawFn) -> tuple[bytes, object]:
    """A request asking for every kind of thing, and its public key."""
    key = _KEYS[draw(st.sampled_from(sorted(_KEYS)))]
    names = draw(
        st.lists(st.builds(x509.NameAttribute, st.sampled_from(_NAME_OIDS), _words), max_size=3)
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    sans = draw(st.lists(_sans, max_size=4, unique_by=str))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    ekus = draw(st.lists(st.sampled_from(_EKUS), max_size=4, unique=True))
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=draw(st.booleans()))
    if draw(st.booleans()):
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    if draw(st.booleans()):
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    request = builder.sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM), key.public_key()


def _ext(cert: x509.Certificate, kind: type[_E]) -> _E:
    return cert.extensions.get_extension_for_class(kind).value


class SignTests(SynchronousTestCase):
    @settings(max_examples=60)
    @given(
        _hostile_requests(),
        st.from_regex(r"cn-[0-9a-f]{16}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    )
    def test_only_what_the_service_decides(
        self, request: tuple[bytes, object], connector_id: str, group: str
    ) -> None:
        csr_pem, public_key = request
        cert = x509.load_pem_x509_certificate(
            csr.sign_connector_csr(_CA, csr_pem, connector_id, group, lifetime=_DAY)
        )
        self.assertEqual(cert.public_key(), public_key)
        self.assertEqual(
            cert.subject, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, connector_id)])
        )
        self.assertEqual(cert.issuer, _CA_CERT.subject)
        cert.verify_directly_issued_by(_CA_CERT)
        self.assertEqual(
            {type(e.value) for e in cert.extensions},
            {
                x509.BasicConstraints,
                x509.KeyUsage,
                x509.SubjectKeyIdentifier,
                x509.AuthorityKeyIdentifier,
                x509.SubjectAlternativeName,
                x509.ExtendedKeyUsage,
            },
        )
        san = _ext(cert, x509.SubjectAlternativeName)
        self.assertEqual(
            list(san),
            [
                x509.UniformResourceIdentifier(f"urn:appproxy:connector:{connector_id}"),
                x509.UniformResourceIdentifier(f"urn:appproxy:connector-group:{group}"),
            ],
        )
        self.assertEqual(list(_ext(cert, x509.ExtendedKeyUsage)), [ExtendedKeyUsageOID.CLIENT_AUTH])
        constraints = _ext(cert, x509.BasicConstraints)
        self.assertFalse(constraints.ca)
        usage = _ext(cert, x509.KeyUsage)
        self.assertTrue(usage.digital_signature)
        self.assertFalse(usage.key_cert_sign or usage.crl_sign or usage.content_commitment)
        self.assertFalse(usage.key_encipherment)
        self.assertEqual(pki.connector_identity(cert), pki.ConnectorIdentity(connector_id, group))

    def test_validity(self) -> None:
        now = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
        cert = x509.load_pem_x509_certificate(
            csr.sign_connector_csr(
                _CA,
                csr.make_csr(csr.new_connector_key()),
                "cn-0123456789abcdef",
                "g",
                lifetime=datetime.timedelta(days=30),
                now=now,
            )
        )
        self.assertEqual(cert.not_valid_before_utc, now - datetime.timedelta(minutes=5))
        self.assertEqual(cert.not_valid_after_utc, now + datetime.timedelta(days=30))

    def test_capped_by_ca(self) -> None:
        cert = x509.load_pem_x509_certificate(
            csr.sign_connector_csr(
                _CA,
                csr.make_csr(csr.new_connector_key()),
                "c1",
                "g",
                lifetime=datetime.timedelta(days=100_000),
            )
        )
        self.assertEqual(cert.not_valid_after_utc, _CA_CERT.not_valid_after_utc)

    def test_random_serials(self) -> None:
        request = csr.make_csr(csr.new_connector_key())
        serials = {
            pki.certificate_serial(csr.sign_connector_csr(_CA, request, "c1", "g", lifetime=_DAY))
            for _ in range(5)
        }
        self.assertEqual(len(serials), 5)

    def test_bad_arguments(self) -> None:
        request = csr.make_csr(csr.new_connector_key())
        for connector_id, group, lifetime in [
            ("has space", "g", _DAY),
            ("c1", "a:b", _DAY),
            ("c1", "g", datetime.timedelta(0)),
        ]:
            with self.assertRaises(ValueError):
                csr.sign_connector_csr(_CA, request, connector_id, group, lifetime=lifetime)
        leaf = pki.issue_connector_certificate(_CA, "c1", "g")
        with self.assertRaises(ValueError):
            csr.sign_connector_csr(leaf, request, "c2", "g", lifetime=_DAY)


def _request_for(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
) -> bytes:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


class RefusalTests(SynchronousTestCase):
    def assertRefused(self, csr_pem: bytes, words: str) -> None:
        with self.assertRaises(csr.CSRError) as caught:
            csr.sign_connector_csr(_CA, csr_pem, "c1", "g", lifetime=_DAY)
        self.assertIn(words, str(caught.exception))

    def test_weak_or_unknown_keys(self) -> None:
        self.assertRefused(_request_for(ec.generate_private_key(ec.SECP521R1())), "secp521r1")
        self.assertRefused(_request_for(ec.generate_private_key(ec.SECP256K1())), "secp256k1")
        self.assertRefused(
            _request_for(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            "1024 bits",
        )
        self.assertRefused(_request_for(ed25519.Ed25519PrivateKey.generate()), "only EC")

    def test_bad_signature(self) -> None:
        """A request whose signature does not verify is refused."""
        request = x509.load_pem_x509_csr(_request_for(_KEYS["rsa2048"]))
        der = bytearray(request.public_bytes(serialization.Encoding.DER))
        der[-1] ^= 1  # the last byte of an RSA signature (fixed length: DER unchanged)
        pem = (
            b"-----BEGIN CERTIFICATE REQUEST-----\n"
            + base64.encodebytes(bytes(der))
            + b"-----END CERTIFICATE REQUEST-----\n"
        )
        self.assertFalse(x509.load_pem_x509_csr(pem).is_signature_valid)
        self.assertRefused(pem, "signature does not verify")

    def test_not_a_request(self) -> None:
        self.assertRefused(b"", "not a PEM")
        self.assertRefused(_CA.cert_pem, "not a PEM")

    @given(st.binary(max_size=300))
    def test_garbage(self, data: bytes) -> None:
        with self.assertRaises(csr.CSRError):
            csr.sign_connector_csr(_CA, data, "c1", "g", lifetime=_DAY)


class MakeTests(SynchronousTestCase):
    def test_key(self) -> None:
        key_pem = csr.new_connector_key()
        self.assertIn(b"-----BEGIN PRIVATE KEY-----", key_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(key.curve, ec.SECP256R1)

    def test_request(self) -> None:
        key_pem = csr.new_connector_key()
        request = x509.load_pem_x509_csr(csr.make_csr(key_pem))
        self.assertTrue(request.is_signature_valid)
        self.assertEqual(
            request.subject,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appproxy-connector")]),
        )
        self.assertEqual(len(request.extensions), 0)
        key = serialization.load_pem_private_key(key_pem, password=None)
        self.assertEqual(request.public_key(), key.public_key())

    def test_not_a_key(self) -> None:
        with self.assertRaises(ValueError):
            csr.make_csr(b"nonsense")


class ConnectorIdTests(SynchronousTestCase):
    def test_shape(self) -> None:
        ids = {pki.new_connector_id() for _ in range(50)}
        self.assertEqual(len(ids), 50)
        for connector_id in ids:
            self.assertRegex(connector_id, r"\Acn-[0-9a-f]{16}\Z")


class SerialTests(SynchronousTestCase):
    def test_serial(self) -> None:
        pair = pki.issue_connector_certificate(_CA, "c1", "g")
        cert = x509.load_pem_x509_certificate(pair.cert_pem)
        self.assertEqual(pki.certificate_serial(pair.cert_pem), format(cert.serial_number, "x"))
        self.assertEqual(pki.certificate_serial(cert), pki.certificate_serial(pair.cert_pem))
        self.assertRegex(pki.certificate_serial(cert), r"\A[0-9a-f]+\Z")


def _spellings(digest: bytes, draw: Callable[[st.SearchStrategy[Any]], Any]) -> str:
    hexed = digest.hex()
    if draw(st.booleans()):
        hexed = ":".join(hexed[i : i + 2] for i in range(0, 64, 2))
    hexed = "".join(c.upper() if draw(st.booleans()) else c for c in hexed)
    prefix = draw(st.sampled_from(["", "sha256:", "SHA256:", "Sha256:"]))
    return prefix + hexed


class FingerprintTests(SynchronousTestCase):
    def test_ca_fingerprint(self) -> None:
        fingerprint = pki.ca_fingerprint(_CA.cert_pem)
        self.assertRegex(fingerprint, r"\Asha256:[0-9a-f]{64}\Z")
        self.assertEqual(pki.parse_fingerprint(fingerprint), fingerprint)
        self.assertNotEqual(
            pki.ca_fingerprint(pki.generate_ca("appproxy csr test CA").cert_pem), fingerprint
        )

    def test_matches_openssl(self) -> None:
        """The fingerprint is the one C{openssl x509 -fingerprint -sha256} shows."""
        openssl = shutil.which("openssl")
        if openssl is None:
            self.skipTest("no openssl command")
        shown = subprocess.run(
            [openssl, "x509", "-noout", "-fingerprint", "-sha256"],
            input=_CA.cert_pem,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout.decode()
        (value,) = re.findall(r"=([0-9A-F:]+)", shown)
        self.assertEqual(pki.parse_fingerprint(value), pki.ca_fingerprint(_CA.cert_pem))

    @given(st.binary(min_size=32, max_size=32), st.data())
    def test_any_spelling(self, digest: bytes, data: st.DataObject) -> None:
        text = _spellings(digest, data.draw)
        self.assertEqual(pki.parse_fingerprint(text), "sha256:" + digest.hex())
        self.assertEqual(pki.parse_fingerprint(f"  {text}\n"), "sha256:" + digest.hex())

    @given(st.text(max_size=100))
    def test_anything_else(self, text: str) -> None:
        """Text is either refused with ValueError or canonical hex comes out."""
        try:
            parsed = pki.parse_fingerprint(text)
        except ValueError as e:
            self.assertIn("SHA-256 fingerprint", str(e))
        else:
            self.assertRegex(parsed, r"\Asha256:[0-9a-f]{64}\Z")

    def test_refused(self) -> None:
        digest = "ab" * 32
        for text in [
            "",
            "sha256:",
            digest[:-2],
            digest + "ab",
            "sha1:" + digest,
            "md5:" + digest,
            "sha256:" + digest[:-1] + "g",
            "sha256 " + digest,
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                pki.parse_fingerprint(text)
            self.assertIn("SHA-256 fingerprint", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            pki.parse_fingerprint(digest[:-2])
        self.assertIn("62 hexadecimal digits", str(caught.exception))
