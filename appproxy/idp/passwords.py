"""
Password hashes of the built-in identity provider's users.

Passwords are hashed with scrypt (n=2**14, r=8, p=1, 16-byte salt, 32-byte
key) and compared in constant time.  Hashing takes tens of milliseconds:
callers on the reactor thread must run L{verify_password_hash} in a thread.

Pure: the standard library only, no reactor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Final

import attrs

__all__ = ["DECOY_HASH", "check_password_hash", "hash_password", "verify_password_hash"]

_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
# Bounds on the parameters read from a file: a hand-edited hash must not make
# each sign-in take minutes or gigabytes.
_MAX_SCRYPT_N = 2**20
_MAX_SCRYPT_R = 32
_MAX_SCRYPT_P = 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=256 * r * n * p + 2**20
    )


def hash_password(password: str) -> str:
    """
    Hash C{password} with a new random salt.

    @return: C{scrypt$N$R$P$SALT$HASH}, salt and hash in base64.
    """
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password.encode("utf-8"), salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _KEY_BYTES)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(key)}"


@attrs.frozen
class _ParsedHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _parse_hash(encoded: str) -> _ParsedHash:
    """
    @raise ValueError: if C{encoded} is not a hash L{hash_password} could
        have made (within bounds on its parameters).
    """
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("the password is not an scrypt hash (scrypt$n$r$p$salt$hash)")
    numbers = parts[1:4]
    if not all(part.isascii() and part.isdigit() and len(part) < 10 for part in numbers):
        raise ValueError("the password hash's parameters are not numbers")
    n, r, p = (int(part) for part in numbers)
    try:
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        raise ValueError("the password hash's salt or key is not base64") from None
    if not (1 < n <= _MAX_SCRYPT_N and n & (n - 1) == 0):
        raise ValueError(f"the password hash's n must be a power of 2 up to {_MAX_SCRYPT_N}")
    if not (1 <= r <= _MAX_SCRYPT_R and 1 <= p <= _MAX_SCRYPT_P):
        raise ValueError("the password hash's r or p is out of range")
    if len(salt) < 8 or not 16 <= len(key) <= 64:
        raise ValueError("the password hash's salt or key has the wrong length")
    return _ParsedHash(n, r, p, salt, key)


def check_password_hash(encoded: str) -> None:
    """
    @raise ValueError: if C{encoded} is not a hash L{hash_password} could
        have made (within bounds on its parameters).
    """
    _parse_hash(encoded)


def verify_password_hash(encoded: str, password: str) -> bool:
    """
    Does C{password} match the hash C{encoded}?  Compared in constant time.

    @raise ValueError: if C{encoded} is malformed.
    """
    parsed = _parse_hash(encoded)
    key = _scrypt(
        password.encode("utf-8"), parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.key)
    )
    return hmac.compare_digest(key, parsed.key)


#: Compared against when the user does not exist (or is disabled): the same
#: work as a real check, a result that is never used.
DECOY_HASH: Final = (
    f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(bytes(16))}${_b64(bytes(32))}"
)
