"""
Header-based single sign-on: what the internal app learns about the user.

  - L{identity_headers}: the configured identity headers (C{X-Remote-User:
    alice}) from the session's claims; a value that could smuggle a header
    is refused (L{UnsafeClaimValue}), never forwarded;
  - L{strip_spoofed_headers}: the client's own copies of those headers, and
    every C{X-AppProxy-*} header, are removed before the request goes on;
  - L{strip_appproxy_cookies} and L{drop_appproxy_set_cookies}: appproxy's
    cookies never reach the app, and the app cannot set them;
  - L{AssertionSigner}: the signed identity assertion (an ES256 JWT, sent as
    C{X-AppProxy-Jwt-Assertion}) and the JWK Set that verifies it.

Header lists are ordered C{list[tuple[bytes, bytes]]} of (name, value), as in
L{appproxy.http.headers}; inputs are never mutated.  Only
L{load_or_create_assertion_key} does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appproxy.access.session import Session

__all__ = [
    "APPPROXY_COOKIE_PREFIXES",
    "ASSERTION_LIFETIME",
    "AssertionSigner",
    "UnsafeClaimValue",
    "drop_appproxy_set_cookies",
    "identity_headers",
    "load_or_create_assertion_key",
    "normalise_header_name",
    "strip_appproxy_cookies",
    "strip_spoofed_headers",
]

Headers = list[tuple[bytes, bytes]]

#: Cookies whose names start with one of these are appproxy's (compared
#: case-sensitively, as cookie names are).
APPPROXY_COOKIE_PREFIXES: tuple[bytes, ...] = (b"__Host-appproxy-", b"appproxy-")

#: Seconds a signed identity assertion is valid.
ASSERTION_LIFETIME = 300

_RESERVED_PREFIX = "x-appproxy-"
_OWS = b" \t"
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# Control characters (C0, DEL, C1), line and paragraph separators, and lone
# surrogates (which cannot be encoded).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})
_KEY_MODE = 0o600


class UnsafeClaimValue(Exception):
    """
    A claim's value cannot be sent as a header: it contains a control
    character (CR, LF, NUL, TAB, DEL, ...) or a line or paragraph separator.

    The value itself is not kept: it must not reach the logs either.

    @ivar header: the header the claim was to be sent in.
    @ivar claim: the claim's name.
    """

    def __init__(self, header: str, claim: str) -> None:
        super().__init__(header, claim)
        self.header = header
        self.claim = claim

    def __str__(self) -> str:
        return (
            f"claim {self.claim!r} cannot be sent in header {self.header!r}: "
            "its value contains a control character"
        )


def _is_safe(value: str) -> bool:
    return not any(unicodedata.category(char) in _UNSAFE_CATEGORIES for char in value)


def _header_name(name: str) -> bytes:
    if not name or not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"{name!r} is not a valid header name")
    return name.lower().encode("ascii")


def identity_headers(mapping: Sequence[tuple[str, str]], session: Session) -> Headers:
    """
    The identity headers for C{session}: for each (header name, claim name)
    of C{mapping}, in order, the header with the claim's value (see
    L{Session.claim}).

    Names are lowercased (they go into HTTP/2 frames).  A list claim's items
    are joined with C{","} (an empty list gives an empty value).  A claim the
    session does not have gives no header.  Values are UTF-8.

    @raise UnsafeClaimValue: if a value contains a control character, DEL,
        or a Unicode line or paragraph separator.
    @raise ValueError: if a header name is not an HTTP token.
    """
    result: Headers = []
    for header, claim in mapping:
        name = _header_name(header)
        value = session.claim(claim)
        if value is None:
            continue
        text = value if isinstance(value, str) else ",".join(value)
        if not _is_safe(text):
            raise UnsafeClaimValue(header, claim)
        result.append((name, text.encode("utf-8")))
    return result


def normalise_header_name(name: str) -> str:
    """A header name lowercased, with C{_} as C{-}: how back ends see it."""
    return name.lower().replace("_", "-")


def _normalise_bytes(name: bytes) -> str:
    # bytes.lower() folds ASCII only, as HTTP header names are compared.
    return name.lower().replace(b"_", b"-").decode("latin-1")


def strip_spoofed_headers(
    headers: Sequence[tuple[bytes, bytes]], protected: Iterable[str]
) -> Headers:
    """
    Remove the headers a client may not send: every header whose name,
    normalised (L{normalise_header_name}), is one of C{protected} or starts
    with C{x-appproxy-}.  CGI-style back ends see C{X_Remote_User} as
    C{X-Remote-User}, so both spellings are removed.

    @param protected: the identity headers' names (normalised here too).
    """
    names = {normalise_header_name(name) for name in protected}
    return [
        (name, value)
        for name, value in headers
        if (normalised := _normalise_bytes(name)) not in names
        and not normalised.startswith(_RESERVED_PREFIX)
    ]


def _is_appproxy_cookie(pair: bytes) -> bool:
    """Is this C{name=value} (or malformed) cookie pair one of appproxy's?"""
    name, equals, _ = pair.partition(b"=")
    return bool(equals) and name.strip(_OWS).startswith(APPPROXY_COOKIE_PREFIXES)


def strip_appproxy_cookies(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """
    Remove appproxy's cookies (see L{APPPROXY_COOKIE_PREFIXES}) from every
    C{Cookie} header.

    A C{Cookie} header without appproxy cookies is kept unchanged.  From one
    with them, the other pairs are kept in order (joined with C{"; "});
    malformed pairs (without C{=}) are kept as they were.  A header left
    empty is dropped.
    """
    result: Headers = []
    for name, value in headers:
        if name.lower() != b"cookie":
            result.append((name, value))
            continue
        pairs = value.split(b";")
        kept = [pair for pair in pairs if not _is_appproxy_cookie(pair)]
        if len(kept) == len(pairs):
            result.append((name, value))
            continue
        remaining = [pair.strip(_OWS) for pair in kept]
        remaining = [pair for pair in remaining if pair]
        if remaining:
            result.append((name, b"; ".join(remaining)))
    return result


def drop_appproxy_set_cookies(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """
    Drop every C{Set-Cookie} header (name compared case-insensitively) that
    would set one of appproxy's cookies: its cookie name (before the first
    C{=} of the first C{;}-separated part, without surrounding whitespace)
    starts with one of L{APPPROXY_COOKIE_PREFIXES}.
    """
    result: Headers = []
    for name, value in headers:
        if name.lower() == b"set-cookie":
            pair = value.split(b";", 1)[0]
            cookie_name = pair.split(b"=", 1)[0].strip(_OWS)
            if cookie_name.startswith(APPPROXY_COOKIE_PREFIXES):
                continue
        result.append((name, value))
    return result


# ---------------------------------------------------------------------------
# the signed identity assertion


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


def _write_new_key(path: Path, pem: bytes) -> bool:
    """
    Create C{path} (mode 0600) holding C{pem}, atomically: through a
    temporary file hard-linked into place, so that a reader never sees a
    partial key and a key another process created first is kept.

    @return: whether this call created it.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _KEY_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _KEY_MODE)
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


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
        if _write_new_key(path, pem):
            return AssertionSigner(key)
    return _read_key(path)
