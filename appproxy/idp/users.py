"""
The built-in identity provider's users: the C{users.json} file and the
changes the C{appproxy users} commands make to it (L{appproxy.cli.users}
parses and prints; the password hashes are L{appproxy.idp.passwords}).

The file lives in the service's state directory, mode 0600, and is always
replaced atomically (a 0600 temporary file in the same directory, then
C{os.replace})::

    {"version": 1,
     "users": {"alice": {"password": "scrypt$16384$8$1$<salt>$<hash>",
                         "name": "Alice Doe", "email": "alice@example.com",
                         "groups": ["staff"], "roles": ["editor"],
                         "totp": "<base32 secret>" or null, "disabled": false}}}

User names are unique regardless of case, as app assignment
(C{allowed_users}) compares them: adding one that differs from another only
in case is refused.  Sign-in looks the name up exactly as stored; should a
file hold two such names (written by hand, or by an older version), neither
signs in until one is removed.

Checking the password of a user who does not exist costs the same scrypt
time, so response times do not tell which user names exist.  Hashing takes
tens of milliseconds: callers on the reactor thread must run
L{UserStore.verify_password} in a thread.

Pure: blocking file I/O on the standard library, no reactor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from appproxy.idp import totp
from appproxy.idp.passwords import (
    DECOY_HASH,
    check_password_hash,
    hash_password,
    verify_password_hash,
)
from appproxy.state.files import PrivateFileError, read_private_file, write_private_file

__all__ = [
    "USERS_FILE",
    "User",
    "UserStore",
    "add_user",
    "check_user_name",
    "remove_user",
    "update_user",
]

#: The users file's name in the state directory.
USERS_FILE: Final = "users.json"

_VERSION = 1

_USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}\Z")
_USER_KEYS = frozenset({"password", "name", "email", "groups", "roles", "totp", "disabled"})


@attrs.frozen(kw_only=True)
class User:
    """
    A user of the built-in identity provider.

    @ivar name: the user name: what the user types, and the ID token's C{sub}
        and C{preferred_username}.
    @ivar display_name: the C{name} claim, if set.
    @ivar email: the C{email} claim, if set.
    @ivar groups: the C{groups} claim.
    @ivar roles: the C{roles} claim.
    @ivar totp_secret: the base32 TOTP secret; L{None} if the user has no
        second factor.
    @ivar disabled: a disabled user cannot sign in (and existing sign-ins at
        the provider end).
    @ivar password_hash: the scrypt hash (see L{appproxy.idp.passwords.hash_password}).
    """

    name: str
    display_name: str | None = None
    email: str | None = None
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    totp_secret: str | None = attrs.field(default=None, repr=False)
    disabled: bool = False
    password_hash: str = attrs.field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The user's entry in C{users.json} (without the name, its key)."""
        return {
            "password": self.password_hash,
            "name": self.display_name,
            "email": self.email,
            "groups": list(self.groups),
            "roles": list(self.roles),
            "totp": self.totp_secret,
            "disabled": self.disabled,
        }


def check_user_name(name: str) -> str:
    """
    C{name}, if it can be a user name.

    @raise ValueError: if it cannot.
    """
    if not _USER_NAME_RE.match(name):
        raise ValueError(
            f"user name {name!r} must be 1-128 letters, digits, '.', '_', '@', '+' or '-'"
            " and start with a letter or digit"
        )
    return name


def _check_text(value: str, what: str) -> str:
    if not value.strip() or any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError(f"{what} {value!r} is empty or contains control characters")
    if len(value) > 256:
        raise ValueError(f"{what} is longer than 256 characters")
    return value


def _check_email(value: str) -> str:
    _check_text(value, "e-mail address")
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(char.isspace() for char in value):
        raise ValueError(f"e-mail address {value!r} is not of the form name@domain")
    return value


def _check_names(values: Iterable[str], what: str) -> tuple[str, ...]:
    result: list[str] = []
    for value in values:
        _check_text(value, what)
        if "," in value:
            raise ValueError(f"{what} {value!r} contains a comma")
        if value not in result:
            result.append(value)
    return tuple(result)


def _user_from_json(name: str, entry: object) -> User:
    """@raise ValueError: naming the user and the problem."""
    if not isinstance(entry, dict):
        raise ValueError(f"user {name!r} is not an object")
    unknown = sorted(set(entry) - _USER_KEYS)
    if unknown:
        raise ValueError(f"user {name!r} has unknown key {unknown[0]!r}")
    password = entry.get("password")
    if not isinstance(password, str):
        raise ValueError(f"user {name!r} has no password hash")

    def optional_str(key: str) -> str | None:
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"user {name!r}: {key!r} must be a string or null")
        return value

    def strings(key: str) -> tuple[str, ...]:
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"user {name!r}: {key!r} must be a list of strings")
        return tuple(value)

    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        raise ValueError(f"user {name!r}: 'disabled' must be true or false")
    try:
        check_user_name(name)
        check_password_hash(password)
        totp_secret = optional_str("totp")
        if totp_secret is not None:
            totp.decode_secret(totp_secret)
        return User(
            name=name,
            display_name=optional_str("name"),
            email=optional_str("email"),
            groups=strings("groups"),
            roles=strings("roles"),
            totp_secret=totp_secret,
            disabled=disabled,
            password_hash=password,
        )
    except ValueError as e:
        raise ValueError(f"user {name!r}: {e}") from None


@attrs.frozen
class UserStore:
    """
    The users, as read from (or to be written to) C{users.json}.

    Immutable: the C{with_}/C{without_} methods return a new store.
    """

    users: Mapping[str, User] = attrs.field(factory=dict)

    @classmethod
    def load(cls, path: Path | str) -> UserStore:
        """
        Read C{path}.  A missing file is an empty store (no users yet).

        @raise ValueError: one line naming the file and the problem: readable
            by group or others, not a regular file, not JSON, or not the
            expected structure.
        """
        path = Path(path)
        try:
            data = read_private_file(path)
        except FileNotFoundError:
            return cls()
        except PrivateFileError as e:
            raise ValueError(f"{path}: {e.problem}") from None
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        try:
            return cls.from_json(document)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_json(cls, document: object) -> UserStore:
        """@raise ValueError: if C{document} is not a users document."""
        if not isinstance(document, dict):
            raise ValueError("the top level is not an object")
        if document.get("version") != _VERSION:
            raise ValueError(f"'version' must be {_VERSION}")
        unknown = sorted(set(document) - {"version", "users"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}")
        entries = document.get("users", {})
        if not isinstance(entries, dict):
            raise ValueError("'users' is not an object")
        return cls({name: _user_from_json(name, entry) for name, entry in entries.items()})

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "users": {name: self.users[name].to_json() for name in sorted(self.users)},
        }

    def save(self, path: Path | str) -> None:
        """Write the store to C{path} atomically, mode 0600."""
        path = Path(path)
        data = (json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        _write_atomically(path, data)

    def get(self, name: str) -> User | None:
        """The user named exactly C{name}, unless another's name differs only in case."""
        return None if self._ambiguous(name) else self.users.get(name)

    def same_name(self, name: str) -> str | None:
        """
        The stored user name that is C{name} up to case (as app assignment
        compares names: casefolded), or L{None}.
        """
        folded = name.casefold()
        if name in self.users:
            return name
        return next((stored for stored in self.users if stored.casefold() == folded), None)

    def check_new_name(self, name: str) -> None:
        """
        @raise ValueError: if a user of this name exists, or of a name that
            differs only in case.
        """
        stored = self.same_name(name)
        if stored == name:
            raise ValueError(f"user {name!r} already exists")
        if stored is not None:
            raise ValueError(
                f"user {stored!r} already exists, and user names that differ only in case"
                " are the same user to app assignment: choose another name"
            )

    def existing(self, name: str) -> User:
        """
        The user named C{name}.

        @raise ValueError: if there is none.
        """
        user = self.users.get(name)
        if user is None:
            raise ValueError(f"no user {name!r}")
        return user

    def with_user(self, user: User) -> UserStore:
        """A store with C{user} added or replaced."""
        return UserStore({**self.users, user.name: user})

    def without_user(self, name: str) -> UserStore:
        return UserStore({key: value for key, value in self.users.items() if key != name})

    def verify_password(self, name: str, password: str) -> User | None:
        """
        The user named C{name} if C{password} is theirs and they are not
        disabled; L{None} otherwise.  Always costs one scrypt computation,
        whether or not the user exists.  Blocking: run it in a thread.
        """
        user = self.get(name)
        # Loaded users' hashes are well formed (checked by from_json).
        encoded = user.password_hash if user is not None else DECOY_HASH
        ok = verify_password_hash(encoded, password)
        if user is None or user.disabled or not ok:
            return None
        return user

    def _ambiguous(self, name: str) -> bool:
        """Whether another user's name differs from C{name} only in case."""
        folded = name.casefold()
        return any(other != name and other.casefold() == folded for other in self.users)


def _write_atomically(path: Path, data: bytes) -> None:
    directory = path.parent
    if not directory.is_dir():
        raise ValueError(f"{directory} does not exist or is not a directory")
    write_private_file(path, data)


def add_user(
    path: Path | str,
    username: str,
    password: str,
    *,
    name: str | None = None,
    email: str | None = None,
    groups: Iterable[str] = (),
    roles: Iterable[str] = (),
    totp_secret: str | None = None,
) -> User:
    """
    Add a user to the users file at C{path} (created if missing).

    Only an empty password is refused here; the C{appproxy users} commands
    also refuse short ones.

    @raise ValueError: if the user exists (or one whose name differs only in
        case), or a value is invalid.
    """
    check_user_name(username)
    if not password:
        raise ValueError("the password must not be empty")
    if name is not None:
        _check_text(name, "name")
    if email is not None:
        _check_email(email)
    if totp_secret is not None:
        totp.decode_secret(totp_secret)
    store = UserStore.load(path)
    store.check_new_name(username)
    user = User(
        name=username,
        display_name=name,
        email=email,
        groups=_check_names(groups, "group"),
        roles=_check_names(roles, "role"),
        totp_secret=totp_secret,
        password_hash=hash_password(password),
    )
    store.with_user(user).save(path)
    return user


def update_user(path: Path | str, name: str, change: Callable[[User], User]) -> User:
    """
    Replace the user C{name} in the users file at C{path} with
    C{change(user)} (the file is read afresh, so changes made meanwhile are
    kept).

    @return: the changed user.
    @raise ValueError: if there is no such user, or the file is unusable.
    """
    store = UserStore.load(path)
    user = change(store.existing(name))
    store.with_user(user).save(path)
    return user


def remove_user(path: Path | str, name: str) -> None:
    """
    Remove the user C{name} from the users file at C{path}.

    @raise ValueError: if there is no such user, or the file is unusable.
    """
    store = UserStore.load(path)
    store.existing(name)
    store.without_user(name).save(path)
