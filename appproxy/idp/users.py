"""
The built-in identity provider's users: the C{users.json} file, password
hashing, and the C{appproxy users} commands that manage them.

The file lives in the service's state directory, mode 0600, and is always
replaced atomically (a 0600 temporary file in the same directory, then
C{os.replace})::

    {"version": 1,
     "users": {"alice": {"password": "scrypt$16384$8$1$<salt>$<hash>",
                         "name": "Alice Doe", "email": "alice@example.com",
                         "groups": ["staff"], "roles": ["editor"],
                         "totp": "<base32 secret>" or null, "disabled": false}}}

Passwords are hashed with scrypt (n=2**14, r=8, p=1, 16-byte salt, 32-byte
key) and compared in constant time; checking a user who does not exist costs
the same scrypt time, so response times do not tell which user names exist.
Hashing takes tens of milliseconds: callers on the reactor thread must run
L{UserStore.verify_password} in a thread.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import json
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TextIO

import attrs

from appproxy.idp import totp
from appproxy.state.files import PrivateFileError, read_private_file, write_private_file

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "USERS_FILE",
    "User",
    "UserStore",
    "add_user",
    "add_users_command",
    "hash_password",
    "verify_password_hash",
]

#: The users file's name in the state directory.
USERS_FILE: Final = "users.json"
#: The shortest password the C{appproxy users} commands accept.
MIN_PASSWORD_LENGTH: Final = 8

_VERSION = 1
_FILE_MODE = 0o600

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

_USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}\Z")
_USER_KEYS = frozenset({"password", "name", "email", "groups", "roles", "totp", "disabled"})


# ---------------------------------------------------------------------------
# password hashes


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


# Compared against when the user does not exist (or is disabled): the same work
# as a real check, a result that is never used.
_DUMMY_HASH = f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(bytes(16))}${_b64(bytes(32))}"


# ---------------------------------------------------------------------------
# users and the file


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
    @ivar password_hash: the scrypt hash (see L{hash_password}).
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


def _check_user_name(name: str) -> str:
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
        _check_user_name(name)
        _parse_hash(password)
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
        return self.users.get(name)

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
        user = self.users.get(name)
        # Loaded users' hashes are well formed (checked by from_json).
        encoded = user.password_hash if user is not None else _DUMMY_HASH
        ok = verify_password_hash(encoded, password)
        if user is None or user.disabled or not ok:
            return None
        return user


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

    @raise ValueError: if the user exists, or a value is invalid.
    """
    _check_user_name(username)
    if not password:
        raise ValueError("the password must not be empty")
    if name is not None:
        _check_text(name, "name")
    if email is not None:
        _check_email(email)
    if totp_secret is not None:
        totp.decode_secret(totp_secret)
    store = UserStore.load(path)
    if username in store.users:
        raise ValueError(f"user {username!r} already exists")
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


# ---------------------------------------------------------------------------
# the "appproxy users" commands


def _users_path(args: argparse.Namespace) -> Path:
    state_dir = Path(args.state_dir)
    if not state_dir.is_dir():
        raise ValueError(f"{state_dir} does not exist or is not a directory")
    return state_dir / USERS_FILE


def _existing(store: UserStore, name: str) -> User:
    user = store.get(name)
    if user is None:
        raise ValueError(f"no user {name!r}")
    return user


def _comma_list(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _read_password(args: argparse.Namespace) -> str:
    """
    The new password: one line from stdin with C{--password-stdin} or when
    stdin is not a terminal; otherwise asked twice without echo.
    """
    if getattr(args, "password_stdin", False) or not sys.stdin.isatty():
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password again: ")
        except EOFError:
            raise ValueError("no password given (input ended)") from None
        if again != password:
            raise ValueError("the passwords do not match")
    if not password:
        raise ValueError("the password must not be empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    return password


def _cmd_add(args: argparse.Namespace, out: TextIO) -> int:
    path = _users_path(args)
    _check_user_name(args.user)
    if args.user in UserStore.load(path).users:
        raise ValueError(f"user {args.user!r} already exists")
    password = _read_password(args)
    add_user(
        path,
        args.user,
        password,
        name=args.name,
        email=args.email,
        groups=_comma_list(args.groups),
        roles=_comma_list(args.roles),
    )
    print(f"Added user {args.user} to {path}", file=out)
    return 0


def _cmd_passwd(args: argparse.Namespace, out: TextIO) -> int:
    path = _users_path(args)
    _existing(UserStore.load(path), args.user)
    password = _read_password(args)
    # Re-read: the file may have changed while the password was typed.
    store = UserStore.load(path)
    user = _existing(store, args.user)
    store.with_user(attrs.evolve(user, password_hash=hash_password(password))).save(path)
    print(f"Changed the password of {args.user}", file=out)
    return 0


def _cmd_totp(args: argparse.Namespace, out: TextIO) -> int:
    path = _users_path(args)
    store = UserStore.load(path)
    user = _existing(store, args.user)
    if args.disable:
        store.with_user(attrs.evolve(user, totp_secret=None)).save(path)
        print(f"Turned off the one-time codes of {args.user}", file=out)
        return 0
    secret = totp.generate_secret()
    store.with_user(attrs.evolve(user, totp_secret=secret)).save(path)
    print(f"One-time codes are now required for {args.user}.", file=out)
    print("Add this secret to an authenticator app (it is shown only once):", file=out)
    print(f"  secret: {secret}", file=out)
    print(f"  URI:    {totp.provisioning_uri(secret, args.user)}", file=out)
    return 0


def _cmd_remove(args: argparse.Namespace, out: TextIO) -> int:
    path = _users_path(args)
    store = UserStore.load(path)
    _existing(store, args.user)
    store.without_user(args.user).save(path)
    print(f"Removed user {args.user}", file=out)
    return 0


def _set_disabled(disabled: bool) -> Callable[[argparse.Namespace, TextIO], int]:
    def command(args: argparse.Namespace, out: TextIO) -> int:
        path = _users_path(args)
        store = UserStore.load(path)
        user = _existing(store, args.user)
        store.with_user(attrs.evolve(user, disabled=disabled)).save(path)
        print(f"{'Disabled' if disabled else 'Enabled'} user {args.user}", file=out)
        return 0

    return command


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    store = UserStore.load(_users_path(args))
    if not store.users:
        print("No users.", file=out)
        return 0
    rows = [("USER", "NAME", "EMAIL", "GROUPS", "ROLES", "TOTP", "STATE")]
    for name in sorted(store.users):
        user = store.users[name]
        rows.append(
            (
                name,
                user.display_name or "-",
                user.email or "-",
                ",".join(user.groups) or "-",
                ",".join(user.roles) or "-",
                "yes" if user.totp_secret else "no",
                "disabled" if user.disabled else "enabled",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    return 0


def add_users_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{appproxy users {add,passwd,totp,remove,disable,enable,list}}.

    Each subcommand's C{func} is C{(args, out) -> int}; errors raise
    L{ValueError} with a one-line message.
    """
    parser = subparsers.add_parser(
        "users",
        help="manage the built-in identity provider's users",
        description=f"Manage the users in STATE_DIR/{USERS_FILE} (the built-in provider's).",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(
        name: str, help: str, func: Callable[[argparse.Namespace, TextIO], int], user: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        if user:
            sub.add_argument("user", metavar="USER", help="the user name")
        sub.add_argument(
            "--state-dir", required=True, metavar="DIR", help="the service's state directory"
        )
        sub.set_defaults(func=func)
        return sub

    add = command("add", "add a user (asks for the password)", _cmd_add)
    add.add_argument("--name", default=None, help="display name (the 'name' claim)")
    add.add_argument("--email", default=None, help="e-mail address (the 'email' claim)")
    add.add_argument("--groups", default=None, metavar="A,B", help="comma-separated groups")
    add.add_argument("--roles", default=None, metavar="A,B", help="comma-separated roles")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from one line of stdin"
    )
    passwd = command("passwd", "set a user's password", _cmd_passwd)
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from one line of stdin"
    )
    totp_parser = command(
        "totp", "require one-time codes: print a new secret (shown once)", _cmd_totp
    )
    totp_parser.add_argument("--disable", action="store_true", help="stop requiring one-time codes")
    command("remove", "remove a user", _cmd_remove)
    command("disable", "stop a user from signing in", _set_disabled(True))
    command("enable", "let a disabled user sign in again", _set_disabled(False))
    command("list", "list the users", _cmd_list, user=False)
