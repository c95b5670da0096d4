"""
The key ring that encrypts session cookies and sealed blobs.

The newest key that is not retired (the I{current} key) encrypts new cookies;
every key that is not retired decrypts.  Rotation adds a key and makes it
current, so cookies made under the old key keep working until that key is
retired; a retired key decrypts nothing, and can then be removed.

Pure values: L{appproxy.access.keyring_file} reads and writes the ring's file,
L{appproxy.cli.keys} is the C{appproxy keys} command.  Secrets never appear in
a C{repr} or in an exception message.
"""

from __future__ import annotations

import os
import re

import attrs

from appproxy.access.session import new_token

__all__ = [
    "KEY_ID_RE",
    "SECRET_BYTES",
    "CookieKey",
    "KeyRing",
    "KeyRingError",
    "PathLike",
]

#: The length of a key's secret (an AES-256 key).
SECRET_BYTES = 32

#: What a key id is made of.
KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")

#: A file's path, as L{KeyRingError} names it.
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
    if not isinstance(value, str) or not KEY_ID_RE.match(value):
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
        key_id = new_token(6)  # 6 bytes: 8 characters, never starting with '-'
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
