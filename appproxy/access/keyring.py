"""
The key ring that encrypts session cookies and sealed blobs.

The ring lives in the service's state directory as C{session-keys.json}
(mode 0600)::

    {"version": 1,
     "keys": [{"id": "k3Jx_a9Q", "created": 1717000000,
               "secret": "<32 bytes, base64url>", "retired": false}]}

The newest key that is not retired (the I{current} key) encrypts new cookies;
every key that is not retired decrypts.  Rotation adds a key and makes it
current, so cookies made under the old key keep working until that key is
retired; a retired key decrypts nothing, and can then be removed.

The value types are pure; L{load_keyring}, L{load_or_create_keyring} and
L{save_keyring} do the file I/O, and L{add_keys_command} adds the
C{appproxy keys} administration command.  Secrets never appear in a C{repr}
or in an exception message.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import TextIO

import attrs

from appproxy.state.files import (
    PrivateFileError,
    describe_os_error,
    read_private_file,
    write_private_file,
)

__all__ = [
    "KEYRING_FILENAME",
    "SECRET_BYTES",
    "CookieKey",
    "KeyRing",
    "KeyRingError",
    "add_keys_command",
    "load_keyring",
    "load_or_create_keyring",
    "save_keyring",
]

#: The key ring's file name in the state directory.
KEYRING_FILENAME = "session-keys.json"

#: The length of a key's secret (an AES-256 key).
SECRET_BYTES = 32

_FORMAT_VERSION = 1
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]*={0,2}\Z")
_KEY_FIELDS = frozenset({"id", "created", "secret", "retired"})
_FILE_FIELDS = frozenset({"version", "keys"})

PathLike = str | os.PathLike[str]


class KeyRingError(ValueError):
    """
    A key ring file, or an operation on a key ring, is unusable.

    Its C{str} is one line: the file (if any) and the problem.

    @ivar path: the key ring file, or L{None} for a problem with a ring in memory.
    @ivar problem: what is wrong, in a few words (never a secret).
    """

    def __init__(self, path: PathLike | None, problem: str) -> None:
        super().__init__(path, problem)
        self.path = None if path is None else os.fspath(path)
        self.problem = problem

    def __str__(self) -> str:
        if self.path is None:
            return self.problem
        return f"{self.path}: {self.problem}"


def _check_key_id(instance: object, attribute: object, value: str) -> None:
    if not isinstance(value, str) or not _KEY_ID_RE.match(value):
        raise ValueError(f"key id {value!r} must be 1-64 letters, digits, '-' or '_'")


def _check_secret(instance: object, attribute: object, value: bytes) -> None:
    # The value itself is never shown.
    if not isinstance(value, bytes) or len(value) != SECRET_BYTES:
        raise ValueError(f"a key's secret must be {SECRET_BYTES} bytes")


def _check_created(instance: object, attribute: object, value: int) -> None:
    if type(value) is not int:
        raise ValueError("a key's creation time must be an integer")


@attrs.frozen(kw_only=True)
class CookieKey:
    """
    One key of the ring.

    @ivar id: the key's id, named in every cookie it encrypts
        (1-64 letters, digits, C{-} or C{_}; generated ids are 8 characters).
    @ivar secret: the 32-byte AES-256 key; left out of C{repr}.
    @ivar created: when the key was made (POSIX seconds).
    @ivar retired: a retired key decrypts nothing; it is kept only until it
        is removed.
    """

    id: str = attrs.field(validator=_check_key_id)
    secret: bytes = attrs.field(repr=False, validator=_check_secret)
    created: int = attrs.field(validator=_check_created)
    retired: bool = False


def _new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def _new_key_id(taken: set[str]) -> str:
    while True:
        key_id = secrets.token_urlsafe(6)  # 6 bytes: 8 characters
        if key_id not in taken:
            return key_id


@attrs.frozen(kw_only=True)
class KeyRing:
    """
    The cookie keys, in the order of the file (oldest first, as a rule).

    A ring always has at least one key that is not retired, and no two keys
    share an id: constructing one that breaks either rule raises
    L{KeyRingError}.

    @ivar keys: every key, retired ones included.
    """

    keys: tuple[CookieKey, ...]
    _active: dict[str, CookieKey] = attrs.field(init=False, repr=False, eq=False)
    _current: CookieKey = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.keys, tuple):
            raise TypeError("KeyRing.keys must be a tuple")
        seen: set[str] = set()
        for key in self.keys:
            if key.id in seen:
                raise KeyRingError(None, f"duplicate key id {key.id!r}")
            seen.add(key.id)
        active = [(key.created, index, key) for index, key in enumerate(self.keys)]
        active = [entry for entry in active if not entry[2].retired]
        if not active:
            raise KeyRingError(None, "no active (non-retired) key")
        # Newest first by creation time; a tie goes to the later one in the file.
        object.__setattr__(self, "_current", max(active, key=lambda e: (e[0], e[1]))[2])
        object.__setattr__(self, "_active", {key.id: key for _, _, key in active})

    @classmethod
    def create(cls, now: int, secret: bytes | None = None) -> KeyRing:
        """A new ring of one key, made at C{now} (with C{secret}, or a random one)."""
        key = CookieKey(
            id=_new_key_id(set()),
            secret=_new_secret() if secret is None else secret,
            created=now,
        )
        return cls(keys=(key,))

    @property
    def current(self) -> CookieKey:
        """The key that encrypts: the newest key that is not retired."""
        return self._current

    @property
    def active(self) -> tuple[CookieKey, ...]:
        """The keys that decrypt (not retired), in file order."""
        return tuple(self._active.values())

    def find(self, key_id: str) -> CookieKey | None:
        """The key C{key_id} if it is in the ring and not retired; else L{None}."""
        return self._active.get(key_id)

    def _index(self, key_id: str) -> int:
        for index, key in enumerate(self.keys):
            if key.id == key_id:
                return index
        raise KeyRingError(None, f"no key with id {key_id!r}")

    def rotated(self, now: int, secret: bytes | None = None) -> KeyRing:
        """
        This ring plus a fresh key, which becomes L{current}.

        @param now: the new key's creation time.
        @param secret: its secret; random if L{None}.
        """
        key = CookieKey(
            id=_new_key_id({key.id for key in self.keys}),
            secret=_new_secret() if secret is None else secret,
            created=now,
        )
        return KeyRing(keys=(*self.keys, key))

    def retired(self, key_id: str) -> KeyRing:
        """
        This ring with the key C{key_id} retired (a no-op if it already is).

        @raise KeyRingError: if there is no such key, or if it is the only
            active key.
        """
        index = self._index(key_id)
        key = self.keys[index]
        if key.retired:
            return self
        if len(self._active) == 1:
            raise KeyRingError(None, "cannot retire the only active key; rotate first")
        keys = list(self.keys)
        keys[index] = attrs.evolve(key, retired=True)
        return KeyRing(keys=tuple(keys))

    def without(self, key_id: str) -> KeyRing:
        """
        This ring without the retired key C{key_id}.

        @raise KeyRingError: if there is no such key, or if it is not retired.
        """
        index = self._index(key_id)
        if not self.keys[index].retired:
            raise KeyRingError(None, f"key {key_id!r} is not retired; retire it first")
        return KeyRing(keys=self.keys[:index] + self.keys[index + 1 :])


# ---------------------------------------------------------------------------
# the file


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
    if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
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


# ---------------------------------------------------------------------------
# appproxy keys ...


def _keyring_path(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) / KEYRING_FILENAME


def _iso(created: int) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    ring = load_keyring(_keyring_path(args))
    width = max(len("ID"), *(len(key.id) for key in ring.keys))
    print(f"{'ID':<{width}}  {'CREATED (UTC)':<20}  STATE", file=out)
    for key in ring.keys:
        if key.retired:
            state = "retired"
        elif key is ring.current:
            state = "current"
        else:
            state = "active"
        print(f"{key.id:<{width}}  {_iso(key.created):<20}  {state}", file=out)
    return 0


_RELOAD_HINT = (
    "The running service uses the change after a reload "
    "(systemctl reload appproxy, or kill -HUP its process)."
)


def _cmd_rotate(args: argparse.Namespace, out: TextIO) -> int:
    path = _keyring_path(args)
    now = int(time.time())
    if not (path.exists() or path.is_symlink()):
        ring = load_or_create_keyring(path, now)
        print(f"Created {path} with key {ring.current.id}.", file=out)
        print(_RELOAD_HINT, file=out)
        return 0
    ring = load_keyring(path).rotated(now)
    save_keyring(path, ring)
    print(f"Added key {ring.current.id}; it is now the current key.", file=out)
    print("Cookies made under the older keys stay valid until those keys are retired.", file=out)
    print(_RELOAD_HINT, file=out)
    print(
        "With several service processes, reload them all before retiring the old key.",
        file=out,
    )
    return 0


def _cmd_retire(args: argparse.Namespace, out: TextIO) -> int:
    path = _keyring_path(args)
    ring = load_keyring(path)
    try:
        new = ring.retired(args.key_id)
    except KeyRingError as e:
        raise KeyRingError(path, e.problem) from None
    if new is ring:
        print(f"Key {args.key_id} was already retired.", file=out)
        return 0
    save_keyring(path, new)
    print(f"Retired key {args.key_id}: cookies made under it are no longer accepted.", file=out)
    print(_RELOAD_HINT, file=out)
    return 0


def _cmd_remove(args: argparse.Namespace, out: TextIO) -> int:
    path = _keyring_path(args)
    ring = load_keyring(path)
    try:
        new = ring.without(args.key_id)
    except KeyRingError as e:
        raise KeyRingError(path, e.problem) from None
    save_keyring(path, new)
    print(f"Removed key {args.key_id}.", file=out)
    return 0


def add_keys_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{appproxy keys list|rotate|retire KEY_ID|remove KEY_ID --state-dir DIR}.

    Each subcommand's C{func} is C{(args, out) -> int}; problems raise
    L{KeyRingError} (a L{ValueError}) with a one-line message, or
    L{OSError}.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        required=True,
        metavar="DIR",
        help=f"the service's state directory (holding {KEYRING_FILENAME})",
    )
    parser = subparsers.add_parser(
        "keys",
        help="list, rotate, retire and remove the session cookie keys",
        description=(
            f"Manage the keys in DIR/{KEYRING_FILENAME} that encrypt session cookies. "
            "Rotate to add a new current key; once every service process has reloaded, "
            "retire the old key (its cookies are then refused); then remove it."
        ),
    )
    commands = parser.add_subparsers(
        title="key commands", metavar="COMMAND", dest="keys_command", required=True
    )
    listing = commands.add_parser(
        "list", parents=[common], help="show each key's id, creation time and state"
    )
    listing.set_defaults(func=_cmd_list)
    rotate = commands.add_parser(
        "rotate", parents=[common], help="add a new key and make it the current one"
    )
    rotate.set_defaults(func=_cmd_rotate)
    retire = commands.add_parser(
        "retire", parents=[common], help="stop accepting cookies made under KEY_ID"
    )
    retire.add_argument("key_id", metavar="KEY_ID")
    retire.set_defaults(func=_cmd_retire)
    remove = commands.add_parser(
        "remove", parents=[common], help="delete the retired key KEY_ID from the file"
    )
    remove.add_argument("key_id", metavar="KEY_ID")
    remove.set_defaults(func=_cmd_remove)
