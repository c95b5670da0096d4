"""
Time-based one-time passwords (RFC 6238): the second factor of the built-in
identity provider.

Secrets are kept and shown as base32 (RFC 4648, upper case, no padding), the
form authenticator apps read from an C{otpauth://} URI.  Codes are HMAC-SHA1
over 30-second time steps, 6 digits, as every authenticator app expects.

Pure functions: no reactor, no I/O; the caller supplies the time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import urllib.parse
from typing import Final

__all__ = [
    "DIGITS",
    "PERIOD",
    "code_at",
    "decode_secret",
    "generate_secret",
    "provisioning_uri",
    "time_step",
    "totp",
    "verify",
]

#: Digits in a code.
DIGITS: Final = 6
#: Seconds per time step.
PERIOD: Final = 30

_SECRET_BYTES = 20
_ALGORITHMS: Final = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


def generate_secret() -> str:
    """A new random secret (20 bytes, as RFC 4226 recommends), in base32."""
    return base64.b32encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """
    The key bytes of a base32 secret.

    Case, spaces and missing C{=} padding are forgiven, as authenticator apps
    do.

    @raise ValueError: if C{secret} is not base32 or is empty.
    """
    text = "".join(secret.split()).upper().rstrip("=")
    if not text or not text.isascii():
        raise ValueError("the TOTP secret is not base32")
    text += "=" * (-len(text) % 8)
    try:
        key = base64.b32decode(text)
    except binascii.Error:
        raise ValueError("the TOTP secret is not base32") from None
    if not key:
        raise ValueError("the TOTP secret is empty")
    return key


def time_step(now: float, *, period: int = PERIOD) -> int:
    """The RFC 6238 time step C{T} for POSIX time C{now}."""
    return int(now // period)


def code_at(secret: str, step: int, *, digits: int = DIGITS, algorithm: str = "sha1") -> str:
    """
    The code for time step C{step} (RFC 4226 HOTP with C{step} as counter).

    @param digits: 6 to 10.
    @param algorithm: C{sha1} (what authenticator apps use), C{sha256} or
        C{sha512}.
    """
    if not 6 <= digits <= 10:
        raise ValueError("a TOTP code has 6 to 10 digits")
    digest = _ALGORITHMS.get(algorithm)
    if digest is None:
        raise ValueError(f"unknown TOTP algorithm {algorithm!r}")
    if step < 0:
        raise ValueError("the time step must not be negative")
    mac = hmac.new(decode_secret(secret), struct.pack(">Q", step), digest).digest()
    offset = mac[-1] & 0x0F
    (value,) = struct.unpack(">I", mac[offset : offset + 4])
    return str((value & 0x7FFFFFFF) % 10**digits).zfill(digits)


def totp(
    secret: str,
    now: float,
    *,
    digits: int = DIGITS,
    period: int = PERIOD,
    algorithm: str = "sha1",
) -> str:
    """The code for POSIX time C{now}."""
    return code_at(secret, time_step(now, period=period), digits=digits, algorithm=algorithm)


def verify(
    secret: str,
    code: str,
    now: float,
    window: int = 1,
    *,
    digits: int = DIGITS,
    period: int = PERIOD,
    algorithm: str = "sha1",
) -> int | None:
    """
    Check C{code} against the steps from C{window} before to C{window} after
    the current one (clocks drift; people type slowly).

    Every step of the window is computed and compared in constant time,
    whichever matches.

    @return: the time step that matched, so the caller can refuse a second
        use of the same step; L{None} if none did (or C{code} is not
        C{digits} ASCII digits, ignoring spaces).
    """
    if window < 0:
        raise ValueError("the window must not be negative")
    # Apps show "123 456": spaces are forgiven.
    candidate = "".join(code.split())
    well_formed = len(candidate) == digits and candidate.isascii() and candidate.isdigit()
    current = time_step(now, period=period)
    matched: int | None = None
    for step in range(max(current - window, 0), current + window + 1):
        expected = code_at(secret, step, digits=digits, algorithm=algorithm)
        if hmac.compare_digest(expected.encode("ascii"), candidate.encode("utf-8")):
            matched = step if matched is None else matched
    return matched if well_formed else None


def provisioning_uri(secret: str, user: str, *, issuer: str = "appproxy") -> str:
    """
    The C{otpauth://} URI authenticator apps import (often as a QR code):
    C{otpauth://totp/ISSUER:USER?secret=...&issuer=ISSUER}.
    """
    label = urllib.parse.quote(f"{issuer}:{user}", safe=":@")
    query = urllib.parse.urlencode(
        {"secret": secret, "issuer": issuer}, quote_via=urllib.parse.quote
    )
    return f"otpauth://totp/{label}?{query}"
