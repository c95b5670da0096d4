"""
The key ring's file: C{session-keys.json} in the service's state directory
(mode 0600)::

    {"version": 1,
     "keys": [{"id": "k3Jx_a9Q", "created": 1717000000,
               "secret": "<32 bytes, base64url>", "retired": false}]}

L{load_keyring}, L{load_or_create_keyring}, L{save_keyring} and
L{update_keyring} do the file I/O (blocking: at start, on reload, or from the
C{appproxy keys} command); the ring itself is L{appproxy.access.keyring.KeyRing}.
Secrets never appear in an exception message.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from pathlib import Path

from appproxy.access.keyring import (
    KEY_ID_RE,
    SECRET_BYTES,
    CookieKey,
    KeyRing,
    KeyRingError,
    PathLike,
)
from appproxy.state.files import (
    PrivateFileError,
    describe_os_error,
    read_private_file,
    write_private_file,
)

__all__ = [
    "KEYRING_FILENAME",
    "load_keyring",
    "load_or_create_keyring",
    "save_keyring",
    "update_keyring",
]

#: The key ring's file name in the state directory.
KEYRING_FILENAME = "session-keys.json"

_FORMAT_VERSION = 1
_BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]*={0,2}\Z")
_KEY_FIELDS = frozenset({"id", "created", "secret", "retired"})
_FILE_FIELDS = frozenset({"version", "keys"})


def _encode_secret(secret: bytes) -> str:
    return base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")


def _decode_secret(text: str) -> bytes | None:
    """The bytes of a base64url secret (padding optional), or L{None}."""
    if not _BASE64URL_RE.match(text):
        return None
    stripped = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        return None


def _parse_key(index: int, entry: object) -> CookieKey:
    """One entry of C{"keys"}; raises L{ValueError} with the problem."""
    where = f"keys[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not an object")
    missing = _KEY_FIELDS - entry.keys()
    if missing:
        raise ValueError(f"{where} lacks {', '.join(sorted(missing))}")
    extra = entry.keys() - _KEY_FIELDS
    if extra:
        raise ValueError(f"{where} has unknown field(s) {', '.join(sorted(extra))}")
    key_id = entry["id"]
    if not isinstance(key_id, str) or not KEY_ID_RE.match(key_id):
        raise ValueError(f"{where}: id must be 1-64 letters, digits, '-' or '_'")
    where = f"key {key_id!r}"
    created = entry["created"]
    if type(created) is not int:
        raise ValueError(f"{where}: created must be an integer")
    retired = entry["retired"]
    if not isinstance(retired, bool):
        raise ValueError(f"{where}: retired must be true or false")
    encoded = entry["secret"]
    secret = _decode_secret(encoded) if isinstance(encoded, str) else None
    if secret is None:
        raise ValueError(f"{where}: secret is not base64url")
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"{where}: secret is not {SECRET_BYTES} bytes")
    return CookieKey(id=key_id, secret=secret, created=created, retired=retired)


def _parse(text: str) -> KeyRing:
    """A key ring from the file's text; raises L{ValueError} with the problem."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ValueError("not JSON (nested too deeply)") from None
    if not isinstance(document, dict) or document.keys() != _FILE_FIELDS:
        raise ValueError('wrong shape: expected an object with "version" and "keys"')
    if document["version"] != _FORMAT_VERSION or type(document["version"]) is not int:
        raise ValueError(f"unsupported version {document['version']!r} (expected 1)")
    entries = document["keys"]
    if not isinstance(entries, list):
        raise ValueError('wrong shape: "keys" is not a list')
    keys = tuple(_parse_key(index, entry) for index, entry in enumerate(entries))
    if not keys:
        raise ValueError("no active (non-retired) key")
    return KeyRing(keys=keys)


def _serialise(ring: KeyRing) -> bytes:
    document = {
        "version": _FORMAT_VERSION,
        "keys": [
            {
                "id": key.id,
                "created": key.created,
                "secret": _encode_secret(key.secret),
                "retired": key.retired,
            }
            for key in ring.keys
        ],
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def load_keyring(path: PathLike) -> KeyRing:
    """
    Read the key ring file at C{path}.

    @raise KeyRingError: if the file cannot be read, is readable or writable
        by anyone but its owner, is not JSON, does not have the expected
        shape, holds a secret that is not 32 bytes, repeats a key id, or has
        no active key.  Its message is one line naming the file.
    """
    try:
        data = read_private_file(path)
    except FileNotFoundError as e:
        raise KeyRingError(path, f"cannot read: {describe_os_error(e)}") from None
    except PrivateFileError as e:
        raise KeyRingError(path, e.problem) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyRingError(path, "not JSON (not UTF-8)") from None
    try:
        return _parse(text)
    except KeyRingError as e:
        raise KeyRingError(path, e.problem) from None
    except ValueError as e:
        raise KeyRingError(path, str(e)) from None


def save_keyring(path: PathLike, ring: KeyRing) -> None:
    """
    Write C{ring} to C{path} atomically, mode 0600.

    @raise KeyRingError: if the file cannot be written.
    """
    try:
        write_private_file(path, _serialise(ring))
    except OSError as e:
        raise KeyRingError(path, f"cannot write: {describe_os_error(e)}") from None


def load_or_create_keyring(path: PathLike, now: int) -> KeyRing:
    """
    Read the key ring at C{path}; if there is no such file, create it with one
    new key (made at C{now}), mode 0600.

    The file appears whole or not at all.  When two processes create it at
    the same moment, one file wins and both use it.

    @raise KeyRingError: as L{load_keyring}, or if the file cannot be created.
    """
    target = Path(path)
    if target.exists() or target.is_symlink():
        return load_keyring(target)
    ring = KeyRing.create(now)
    try:
        write_private_file(target, _serialise(ring), exclusive=True)
    except FileExistsError:
        return load_keyring(target)
    except OSError as e:
        raise KeyRingError(path, f"cannot create: {describe_os_error(e)}") from None
    return ring


def update_keyring(path: PathLike, change: Callable[[KeyRing], KeyRing]) -> tuple[KeyRing, KeyRing]:
    """
    Read the key ring at C{path}, apply C{change} to it, and save the result
    unless C{change} returned the ring itself (nothing to do).

    @return: the ring before and after.
    @raise KeyRingError: as L{load_keyring} and L{save_keyring}, or when
        C{change} refuses (its problem then names the file).
    """
    ring = load_keyring(path)
    try:
        new = change(ring)
    except KeyRingError as e:
        raise KeyRingError(path, e.problem) from None
    if new is not ring:
        save_keyring(path, new)
    return ring, new
