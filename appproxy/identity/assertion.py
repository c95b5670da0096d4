"""
The signed identity assertion: an ES256 JWT of the user's identity for one
app, sent as C{X-AppProxy-Jwt-Assertion}, and the JWK Set that verifies it.

L{AssertionSigner} is pure; only L{load_or_create_assertion_key} does I/O (at
start and on reload).
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import uuid
from pathlib import Path

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appproxy.access.session import Session
from appproxy.state.files import write_private_file

__all__ = ["ASSERTION_LIFETIME", "AssertionSigner", "load_or_create_assertion_key"]

#: Seconds a signed identity assertion is valid.
ASSERTION_LIFETIME = 300


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The RFC 7518 members of a P-256 public key, C{crv kty x y}."""
    numbers = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def _thumbprint(jwk: dict[str, str]) -> str:
    """The RFC 7638 thumbprint (SHA-256, base64url) of an EC public JWK."""
    required = {member: jwk[member] for member in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@attrs.frozen
class AssertionSigner:
    """
    Signs identity assertions with an ES256 key.

    @ivar private_key: the P-256 signing key.
    @ivar key_id: the key's RFC 7638 JWK thumbprint, sent as C{kid}.
    """

    private_key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    _jwk: dict[str, str] = attrs.field(init=False, repr=False, eq=False)
    key_id: str = attrs.field(init=False, eq=False)

    @_jwk.default
    def _make_jwk(self) -> dict[str, str]:
        # Checked here: attrs computes defaults before it runs validators.
        key = self.private_key
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ValueError("the assertion key must be an EC P-256 private key")
        return _public_jwk(key.public_key())

    @key_id.default
    def _make_key_id(self) -> str:
        return _thumbprint(self._jwk)

    def sign(self, session: Session, *, audience: str, issuer: str, now: int) -> str:
        """
        An assertion of C{session}'s identity for one app: a JWT signed with
        ES256, whose header carries C{kid}, and whose claims are C{iss},
        C{aud}, C{sub}, C{user} (the user name), C{name} and C{email} (when
        known), C{groups}, C{roles}, C{amr}, C{iat}, C{nbf}, C{exp}
        (C{now} + L{ASSERTION_LIFETIME}) and a unique C{jti}.

        @param audience: who the assertion is for: the app's external URL.
        @param issuer: who issues it: appproxy's URL for that app.
        """
        claims: dict[str, object] = {
            "iss": issuer,
            "aud": audience,
            "sub": session.subject,
            "user": session.user,
        }
        if session.name is not None:
            claims["name"] = session.name
        if session.email is not None:
            claims["email"] = session.email
        claims.update(
            groups=list(session.groups),
            roles=list(session.roles),
            amr=list(session.amr),
            iat=now,
            nbf=now,
            exp=now + ASSERTION_LIFETIME,
            jti=uuid.uuid4().hex,
        )
        return jwt.encode(claims, self.private_key, algorithm="ES256", headers={"kid": self.key_id})

    def jwks(self) -> bytes:
        """The JSON JWK Set that verifies this signer's assertions."""
        key = {**self._jwk, "kid": self.key_id, "use": "sig", "alg": "ES256"}
        return json.dumps({"keys": [key]}, sort_keys=True).encode("ascii")


def _read_key(path: Path) -> AssertionSigner:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(
            f"{path} is readable by group or others (mode {mode:04o}); "
            f"it holds a private key: chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path} is not an EC P-256 private key")
    return AssertionSigner(key)


def load_or_create_assertion_key(path: str | Path) -> AssertionSigner:
    """
    The assertion signer whose key is in C{path} (PEM, PKCS #8).  If C{path}
    does not exist, a new P-256 key is written there first (mode 0600,
    atomically).

    @raise ValueError: (one line, naming the file) if the file is readable
        by group or others, or is not an unencrypted P-256 private key.
    @raise OSError: if it cannot be read or written.
    """
    path = Path(path)
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            # Exclusive: a key another process created first is kept.
            write_private_file(path, pem, exclusive=True)
        except FileExistsError:
            pass
        else:
            return AssertionSigner(key)
    return _read_key(path)
