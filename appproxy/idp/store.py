"""
What the built-in provider remembers between requests, and the interface of
the store that remembers it.

The records are frozen attrs values.  L{ProviderStore} is every operation the
endpoints need, each one step that a shared store (a database) could make
atomic; L{appproxy.idp.memory.MemoryStore} keeps everything in this process,
so a restart signs everyone out of the provider (not out of the apps) and the
provider must run in one process until a shared store replaces it.

Pure: no reactor, no twisted.web.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Protocol

import attrs

from appproxy.idp.users import User

__all__ = [
    "AccessGrant",
    "AuthRequest",
    "CodeGrant",
    "DeviceGrant",
    "Identity",
    "Login",
    "ProviderStore",
    "can_sign_in",
    "fingerprint",
    "new_token",
    "tokens_equal",
]


def new_token() -> str:
    """A new random token: 256 bits, base64url."""
    return secrets.token_urlsafe(32)


def tokens_equal(a: str, b: str) -> bool:
    """Are C{a} and C{b} the same?  Compared in constant time."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def fingerprint(password_hash: str) -> str:
    """Identifies a password without keeping the hash in each session."""
    return hashlib.sha256(password_hash.encode("utf-8")).hexdigest()


def can_sign_in(user: User | None, credential: str | None) -> bool:
    """
    Is C{user} there, enabled, and with the password whose L{fingerprint}
    is C{credential}?  (A changed password ends what the old one started.)
    """
    return user is not None and not user.disabled and fingerprint(user.password_hash) == credential


@attrs.frozen(kw_only=True)
class Identity:
    """Who signed in, how and when; what SSO sessions and grants carry."""

    user: str
    amr: tuple[str, ...]
    auth_time: int
    credential: str  # fingerprint of the password hash checked


@attrs.frozen(kw_only=True)
class AuthRequest:
    """A validated authorization request."""

    client_id: str
    redirect_uri: str
    state: str | None
    nonce: str | None
    code_challenge: str
    scope: tuple[str, ...]
    prompt: frozenset[str]
    max_age: int | None
    mfa: bool
    login_hint: str | None
    #: The app the user signs in to, as the sign-in page names it: one of
    #: the service's own apps (L{appproxy.idp.context.ProviderContext.app_names}), else L{None}.
    app: str | None = None


@attrs.frozen(kw_only=True)
class Login:
    """
    A sign-in in progress: the forms of one authorization request or one
    device approval, in one browser.
    """

    csrf: str
    browser: str
    auth: AuthRequest | None = None
    device_code: str | None = None
    step: str  # "password", "otp" or "confirm" (device, already signed in)
    user: str | None = None  # known after the password (or from the session)
    amr: tuple[str, ...] = ()  # what is proven so far
    credential: str | None = None

    @property
    def endpoint(self) -> str:
        return "/authorize" if self.auth is not None else "/device"


@attrs.frozen(kw_only=True)
class CodeGrant:
    """What an authorization code stands for."""

    auth: AuthRequest
    identity: Identity


@attrs.frozen(kw_only=True)
class DeviceGrant:
    """A device waiting for its user's approval (RFC 8628)."""

    client_id: str
    scope: tuple[str, ...]
    user_code: str
    expires_at: float
    interval: int
    last_poll: float | None = None
    status: str = "pending"  # "approved", "denied"
    identity: Identity | None = None


@attrs.frozen(kw_only=True)
class AccessGrant:
    """What an access token (for userinfo) stands for."""

    user: str
    client_id: str
    scope: tuple[str, ...]


class ProviderStore(Protocol):
    """
    The provider's state between requests.  Every call takes the current
    time (POSIX seconds) where expiry matters; what has expired is absent.
    """

    # -- pending sign-ins (the forms), by login id

    def add_login(self, login_id: str, login: Login, now: float) -> None: ...

    def login(self, login_id: str, now: float) -> Login | None: ...

    def update_login(self, login_id: str, login: Login, now: float) -> None:
        """Replace a live login, keeping its expiry."""

    def end_login(self, login_id: str, now: float) -> None: ...

    # -- SSO sessions at the provider, by session id (the cookie's value)

    def add_session(self, session_id: str, identity: Identity, now: float) -> None: ...

    def session(self, session_id: str, now: float) -> Identity | None: ...

    def end_session(self, session_id: str, now: float) -> None: ...

    # -- authorization codes and access tokens

    def add_code(self, code: str, grant: CodeGrant, now: float) -> None: ...

    def take_code(self, code: str, now: float) -> CodeGrant | None:
        """The grant of C{code}, once: a code taken is spent."""

    def replay_code(self, code: str, now: float) -> bool:
        """
        Was C{code} spent already?  If so, revoke the access tokens it gave
        (RFC 6749 section 4.1.2) and forget it.
        """

    def add_access_token(
        self, token: str, grant: AccessGrant, now: float, *, code: str | None = None
    ) -> None:
        """Add C{token}; given by C{code} (spent), if set."""

    def access_token(self, token: str, now: float) -> AccessGrant | None: ...

    # -- device codes, and the user codes that name them

    def add_device(self, device_code: str, grant: DeviceGrant, now: float) -> None:
        """Add C{grant}, and its C{user_code} naming C{device_code}."""

    def device(self, device_code: str, now: float) -> DeviceGrant | None: ...

    def update_device(self, device_code: str, grant: DeviceGrant, now: float) -> None:
        """Replace a live device grant, keeping its expiry."""

    def end_device(self, device_code: str, now: float) -> None: ...

    def device_code_for(self, user_code: str, now: float) -> str | None: ...

    def release_user_code(self, user_code: str, now: float) -> None: ...

    # -- failed sign-in attempts, per user name and per client address

    def is_locked(self, user: str | None, address: str, now: float) -> bool:
        """Is C{user} (if given) or C{address} locked by failed attempts?"""

    def record_failure(self, user: str | None, address: str, now: float) -> None:
        """Count a failure (or an attempt whose outcome is not known yet)."""

    def clear_user_failures(self, user: str) -> None: ...

    def forgive_address_failure(self, address: str, now: float) -> None:
        """Take back one L{record_failure} of C{address}: the attempt succeeded."""

    # -- one-time codes

    def use_totp_step(self, user: str, step: int) -> bool:
        """
        Mark the TOTP time step C{step} used by C{user}; false if it, or a
        later one, was used already (a code serves one sign-in only).
        """
