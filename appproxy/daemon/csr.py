"""
Certificate requests of connectors: the connector makes its key and a request
(L{new_connector_key}, L{make_csr}); the service signs it
(L{sign_connector_csr}).

The service honours nothing a request asks for (its subject, SANs, EKUs or
other extensions) but its public key, after it has checked the request's
signature: the certificate's content is what the service decides
(L{appproxy.daemon.pki.connector_certificate}).

Pure functions over PEM bytes; no I/O.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from appproxy.daemon.pki import KeyPair, connector_certificate

__all__ = [
    "CSR_COMMON_NAME",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "CSRError",
    "csr_public_key",
    "make_csr",
    "new_connector_key",
    "sign_connector_csr",
]

#: The common name of every request L{make_csr} makes (the service ignores it).
CSR_COMMON_NAME = "appproxy-connector"
#: RSA keys accepted in a request: at least this many bits ...
MIN_RSA_BITS = 2048
#: ... and at most this many (a larger key only costs the service time).
MAX_RSA_BITS = 8192

_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CSRError(ValueError):
    """A certificate request the service will not sign; the text says why."""


def new_connector_key() -> bytes:
    """A new EC P-256 private key, PEM PKCS#8, unencrypted."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_csr(key_pem: bytes) -> bytes:
    """
    A PEM certificate request for C{key_pem}'s public key, signed by it, with
    the subject CN C{appproxy-connector} and nothing else.

    @raise ValueError: if C{key_pem} is not an EC or RSA private key.
    """
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("a connector key must be an EC or RSA private key")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CSR_COMMON_NAME)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _accepted(key: PublicKeyTypes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise CSRError(
                f"the request's key is on curve {key.curve.name}: only P-256 and P-384 are accepted"
            )
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise CSRError(
                f"the request's RSA key has {key.key_size} bits: "
                f"{MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted"
            )
        return key
    raise CSRError(
        f"the request's key is {type(key).__name__}: only EC (P-256, P-384) "
        f"and RSA (at least {MIN_RSA_BITS} bits) keys are accepted"
    )


def csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """
    The public key of a certificate request, once its signature is checked
    and the key is one the service accepts.

    @raise CSRError: if it is not a PEM request, its signature does not
        verify, or its key is not EC P-256/P-384 or RSA of 2048 to 8192 bits.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CSRError("the certificate request is not a PEM PKCS#10 request") from None
    try:
        key = _accepted(csr.public_key())
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        if isinstance(e, CSRError):
            raise
        raise CSRError("the certificate request's public key cannot be read") from None
    try:
        valid = csr.is_signature_valid
    except Exception:  # any failure to check is a bad request
        valid = False
    if not valid:
        raise CSRError("the certificate request's signature does not verify with its key")
    return key


def sign_connector_csr(
    ca: KeyPair,
    csr_pem: bytes,
    connector_id: str,
    group: str,
    *,
    lifetime: datetime.timedelta,
    now: datetime.datetime | None = None,
) -> bytes:
    """
    The PEM certificate (the leaf only) of connector C{connector_id} in
    C{group} for the key of C{csr_pem}, signed by C{ca}, valid from a little
    before C{now} (default: the current time) for C{lifetime} (no longer than
    the CA).

    @raise CSRError: if the request is unusable (see L{csr_public_key}).
    @raise ValueError: if the id, group or lifetime is invalid, or C{ca} is
        not a CA key pair.
    """
    return connector_certificate(ca, csr_public_key(csr_pem), connector_id, group, lifetime, now)
