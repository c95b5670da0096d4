"""
The small private PKI appproxy needs: a service CA, server certificates for the
public listener and the tunnel, and client certificates naming a connector and
the connector group it serves; connector ids, serials and CA fingerprints.

Pure functions over PEM bytes; no I/O. Keys are EC P-256, written as
unencrypted PKCS#8 PEM (the files holding them are protected by their mode).
Connectors' certificate requests (making and signing them) are
L{appproxy.daemon.csr}.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CONNECTOR_GROUP_URI_PREFIX",
    "CONNECTOR_URI_PREFIX",
    "ConnectorIdentity",
    "KeyPair",
    "ca_fingerprint",
    "certificate_serial",
    "check_connector_names",
    "connector_certificate",
    "connector_identity",
    "generate_ca",
    "issue_connector_certificate",
    "issue_server_certificate",
    "new_connector_id",
    "parse_fingerprint",
]

CONNECTOR_GROUP_URI_PREFIX = "urn:appproxy:connector-group:"
CONNECTOR_URI_PREFIX = "urn:appproxy:connector:"


# Certificates start this far in the past so that a peer whose clock is a little
# behind still accepts a certificate issued a moment ago.
_CLOCK_SKEW = datetime.timedelta(minutes=5)

# The same rule as an app's connector_group in the configuration file.
_GROUP_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
# Connector ids become the certificate's common name (at most 64 characters).
_CONNECTOR_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


@attrs.frozen
class KeyPair:
    """A PEM certificate (the leaf only) and its PEM PKCS#8 private key."""

    cert_pem: bytes
    key_pem: bytes


@attrs.frozen
class ConnectorIdentity:
    """Who a connector client certificate names."""

    connector_id: str
    """The certificate's common name."""
    group: str
    """The connector group, from the C{urn:appproxy:connector-group:} SAN URI."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_ca(
    ca: KeyPair,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the CA key must be an EC or RSA private key")
    if key.public_key() != cert.public_key():
        raise ValueError("the CA key does not match the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError("the CA certificate has no basic constraints") from None
    if not constraints.ca:
        raise ValueError("the CA certificate is not a CA")
    return cert, key


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    now: datetime.datetime,
    not_after: datetime.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """
    What every certificate here has: a random serial, a start a little in
    the past, basic constraints (a CA signs leaves only), key usage (a CA
    signs certificates and CRLs, a leaf signs handshakes) and its key id.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf_builder(
    ca_cert: x509.Certificate,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    lifetime: datetime.timedelta,
    now: datetime.datetime | None = None,
) -> x509.CertificateBuilder:
    if lifetime <= datetime.timedelta(0):
        raise ValueError("a certificate's lifetime must be positive")
    if now is None:
        now = _now()
    # A leaf cannot usefully outlive its CA.
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return _builder(subject, ca_cert.subject, public_key, now, not_after, ca=False).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
        critical=False,
    )


def generate_ca(common_name: str, *, lifetime_days: int = 3650) -> KeyPair:
    """
    Create a self-signed CA that may sign leaf certificates only (path length 0).
    """
    if not common_name:
        raise ValueError("the CA common name must not be empty")
    if lifetime_days < 1:
        raise ValueError("lifetime_days must be at least 1")
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    not_after = now + datetime.timedelta(days=lifetime_days)
    cert = _builder(name, name, key.public_key(), now, not_after, ca=True).sign(
        key, hashes.SHA256()
    )
    return KeyPair(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def issue_server_certificate(
    ca: KeyPair, dns_names: Sequence[str], *, lifetime_days: int = 397
) -> KeyPair:
    """
    Issue a TLS server certificate for C{dns_names} (wildcards such as
    C{*.example.com} allowed). The returned C{cert_pem} holds the leaf only.
    """
    if isinstance(dns_names, str):
        raise TypeError("dns_names must be a sequence of names, not a string")
    names = [name.lower() for name in dns_names]
    if not names:
        raise ValueError("a server certificate needs at least one DNS name")
    for name in names:
        if not name or not name.isascii() or any(c.isspace() for c in name):
            raise ValueError(f"{name!r} is not a DNS name")
    ca_cert, ca_key = _load_ca(ca)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    if lifetime_days < 1:
        raise ValueError("lifetime_days must be at least 1")
    lifetime = datetime.timedelta(days=lifetime_days)
    cert = (
        _leaf_builder(ca_cert, subject, key.public_key(), lifetime)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def check_connector_names(connector_id: str, group: str) -> None:
    """@raise ValueError: unless both are valid as a connector id and a group."""
    if not _CONNECTOR_ID_RE.match(connector_id):
        raise ValueError(
            f"connector id {connector_id!r} must be 1-64 letters, digits, '.', '-' or '_'"
        )
    if not _GROUP_RE.match(group):
        raise ValueError(f"connector group {group!r} must be 1-64 letters, digits, '-' or '_'")


def connector_certificate(
    ca: KeyPair,
    public_key: PublicKeyTypes,
    connector_id: str,
    group: str,
    lifetime: datetime.timedelta,
    now: datetime.datetime | None = None,
) -> bytes:
    """
    The PEM certificate of a connector, and nothing else: subject CN = the id;
    SAN URIs naming the connector and its group; EKU clientAuth only; key usage
    digitalSignature; not a CA; a random serial.
    """
    check_connector_names(connector_id, group)
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("a connector's key must be an EC or RSA public key")
    ca_cert, ca_key = _load_ca(ca)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, connector_id)])
    cert = (
        _leaf_builder(ca_cert, subject, public_key, lifetime, now)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"{CONNECTOR_URI_PREFIX}{connector_id}"),
                    x509.UniformResourceIdentifier(f"{CONNECTOR_GROUP_URI_PREFIX}{group}"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert)


def issue_connector_certificate(
    ca: KeyPair, connector_id: str, group: str, *, lifetime_days: int = 365
) -> KeyPair:
    """
    Issue a TLS client certificate, and its key, for a connector: the common
    name is the connector id, SAN URIs C{urn:appproxy:connector:ID} and
    C{urn:appproxy:connector-group:GROUP} name it and the one group it serves.
    """
    if lifetime_days < 1:
        raise ValueError("lifetime_days must be at least 1")
    check_connector_names(connector_id, group)
    key = _new_key()
    cert_pem = connector_certificate(
        ca, key.public_key(), connector_id, group, datetime.timedelta(days=lifetime_days)
    )
    return KeyPair(cert_pem=cert_pem, key_pem=_key_pem(key))


def new_connector_id() -> str:
    """A new random connector id: C{cn-} and 16 lowercase hexadecimal digits."""
    return "cn-" + secrets.token_hex(8)


def certificate_serial(cert: bytes | x509.Certificate) -> str:
    """A certificate's (PEM bytes or loaded) serial: lowercase hex, no colons."""
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert)
    return format(cert.serial_number, "x")


def ca_fingerprint(cert_pem: bytes) -> str:
    """C{sha256:} and the lowercase hex SHA-256 of the certificate's DER."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


_HEX_DIGITS = frozenset("0123456789abcdef")


def parse_fingerprint(text: str) -> str:
    """
    The canonical form (C{sha256:} + 64 lowercase hex digits) of a SHA-256
    fingerprint written with or without a C{sha256:} prefix (any case), with
    or without colons between the digits.

    @raise ValueError: if it is not one.
    """
    value = text.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    digits = value.replace(":", "")
    if not digits or not set(digits) <= _HEX_DIGITS:
        raise ValueError(
            f"{text!r} is not a SHA-256 fingerprint: expected 'sha256:' and 64 hexadecimal digits"
        )
    if len(digits) != 64:
        raise ValueError(
            f"{text!r} is not a SHA-256 fingerprint: it has {len(digits)} hexadecimal digits, "
            "not 64"
        )
    return "sha256:" + digits


def connector_identity(cert: x509.Certificate) -> ConnectorIdentity:
    """
    Read the connector id and group from a connector certificate.

    This does not verify the certificate; the TLS handshake does that.

    @raise ValueError: if the certificate has no common name (or several), no
        group URI, or more than one group URI; or a connector URI (optional:
        certificates made before appproxy wrote one have none) that is not
        exactly one and equal to the common name.
    """
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(common_names) != 1:
        raise ValueError("a connector certificate must have exactly one common name")
    connector_id = common_names[0].value
    if isinstance(connector_id, bytes):
        connector_id = connector_id.decode("utf-8", "replace")
    if not connector_id:
        raise ValueError("the connector certificate's common name is empty")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the connector certificate has no subject alternative names") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    named = [
        uri[len(CONNECTOR_URI_PREFIX) :] for uri in uris if uri.startswith(CONNECTOR_URI_PREFIX)
    ]
    if named and named != [connector_id]:
        raise ValueError(
            "the connector certificate names no connector: its connector URI "
            f"{', '.join(named)!r} is not its common name {connector_id!r}"
        )
    groups = [
        uri[len(CONNECTOR_GROUP_URI_PREFIX) :]
        for uri in uris
        if uri.startswith(CONNECTOR_GROUP_URI_PREFIX)
    ]
    if not groups:
        raise ValueError("the connector certificate names no connector group")
    if len(groups) > 1:
        raise ValueError("the connector certificate names more than one connector group")
    (group,) = groups
    if not _GROUP_RE.match(group):
        raise ValueError(f"the connector certificate's group {group!r} is not a valid group name")
    return ConnectorIdentity(connector_id=connector_id, group=group)
