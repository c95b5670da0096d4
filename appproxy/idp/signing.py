"""
The built-in identity provider's ID-token signing key.

An EC P-256 key (ES256), kept as unencrypted PKCS#8 PEM in
C{idp-signing-key.pem} in the state directory, mode 0600; created on first
use.  Its key id (C{kid}) is its RFC 7638 JWK thumbprint, so it changes
exactly when the key does.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appproxy.state.files import (
    PrivateFileError,
    describe_os_error,
    read_private_file,
    write_private_file,
)

__all__ = ["SIGNING_KEY_FILE", "SigningKey", "load_or_create_signing_key"]

#: The key file's name in the state directory.
SIGNING_KEY_FILE: Final = "idp-signing-key.pem"

_ALGORITHM = "ES256"
_COORDINATE_BYTES = 32


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@attrs.frozen
class SigningKey:
    """
    An ES256 private key and its public JWK.

    @ivar private_key: the P-256 private key.
    @ivar kid: the RFC 7638 JWK thumbprint (SHA-256, base64url).
    @ivar public_jwk: the public key as a JWK (C{kty}, C{crv}, C{x}, C{y},
        C{use}, C{alg}, C{kid}).
    """

    private_key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    kid: str = attrs.field(init=False)
    public_jwk: Mapping[str, str] = attrs.field(init=False)

    @kid.default
    def _thumbprint(self) -> str:
        # RFC 7638: the required members, sorted, no whitespace.
        canonical = json.dumps(self._public_members(), separators=(",", ":"), sort_keys=True)
        return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    @public_jwk.default
    def _jwk(self) -> Mapping[str, str]:
        return {**self._public_members(), "use": "sig", "alg": _ALGORITHM, "kid": self.kid}

    def _public_members(self) -> dict[str, str]:
        """The public key's required JWK members (RFC 7518 section 6.2.1)."""
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
            "y": _b64url(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
        }

    @property
    def algorithm(self) -> str:
        return _ALGORITHM

    def sign(self, claims: Mapping[str, Any]) -> str:
        """A compact JWS (a JWT) of C{claims}, with C{kid} in its header."""
        return jwt.encode(
            dict(claims), self.private_key, algorithm=_ALGORITHM, headers={"kid": self.kid}
        )

    def jwks(self) -> dict[str, Any]:
        """The JWK set published at C{/jwks}."""
        return {"keys": [dict(self.public_jwk)]}


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_or_create_signing_key(path: Path | str) -> SigningKey:
    """
    Load the key at C{path}, creating it (mode 0600) if it does not exist.

    @raise ValueError: one line naming the file, if it is readable by group
        or others ("chmod 600"), not a PEM private key, or not a P-256 key.
    """
    path = Path(path)
    try:
        data = read_private_file(path)
    except FileNotFoundError:
        return _create(path)
    except PrivateFileError as e:
        raise ValueError(f"{path}: {e.problem}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path}: not an EC P-256 key (ES256 needs one)")
    return SigningKey(key)


def _create(path: Path) -> SigningKey:
    key = ec.generate_private_key(ec.SECP256R1())
    # Written whole, then linked into place: no reader ever sees a
    # half-written key, and a key another process created first is kept.
    try:
        write_private_file(path, _key_pem(key), exclusive=True)
    except FileExistsError:
        return load_or_create_signing_key(path)
    except OSError as e:
        raise ValueError(f"{path}: cannot create: {describe_os_error(e)}") from None
    return SigningKey(key)
