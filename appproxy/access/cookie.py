"""
The encrypted cookie that carries the session, and sealed short-lived blobs.

L{SessionCookieCodec} turns a L{appproxy.access.session.Session} into a
cookie value and back::

    v1.<key id>.<base64url, no padding, of nonce (12 bytes) + ciphertext>

The ciphertext is AES-256-GCM (a fresh random nonce per cookie) of the
session as compact JSON with short keys, raw-deflate compressed.  The
associated data binds the format version, the purpose C{session}, the app's
name and the cookie's name: a cookie made for one app, or under another
cookie name, does not decrypt.  L{Sealer} protects short-lived blobs (the
sign-in flow cookie, the sign-in request, the hand-off) the same way, with
their purpose as associated data and their expiry inside.

Keys come from a L{appproxy.access.keyring.KeyRing}: the current key encrypts, every
key that is not retired decrypts.  Pure code: no reactor, no I/O; the caller
passes the time.
"""

from __future__ import annotations

import binascii
import functools
import json
import os
import zlib
from collections.abc import Mapping
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appproxy.access.keyring import KeyRing
from appproxy.access.session import (
    PAYLOAD_VERSION,
    Session,
    older_session_document,
    session_document,
    session_from_document,
)

__all__ = [
    "CLOCK_SKEW",
    "MAX_COOKIE_BYTES",
    "MAX_SEALED_CHARS",
    "CookieTooLarge",
    "InvalidCookie",
    "Sealer",
    "SessionCookieCodec",
]

#: The longest C{Set-Cookie} C{name=value} a session cookie may have
#: (browsers keep 4096 bytes per cookie, attributes included).
MAX_COOKIE_BYTES = 3000

#: How far in the future (seconds) a session's C{issued_at} may be: the
#: clocks of several service processes differ a little.
CLOCK_SKEW = 60
#: Decrypted session cookies a codec keeps (see L{SessionCookieCodec}).
DECODED_CACHE_SIZE = 256

#: The longest sealed token L{Sealer} makes or accepts (it may go in a URL).
MAX_SEALED_CHARS = 8192

_PREFIX = "v1"
_AAD_VERSION = "appproxy/v1"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_LEVEL = 9
_WBITS = -15  # raw deflate: no zlib header or checksum (GCM authenticates)
_INFLATE_BUFSIZE = 4096  # a session's JSON fits; the default 16 KiB costs time


class InvalidCookie(Exception):
    """
    A cookie or sealed token was refused.

    @ivar reason: why, in a few words: C{"malformed"}, C{"unknown or retired
        key"}, C{"decryption failed"}, C{"malformed payload"}, C{"expired"},
        C{"wrong app"}, C{"issued in the future"} or C{"made by an older
        appproxy, without a session id"}.  Never the value itself.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CookieTooLarge(Exception):
    """
    A session does not fit in a cookie; store its groups by reference.

    @ivar size: the length C{name=value} would have had.
    @ivar limit: L{MAX_COOKIE_BYTES}.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"session cookie would be {size} bytes; the limit is {limit}")
        self.size = size
        self.limit = limit


@functools.lru_cache(maxsize=1024)
def _aad(*parts: str) -> bytes:
    """Associated data: each part, UTF-8, behind its 4-byte length (unambiguous)."""
    out = bytearray()
    for part in parts:
        encoded = part.encode("utf-8", "surrogatepass")
        out += len(encoded).to_bytes(4, "big")
        out += encoded
    return bytes(out)


def _session_aad(app: str, cookie_name: str) -> bytes:
    return _aad(_AAD_VERSION, "session", app, cookie_name)


def _sealed_aad(purpose: str) -> bytes:
    return _aad(_AAD_VERSION, "sealed", purpose)


def _pack(document: Mapping[str, object]) -> bytes:
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return zlib.compress(text.encode("utf-8", "surrogatepass"), _LEVEL, _WBITS)


_JSON = json.JSONDecoder()


def _unpack(plaintext: bytes) -> Any:
    """The JSON value inside a decrypted plaintext; L{InvalidCookie} if it is not one."""
    try:
        text = zlib.decompress(plaintext, _WBITS, _INFLATE_BUFSIZE).decode("utf-8", "surrogatepass")
        # raw_decode: json.loads's extra checks cost more than the parse here.
        value, end = _JSON.raw_decode(text)
    except (zlib.error, ValueError, RecursionError):
        raise InvalidCookie("malformed payload") from None
    if end != len(text):
        raise InvalidCookie("malformed payload")
    return value


# base64url to standard base64; "+", "/" and "=" become "!", which strict decoding refuses.
_FROM_URLSAFE = bytes.maketrans(b"-_+/=", b"+/!!!")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
# The last character of a canonical encoding whose length is 2 or 3 (mod 4)
# has its unused low bits clear.
_CANONICAL_LAST = {0: None, 2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def _b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes | None:
    """
    The bytes of unpadded base64url C{text}, or L{None} if it is not the
    canonical encoding of some bytes (any other spelling is an altered value).
    """
    remainder = len(text) % 4
    if remainder == 1:
        return None
    last = _CANONICAL_LAST[remainder]
    if last is not None and text[-1] not in last:
        return None
    try:
        encoded = text.encode("ascii").translate(_FROM_URLSAFE)
        return binascii.a2b_base64(encoded + b"=" * (-remainder % 4), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        return None


@attrs.frozen
class _Ciphers:
    """The AES-GCM objects of a ring's keys, made once."""

    current_id: str
    current: AESGCM
    by_id: dict[str, AESGCM]

    @classmethod
    def of(cls, ring: KeyRing) -> _Ciphers:
        by_id = {key.id: AESGCM(key.secret) for key in ring.active}
        return cls(ring.current.id, by_id[ring.current.id], by_id)

    def seal(self, plaintext: bytes, aad: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self.current.encrypt(nonce, plaintext, aad)
        return f"{_PREFIX}.{self.current_id}.{_b64encode(sealed)}"

    def open(self, value: str, aad: bytes) -> bytes:
        """The plaintext of C{value}; L{InvalidCookie} if it is not genuine."""
        parts = value.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise InvalidCookie("malformed")
        cipher = self.by_id.get(parts[1])
        if cipher is None:
            raise InvalidCookie("unknown or retired key")
        raw = _b64decode(parts[2])
        if raw is None:
            raise InvalidCookie("malformed")
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise InvalidCookie("malformed")
        try:
            return cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise InvalidCookie("decryption failed") from None


def _ring_ciphers(holder: SessionCookieCodec | Sealer) -> _Ciphers:
    return _Ciphers.of(holder.ring)


#: The C{_ciphers} of a codec or sealer: made once, from its C{ring}.
_RING_CIPHERS = attrs.Factory(_ring_ciphers, takes_self=True)


@attrs.frozen(eq=False)
class SessionCookieCodec:
    """
    Encrypts sessions into cookie values and decrypts them back.

    Make a new codec when the key ring changes (on reload).

    @ivar ring: the key ring.
    """

    ring: KeyRing
    _ciphers: _Ciphers = attrs.field(init=False, repr=False, default=_RING_CIPHERS)
    _decoded: dict[tuple[str, str, str], Session] = attrs.field(
        init=False, repr=False, factory=dict
    )
    """Sessions decrypted lately, by (value, app, cookie name): a browser
    sends the same cookie with every request, and decrypting and parsing it
    again each time is most of what a signed-in request costs the gate.  Per
    codec, so a new key ring (a new codec) starts empty; bounded by
    L{DECODED_CACHE_SIZE} (emptied when full).  The checks that depend on the
    time are made on every request, cached or not."""

    def encode(self, session: Session, cookie_name: str) -> str:
        """
        The cookie value for C{session}, under the current key.

        @param cookie_name: the cookie's name; the value decodes under that
            name only.
        @raise CookieTooLarge: if C{cookie_name=value} would be longer than
            L{MAX_COOKIE_BYTES} (the caller then stores the groups by
            reference and tries again).
        @raise ValueError: if a field of C{session} does not have its
            declared type (it could not be decoded).
        """
        document = session_document(session)
        if session_from_document(document) != session:
            raise ValueError("the session has a field of the wrong type")
        value = self._ciphers.seal(_pack(document), _session_aad(session.app, cookie_name))
        size = len(cookie_name) + 1 + len(value)
        if size > MAX_COOKIE_BYTES:
            raise CookieTooLarge(size, MAX_COOKIE_BYTES)
        return value

    def decode(self, value: str, *, app: str, cookie_name: str, now: int) -> Session:
        """
        The session in the cookie value C{value}.

        @param app: the app the request is for.
        @param cookie_name: the name the cookie came under.
        @param now: the time (POSIX seconds).
        @raise InvalidCookie: if the value is malformed, names a key that is
            unknown or retired, does not decrypt (altered, or made for another
            app or cookie name), does not hold a session, is for another app,
            has expired, or was issued more than L{CLOCK_SKEW} seconds in the
            future.
        """
        if len(value) > MAX_COOKIE_BYTES:
            raise InvalidCookie("malformed")
        key = (value, app, cookie_name)
        session = self._decoded.get(key)
        if session is None:
            session = self._open_session(value, app, cookie_name)
            if len(self._decoded) >= DECODED_CACHE_SIZE:
                self._decoded.clear()
            self._decoded[key] = session
        if now >= session.expires_at:
            raise InvalidCookie("expired")
        if session.issued_at > now + CLOCK_SKEW:
            raise InvalidCookie("issued in the future")
        return session

    def _open_session(self, value: str, app: str, cookie_name: str) -> Session:
        """The session C{value} holds for C{app}, whatever the time."""
        document = _unpack(self._ciphers.open(value, _session_aad(app, cookie_name)))
        session = session_from_document(document)
        if session is None:
            if older_session_document(document):
                raise InvalidCookie("made by an older appproxy, without a session id")
            raise InvalidCookie("malformed payload")
        if session.app != app:
            raise InvalidCookie("wrong app")
        return session


@attrs.frozen(eq=False)
class Sealer:
    """
    Seals short-lived JSON payloads into URL- and cookie-safe tokens.

    Tokens have the cookie's format (C{v1.<key id>.<base64url>}); the
    purpose is bound as associated data, so a token sealed for one purpose
    does not unseal for another, and the expiry is inside.

    @ivar ring: the key ring.
    """

    ring: KeyRing
    _ciphers: _Ciphers = attrs.field(init=False, repr=False, default=_RING_CIPHERS)

    def seal(self, purpose: str, payload: Mapping[str, object], expires_at: int) -> str:
        """
        A token holding C{payload} for C{purpose} until C{expires_at}.

        @param payload: JSON-able (tuples come back as lists).
        @raise ValueError: if the token would be longer than
            L{MAX_SEALED_CHARS}.
        @raise TypeError: if C{payload} is not JSON-able.
        """
        if type(expires_at) is not int:
            raise TypeError("expires_at must be an integer")
        document = {"v": PAYLOAD_VERSION, "e": expires_at, "d": dict(payload)}
        token = self._ciphers.seal(_pack(document), _sealed_aad(purpose))
        if len(token) > MAX_SEALED_CHARS:
            raise ValueError(
                f"sealed token would be {len(token)} characters; the limit is {MAX_SEALED_CHARS}"
            )
        return token

    def unseal(self, token: str, *, purpose: str, now: int) -> dict[str, object]:
        """
        The payload sealed in C{token} for C{purpose}.

        @raise InvalidCookie: if the token is malformed, names an unknown or
            retired key, does not decrypt (altered, or sealed for another
            purpose), or has expired.
        """
        if len(token) > MAX_SEALED_CHARS:
            raise InvalidCookie("malformed")
        document = _unpack(self._ciphers.open(token, _sealed_aad(purpose)))
        if (
            type(document) is not dict
            or document.keys() != {"v", "e", "d"}
            or type(document["v"]) is not int
            or document["v"] != PAYLOAD_VERSION
            or type(document["e"]) is not int
            or type(document["d"]) is not dict
        ):
            raise InvalidCookie("malformed payload")
        if now >= document["e"]:
            raise InvalidCookie("expired")
        payload: dict[str, object] = document["d"]
        return payload
