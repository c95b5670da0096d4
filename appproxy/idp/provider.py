"""
The built-in OpenID provider: enough of OpenID Connect and OAuth 2.0 for
appproxy (or any relying party) to sign users in without an external
identity provider.

It implements the authorization code flow with PKCE (S256 only), the device
authorization grant (RFC 8628), discovery, a JWK set, userinfo and
RP-initiated sign-out.  ID tokens are ES256 JWTs signed with the key in
C{idp-signing-key.pem}.  Users are read from C{users.json} (see
L{appproxy.idp.users}); the file is re-read when it changes, so the
C{appproxy users} commands take effect without a restart.

Endpoints, under the issuer (which has no path)::

    /.well-known/openid-configuration   discovery
    /authorize                          GET: authorization request;
                                        POST: the sign-in forms
    /token                              authorization_code and device_code grants
    /jwks                               the public signing key
    /userinfo                           claims for a Bearer access token
    /end-session                        sign out of the provider
    /device_authorization               start a device sign-in
    /device                             where the user enters the device's code

ID tokens carry C{amr} (C{["pwd"]} or C{["pwd", "otp"]}), C{acr}
(L{ACR_PWD} or L{ACR_MFA}) and the user's C{preferred_username}, C{name},
C{email}, C{groups} and C{roles} whatever the scope asked (the clients are
appproxy's own).  A user with a TOTP secret always gives a code; an
authorization request whose C{acr_values} ask for MFA (L{MFA_ACR_VALUES})
makes a password-only SSO session give one too.

State kept in memory, in this process: pending sign-ins, SSO sessions (the
C{__Host-appproxy-idp} cookie names one), authorization codes, access tokens,
device codes, failed-attempt counters and the last TOTP step used per user.
A restart signs everyone out of the provider (not out of the apps).  Several
service processes serving one provider would need that state in shared
storage; today the provider must run in one process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import jwt
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.server import Request

from appproxy.idp import pages, totp
from appproxy.idp.memory import ExpiringMap, FailureCounter
from appproxy.idp.signing import SigningKey, load_or_create_signing_key
from appproxy.idp.users import User, UserStore

__all__ = [
    "ACR_MFA",
    "ACR_PWD",
    "MFA_ACR_VALUES",
    "SSO_COOKIE",
    "ClientRegistration",
    "IdentityProvider",
    "ProviderSettings",
    "SignInAttemptHook",
]

#: The provider's SSO session cookie (login host only).
SSO_COOKIE: Final = "__Host-appproxy-idp"
#: Binds a pending sign-in to the browser that started it (anti-forgery).
BROWSER_COOKIE: Final = "__Host-appproxy-idp-browser"

#: C{acr} of a sign-in with password and one-time code.
ACR_MFA: Final = "urn:appproxy:mfa"
#: C{acr} of a sign-in with a password only.
ACR_PWD: Final = "urn:appproxy:pwd"  # noqa: S105 - not a password
#: C{acr_values} that ask for a second factor.
MFA_ACR_VALUES: Final = frozenset(
    {"mfa", ACR_MFA, "http://schemas.openid.net/pape/policies/2007/06/multi-factor"}
)

DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
_AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post")
_SCOPES: Final = ("openid", "profile", "email", "groups", "roles")
_CLAIMS: Final = (
    "iss",
    "sub",
    "aud",
    "azp",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "amr",
    "acr",
    "at_hash",
    "preferred_username",
    "name",
    "email",
    "groups",
    "roles",
)

#: C{(user, address, ok, step)}: called after every checked sign-in step.
#: C{user} is the user name as typed (it may not exist), C{step} is
#: C{"password"} or C{"otp"}.
SignInAttemptHook = Callable[[str, str, bool, str], object]

_MAX_PARAMETER = 2048
_CODE_CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}\Z")
_CODE_VERIFIER_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}\Z")
_DIGITS_RE = re.compile(r"[0-9]{1,9}\Z")
_CLIENT_ID_RE = re.compile(r"[\x21-\x7e]{1,255}\Z")
# RFC 8628 section 6.1: no vowels, no look-alikes; 20**8 codes.
_USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"
_USER_CODE_LENGTH: Final = 8
_GENERIC_SIGN_IN_ERROR: Final = "Incorrect user name or password."
_MESSAGE_STALE: Final = (
    "This sign-in page has expired or was already used. "
    "Go back to the application and sign in again."
)
_MESSAGE_FORGED: Final = (
    "The sign-in form could not be verified. Make sure cookies are allowed for this site, "
    "then go back to the application and sign in again."
)

_log = Logger(namespace="appproxy.idp")


# ---------------------------------------------------------------------------
# settings


def _check_uri(uri: str, what: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(uri)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"{what} {uri!r} must be an https URL (http only on loopback)")
    if not parts.hostname or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{what} {uri!r} must have a host and no fragment or userinfo")
    if any(char <= " " or char == "\x7f" for char in uri):
        raise ValueError(f"{what} {uri!r} contains whitespace or control characters")
    return parts


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int | None]:
    default = {"https": 443, "http": 80}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return (parts.scheme, (parts.hostname or "").lower(), port if port is not None else default)


@attrs.frozen(kw_only=True)
class ClientRegistration:
    """
    A relying party allowed to use the provider.

    @ivar client_id: its C{client_id}.
    @ivar client_secret: its secret; L{None} for a public client, which may
        only use the device flow.
    @ivar redirect_uris: the exact redirect URIs it may use (https, or http
        on loopback).
    @ivar auth_methods: how it may authenticate at the token endpoint
        (C{client_secret_basic}, C{client_secret_post}).
    """

    client_id: str
    client_secret: str | None = attrs.field(repr=False)
    redirect_uris: tuple[str, ...] = ()
    auth_methods: tuple[str, ...] = _AUTH_METHODS

    def __attrs_post_init__(self) -> None:
        if not _CLIENT_ID_RE.match(self.client_id) or ":" in self.client_id:
            raise ValueError(f"client id {self.client_id!r} must be printable ASCII without ':'")
        if self.client_secret is None:
            if self.redirect_uris:
                raise ValueError(
                    f"client {self.client_id!r} is public (no secret): it may only use the"
                    " device flow, so it must have no redirect URIs"
                )
        elif len(self.client_secret) < 16:
            raise ValueError(f"client {self.client_id!r}: the secret is shorter than 16 characters")
        for uri in self.redirect_uris:
            _check_uri(uri, f"client {self.client_id!r}: redirect URI")
        unknown = set(self.auth_methods) - set(_AUTH_METHODS)
        if unknown or not self.auth_methods:
            raise ValueError(
                f"client {self.client_id!r}: auth_methods must be some of"
                f" {', '.join(_AUTH_METHODS)}"
            )

    @property
    def public(self) -> bool:
        return self.client_secret is None


@attrs.frozen(kw_only=True)
class ProviderSettings:
    """
    The built-in provider's configuration.  Times are in seconds.

    @ivar issuer: C{https://host[:port]}, no path, no trailing slash.
    @ivar clients: the relying parties.
    @ivar id_token_lifetime: how long an ID token is valid.
    @ivar access_token_lifetime: how long an access token (for userinfo) is
        valid.
    @ivar session_lifetime: how long a sign-in at the provider is reused for
        other apps without asking again.
    @ivar code_lifetime: how long an authorization code may wait to be
        exchanged.
    @ivar login_lifetime: how long a sign-in form stays usable.
    @ivar device_code_lifetime: how long a device code may wait for approval.
    @ivar device_poll_interval: the least interval between device polls.
    @ivar failure_limit: failed sign-in steps per user name within
        C{failure_window} before it is locked until the window ends.
    @ivar address_failure_limit: the same per client address (higher:
        people share addresses).
    @ivar failure_window: see C{failure_limit}.
    """

    issuer: str
    clients: tuple[ClientRegistration, ...]
    id_token_lifetime: int = 300
    access_token_lifetime: int = 300
    session_lifetime: int = 8 * 3600
    code_lifetime: int = 60
    login_lifetime: int = 600
    device_code_lifetime: int = 600
    device_poll_interval: int = 5
    failure_limit: int = 5
    address_failure_limit: int = 20
    failure_window: int = 600

    def __attrs_post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.issuer)
        if (
            parts.scheme != "https"
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username
            or self.issuer.endswith("/")
        ):
            raise ValueError(
                f"issuer {self.issuer!r} must be https://host[:port] with no path or trailing '/'"
            )
        ids = [client.client_id for client in self.clients]
        duplicates = sorted({client_id for client_id in ids if ids.count(client_id) > 1})
        if duplicates:
            raise ValueError(f"client id {duplicates[0]!r} is registered more than once")
        for name in (
            "id_token_lifetime",
            "access_token_lifetime",
            "session_lifetime",
            "code_lifetime",
            "login_lifetime",
            "device_code_lifetime",
            "device_poll_interval",
            "failure_limit",
            "address_failure_limit",
            "failure_window",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def client(self, client_id: str) -> ClientRegistration | None:
        for client in self.clients:
            if client.client_id == client_id:
                return client
        return None


# ---------------------------------------------------------------------------
# in-memory records


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def _fingerprint(password_hash: str) -> str:
    """Identifies a password without keeping the hash in each session."""
    return hashlib.sha256(password_hash.encode("utf-8")).hexdigest()


@attrs.frozen(kw_only=True)
class _Identity:
    """Who signed in, how and when; what SSO sessions and grants carry."""

    user: str
    amr: tuple[str, ...]
    auth_time: int
    credential: str  # _fingerprint of the password hash checked


@attrs.frozen(kw_only=True)
class _AuthRequest:
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


@attrs.frozen(kw_only=True)
class _Login:
    """
    A sign-in in progress: the forms of one authorization request or one
    device approval, in one browser.
    """

    csrf: str
    browser: str
    auth: _AuthRequest | None = None
    device_code: str | None = None
    step: str  # "password", "otp" or "confirm" (device, already signed in)
    user: str | None = None  # known after the password (or from the session)
    amr: tuple[str, ...] = ()  # what is proven so far
    credential: str | None = None

    @property
    def endpoint(self) -> str:
        return "/authorize" if self.auth is not None else "/device"


@attrs.frozen(kw_only=True)
class _CodeGrant:
    auth: _AuthRequest
    identity: _Identity


@attrs.frozen(kw_only=True)
class _DeviceGrant:
    client_id: str
    scope: tuple[str, ...]
    user_code: str
    expires_at: float
    interval: int
    last_poll: float | None = None
    status: str = "pending"  # "approved", "denied"
    identity: _Identity | None = None


@attrs.frozen(kw_only=True)
class _AccessGrant:
    user: str
    client_id: str
    scope: tuple[str, ...]


# ---------------------------------------------------------------------------
# request helpers


class _AuthorizationError(Exception):
    """An error to send back to a valid client's redirect URI."""

    def __init__(self, error: str, description: str, state: str | None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.state = state


class _BadParameter(Exception):
    """A request parameter is repeated, not UTF-8, or too long."""


class _PageError(Exception):
    """Answer with an HTML message page."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class _OAuthError(Exception):
    """An RFC 6749 error (token endpoint style: JSON)."""

    def __init__(
        self, error: str, description: str, status: int = 400, challenge: bytes | None = None
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.challenge = challenge


def _param(request: Request, name: str) -> str | None:
    """
    One request parameter (query or form body); L{None} if absent or empty
    (RFC 6749 section 3.1: an empty parameter is an omitted one).

    @raise _BadParameter: if it is repeated, not UTF-8, or too long.
    """
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise _BadParameter(f"the {name} parameter is repeated")
    try:
        text: str = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _BadParameter(f"the {name} parameter is not UTF-8") from None
    if len(text) > _MAX_PARAMETER:
        raise _BadParameter(f"the {name} parameter is too long")
    return text or None


def _has_query(request: Request) -> bool:
    return b"?" in (request.uri or b"")


def _cookie(request: Request, name: str) -> str | None:
    value = request.getCookie(name.encode("ascii"))
    if not value:
        return None
    try:
        text: str = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if len(text) <= 128 else None


def _set_cookie(request: Request, name: str, value: str) -> None:
    request.addCookie(name, value, path="/", secure=True, httpOnly=True, sameSite="lax")


def _clear_cookie(request: Request, name: str) -> None:
    request.addCookie(
        name,
        "",
        path="/",
        secure=True,
        httpOnly=True,
        sameSite="lax",
        max_age="0",
        expires="Thu, 01 Jan 1970 00:00:00 GMT",
    )


def _client_address(request: Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return str(host) if host else "unknown"


def _no_store(request: Request) -> None:
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"pragma", b"no-cache")


def _html(request: Request, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", pages.CONTENT_SECURITY_POLICY.encode("ascii"))
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    _no_store(request)
    return body


def _message(request: Request, status: int, title: str, message: str) -> bytes:
    return _html(request, status, pages.message_page(title, message))


def _json(
    request: Request, status: int, document: Mapping[str, Any], *, cacheable: bool = False
) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"x-content-type-options", b"nosniff")
    if not cacheable:
        _no_store(request)
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _oauth_error(request: Request, error: _OAuthError) -> bytes:
    if error.challenge is not None:
        request.setHeader(b"www-authenticate", error.challenge)
    return _json(
        request, error.status, {"error": error.error, "error_description": error.description}
    )


def _with_query(uri: str, parameters: Mapping[str, str | None]) -> str:
    query = urllib.parse.urlencode({k: v for k, v in parameters.items() if v is not None})
    if not query:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}{query}"


def _redirect(request: Request, location: str, status: int = 302) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"location", location.encode("utf-8"))
    request.setHeader(b"referrer-policy", b"no-referrer")
    _no_store(request)
    return b""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _s256(verifier: str) -> str:
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _normalize_user_code(text: str) -> str:
    return "".join(char for char in text.upper() if char in _USER_CODE_ALPHABET)


def _format_user_code(code: str) -> str:
    half = len(code) // 2
    return f"{code[:half]}-{code[half:]}"


# ---------------------------------------------------------------------------
# resources


class _Endpoint(resource.Resource):
    """A leaf resource dispatching on the method (HEAD is served as GET)."""

    isLeaf = True

    def __init__(self, handlers: Mapping[bytes, Callable[[Request], Any]]) -> None:
        super().__init__()
        self._handlers = dict(handlers)

    def render(self, request: Request) -> Any:
        if request.postpath not in ([], [b""]):
            return _message(request, 404, "Not found", "There is nothing here.")
        handler = self._handlers.get(request.method)
        if handler is None:
            raise resource.UnsupportedMethod(sorted(self._handlers))
        return handler(request)


class _Root(resource.Resource):
    def getChild(self, path: bytes, request: Request) -> resource.IResource:
        return _Endpoint({b"GET": self._not_found, b"POST": self._not_found})

    def render(self, request: Request) -> bytes:
        return self._not_found(request)

    @staticmethod
    def _not_found(request: Request) -> bytes:
        return _message(request, 404, "Not found", "There is nothing here.")


class _UsersFile:
    """C{users.json}, re-read whenever it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._stat()
        # A bad file stops the service at start.
        self._store = UserStore.load(path)

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode)

    def current(self) -> UserStore:
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._store = UserStore.load(self.path)
            except ValueError as e:
                # Fail closed: nobody signs in until the file is fixed.
                _log.error("Cannot read the users file, no one can sign in: {error}", error=str(e))
                self._store = UserStore()
        return self._store


# ---------------------------------------------------------------------------
# the provider


class IdentityProvider:
    """
    The built-in OpenID provider.  Mount L{resource} at the issuer's root.

    @ivar settings: its configuration.
    @ivar resource: the C{twisted.web} resource tree.
    @ivar signing_key: the ID-token signing key.
    @ivar on_sign_in_attempt: a L{SignInAttemptHook}, or L{None}.
    """

    def __init__(
        self,
        settings: ProviderSettings,
        users_path: Path | str,
        signing_key_path: Path | str,
        clock: IReactorTime,
        reactor: IReactorThreads,
        *,
        on_sign_in_attempt: SignInAttemptHook | None = None,
    ) -> None:
        """
        @param users_path: C{users.json} (it may not exist yet: no users).
        @param signing_key_path: C{idp-signing-key.pem} (created if missing).
        @param clock: the time source (POSIX seconds).
        @param reactor: runs password checks in its thread pool.
        @raise ValueError: if the users file or the key file is unusable.
        """
        self.settings = settings
        self.on_sign_in_attempt = on_sign_in_attempt
        self._clock = clock
        self._reactor = reactor
        self._users = _UsersFile(Path(users_path))
        self.signing_key: SigningKey = load_or_create_signing_key(signing_key_path)
        s = settings
        self._logins: ExpiringMap[str, _Login] = ExpiringMap(
            lifetime=s.login_lifetime, capacity=10_000
        )
        self._sessions: ExpiringMap[str, _Identity] = ExpiringMap(
            lifetime=s.session_lifetime, capacity=100_000
        )
        self._codes: ExpiringMap[str, _CodeGrant] = ExpiringMap(
            lifetime=s.code_lifetime, capacity=10_000
        )
        # Codes exchanged already, with the access tokens they gave: a replay
        # revokes them (RFC 6749 section 4.1.2).
        self._spent_codes: ExpiringMap[str, list[str]] = ExpiringMap(
            lifetime=max(s.code_lifetime, s.access_token_lifetime), capacity=10_000
        )
        self._access_tokens: ExpiringMap[str, _AccessGrant] = ExpiringMap(
            lifetime=s.access_token_lifetime, capacity=100_000
        )
        # Kept past their expiry for a while, to answer "expired_token".
        self._devices: ExpiringMap[str, _DeviceGrant] = ExpiringMap(
            lifetime=2 * s.device_code_lifetime, capacity=10_000
        )
        self._user_codes: ExpiringMap[str, str] = ExpiringMap(
            lifetime=s.device_code_lifetime, capacity=10_000
        )
        self._user_failures = FailureCounter(limit=s.failure_limit, window=s.failure_window)
        self._address_failures = FailureCounter(
            limit=s.address_failure_limit, window=s.failure_window
        )
        self._totp_steps: dict[str, int] = {}
        self._discovery = json.dumps(self._discovery_document(), indent=2).encode("utf-8")
        self.resource: resource.IResource = self._build_resource()

    # -- plumbing --------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock.seconds())

    def _build_resource(self) -> resource.IResource:
        root = _Root()
        well_known = _Root()
        well_known.putChild(b"openid-configuration", _Endpoint({b"GET": self._render_discovery}))
        root.putChild(b".well-known", well_known)
        children: dict[bytes, Mapping[bytes, Callable[[Request], Any]]] = {
            b"authorize": {b"GET": self._render_authorize, b"POST": self._render_authorize_post},
            b"token": {b"POST": self._render_token},
            b"jwks": {b"GET": self._render_jwks},
            b"userinfo": {b"GET": self._render_userinfo, b"POST": self._render_userinfo},
            b"end-session": {b"GET": self._render_end_session, b"POST": self._render_end_session},
            b"device_authorization": {b"POST": self._render_device_authorization},
            b"device": {b"GET": self._render_device, b"POST": self._render_device_post},
        }
        for name, handlers in children.items():
            root.putChild(name, _Endpoint(handlers))
        return root

    def _discovery_document(self) -> dict[str, Any]:
        issuer = self.settings.issuer
        auth_methods = sorted(
            {
                method
                for client in self.settings.clients
                if not client.public
                for method in client.auth_methods
            }
            or set(_AUTH_METHODS)
        )
        if any(client.public for client in self.settings.clients):
            auth_methods.append("none")
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{issuer}/jwks",
            "userinfo_endpoint": f"{issuer}/userinfo",
            "end_session_endpoint": f"{issuer}/end-session",
            "device_authorization_endpoint": f"{issuer}/device_authorization",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", DEVICE_GRANT],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.signing_key.algorithm],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "scopes_supported": list(_SCOPES),
            "claims_supported": list(_CLAIMS),
            "acr_values_supported": [ACR_PWD, ACR_MFA, *sorted(MFA_ACR_VALUES - {ACR_MFA})],
            "prompt_values_supported": ["none", "login"],
            "authorization_response_iss_parameter_supported": True,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "claims_parameter_supported": False,
        }

    def _later(self, request: Request, deferred: Deferred[bytes]) -> object:
        """Finish C{request} with what C{deferred} gives, unless it has gone."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def failed(failure: Failure) -> bytes:
            _log.failure("Sign-in step failed", failure)
            return _message(request, 500, "Sign-in failed", "Something went wrong. Try again.")

        def write(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        deferred.addErrback(failed).addCallback(write).addErrback(
            lambda failure: _log.failure("Cannot send the response", failure)
        )
        return server.NOT_DONE_YET

    def _report(self, user: str, address: str, ok: bool, step: str) -> None:
        hook = self.on_sign_in_attempt
        if hook is None:
            return
        try:
            hook(user, address, ok, step)
        except Exception:
            _log.failure("The sign-in attempt hook failed")

    def _session(self, request: Request, users: UserStore) -> tuple[str, _Identity] | None:
        """The browser's valid SSO session, if any."""
        session_id = _cookie(request, SSO_COOKIE)
        if session_id is None:
            return None
        identity = self._sessions.get(session_id, self._now())
        if identity is None:
            return None
        user = users.get(identity.user)
        if user is None or user.disabled or _fingerprint(user.password_hash) != identity.credential:
            self._sessions.pop(session_id, self._now())
            return None
        return session_id, identity

    def _browser(self, request: Request) -> str:
        browser = _cookie(request, BROWSER_COOKIE)
        if browser is None or len(browser) < 32:
            browser = _new_token()
            _set_cookie(request, BROWSER_COOKIE, browser)
        return browser

    def _new_login(self, request: Request, **fields: Any) -> tuple[str, _Login]:
        login_id = _new_token()
        login = _Login(csrf=_new_token(), browser=self._browser(request), **fields)
        self._logins.put(login_id, login, self._now())
        return login_id, login

    def _client_label(self, login: _Login) -> tuple[str, str | None]:
        """The client's name and, for a device, the code it shows."""
        if login.auth is not None:
            return login.auth.client_id, None
        grant = self._devices.get(login.device_code or "", self._now())
        if grant is None:
            return "a device", ""
        return grant.client_id, _format_user_code(grant.user_code)

    def _sign_in_form(
        self,
        request: Request,
        login_id: str,
        login: _Login,
        *,
        username: str = "",
        error: str | None = None,
    ) -> bytes:
        client, user_code = self._client_label(login)
        body = pages.sign_in_page(
            action=login.endpoint,
            login_id=login_id,
            csrf=login.csrf,
            client=client,
            username=username,
            error=error,
            deny_action="/device" if login.device_code is not None else None,
            user_code=user_code,
        )
        return _html(request, 200, body)

    def _otp_form(
        self, request: Request, login_id: str, login: _Login, error: str | None = None
    ) -> bytes:
        body = pages.otp_page(
            action=login.endpoint,
            login_id=login_id,
            csrf=login.csrf,
            user=login.user or "",
            error=error,
        )
        return _html(request, 200, body)

    def _current_form(self, request: Request, login_id: str, login: _Login) -> bytes:
        if login.step == "otp":
            return self._otp_form(request, login_id, login)
        if login.step == "confirm":
            return self._confirm_form(request, login_id, login)
        return self._sign_in_form(request, login_id, login)

    # -- discovery and keys -------------------------------------------------

    def _render_discovery(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"public, max-age=300")
        request.setHeader(b"content-type", b"application/json")
        return self._discovery

    def _render_jwks(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"public, max-age=300")
        return _json(request, 200, self.signing_key.jwks(), cacheable=True)

    # -- authorization ----------------------------------------------------

    def _parse_authorization(self, request: Request) -> _AuthRequest:
        """
        @raise _PageError: if the client or redirect URI is not valid (the
            browser must not be sent anywhere).
        @raise _AuthorizationError: for any other problem (to be sent to the
            redirect URI).
        """
        try:
            client_id = _param(request, "client_id")
            redirect_uri = _param(request, "redirect_uri")
        except _BadParameter as e:
            raise _PageError(400, "Invalid sign-in request", f"{e}.") from None
        client = self.settings.client(client_id) if client_id else None
        if client is None:
            raise _PageError(
                400,
                "Invalid sign-in request",
                "The application that sent you here is not registered with this sign-in service.",
            )
        if redirect_uri is None or redirect_uri not in client.redirect_uris:
            raise _PageError(
                400,
                "Invalid sign-in request",
                "The application asked to return to an address that is not registered for it.",
            )
        try:
            state = _param(request, "state")
            response_type = _param(request, "response_type")
            scope = tuple(dict.fromkeys((_param(request, "scope") or "").split()))
            nonce = _param(request, "nonce")
            challenge = _param(request, "code_challenge")
            method = _param(request, "code_challenge_method")
            prompt = frozenset((_param(request, "prompt") or "").split())
            max_age_text = _param(request, "max_age")
            acr_values = frozenset((_param(request, "acr_values") or "").split())
            response_mode = _param(request, "response_mode")
            login_hint = _param(request, "login_hint")
            has_request = _param(request, "request") is not None
            has_request_uri = _param(request, "request_uri") is not None
        except _BadParameter as e:
            # The state itself may be what is wrong: it cannot be sent back.
            raise _AuthorizationError("invalid_request", str(e), None) from None

        def fail(error: str, description: str) -> _AuthorizationError:
            return _AuthorizationError(error, description, state)

        if has_request:
            raise fail("request_not_supported", "request objects are not supported")
        if has_request_uri:
            raise fail("request_uri_not_supported", "request_uri is not supported")
        if response_type != "code":
            raise fail("unsupported_response_type", "only response_type=code is supported")
        if response_mode not in (None, "query"):
            raise fail("invalid_request", "only response_mode=query is supported")
        if "openid" not in scope:
            raise fail("invalid_scope", "the scope must include openid")
        if challenge is None or method != "S256":
            raise fail("invalid_request", "PKCE is required: code_challenge with method S256")
        if not _CODE_CHALLENGE_RE.match(challenge):
            raise fail("invalid_request", "code_challenge is not a base64url SHA-256 digest")
        if "none" in prompt and len(prompt) > 1:
            raise fail("invalid_request", "prompt=none cannot be combined with other values")
        max_age: int | None = None
        if max_age_text is not None:
            if not _DIGITS_RE.match(max_age_text):
                raise fail("invalid_request", "max_age must be a non-negative integer")
            max_age = int(max_age_text)
        return _AuthRequest(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            state=state,
            nonce=nonce,
            code_challenge=challenge,
            scope=scope,
            prompt=prompt,
            max_age=max_age,
            mfa=bool(acr_values & MFA_ACR_VALUES),
            login_hint=login_hint,
        )

    def _error_redirect(
        self, request: Request, redirect_uri: str, state: str | None, error: str, description: str
    ) -> bytes:
        location = _with_query(
            redirect_uri,
            {
                "error": error,
                "error_description": description,
                "state": state,
                "iss": self.settings.issuer,
            },
        )
        return _redirect(request, location)

    def _render_authorize(self, request: Request) -> bytes:
        try:
            auth = self._parse_authorization(request)
        except _PageError as e:
            return _message(request, e.status, e.title, e.message)
        except _AuthorizationError as e:
            # The client and redirect URI were valid: _parse_authorization checks them first.
            redirect_uri = _param(request, "redirect_uri") or ""
            return self._error_redirect(request, redirect_uri, e.state, e.error, e.description)
        now = self._now()
        users = self._users.current()
        session = self._session(request, users)
        identity = session[1] if session is not None else None
        user = users.get(identity.user) if identity is not None else None
        need_login = (
            identity is None
            or "login" in auth.prompt
            or (auth.max_age is not None and now - identity.auth_time > auth.max_age)
        )
        need_otp = (
            not need_login
            and auth.mfa
            and user is not None
            and user.totp_secret is not None
            and identity is not None
            and "otp" not in identity.amr
        )
        if "none" in auth.prompt and (need_login or need_otp):
            return self._error_redirect(
                request, auth.redirect_uri, auth.state, "login_required", "the user must sign in"
            )
        if need_login or identity is None:
            login_id, login = self._new_login(request, auth=auth, step="password")
            return self._sign_in_form(request, login_id, login, username=auth.login_hint or "")
        if need_otp:
            login_id, login = self._new_login(
                request,
                auth=auth,
                step="otp",
                user=identity.user,
                amr=identity.amr,
                credential=identity.credential,
            )
            return self._otp_form(request, login_id, login)
        return self._issue_code(request, auth, identity, status=302)

    def _issue_code(
        self, request: Request, auth: _AuthRequest, identity: _Identity, *, status: int
    ) -> bytes:
        code = _new_token()
        self._codes.put(code, _CodeGrant(auth=auth, identity=identity), self._now())
        location = _with_query(
            auth.redirect_uri, {"code": code, "state": auth.state, "iss": self.settings.issuer}
        )
        return _redirect(request, location, status)

    def _render_authorize_post(self, request: Request) -> object:
        return self._login_post(request, "/authorize")

    # -- the sign-in forms ------------------------------------------------

    def _login_post(self, request: Request, endpoint: str) -> object:
        try:
            login_id = _param(request, "login") or ""
            csrf = _param(request, "csrf") or ""
            step = _param(request, "step") or ""
        except _BadParameter:
            return _message(request, 400, "Sign-in failed", _MESSAGE_STALE)
        login = self._logins.get(login_id, self._now()) if login_id else None
        if login is None or login.endpoint != endpoint:
            return _message(request, 400, "Sign-in expired", _MESSAGE_STALE)
        browser = _cookie(request, BROWSER_COOKIE) or ""
        if not (_equal(csrf, login.csrf) and _equal(browser, login.browser)):
            return _message(request, 400, "Sign-in failed", _MESSAGE_FORGED)
        if step == "deny" and login.device_code is not None:
            return self._device_decision(request, login_id, login, approve=False)
        if step != login.step and not (step == "approve" and login.step == "confirm"):
            return self._current_form(request, login_id, login)
        if step == "password":
            return self._password_step(request, login_id, login)
        if step == "otp":
            return self._otp_step(request, login_id, login)
        return self._device_decision(request, login_id, login, approve=True)

    def _password_step(self, request: Request, login_id: str, login: _Login) -> object:
        try:
            username = _param(request, "username") or ""
            password = _param(request, "password") or ""
        except _BadParameter:
            username = password = ""
        if not username or not password:
            return self._sign_in_form(
                request, login_id, login, username=username, error=_GENERIC_SIGN_IN_ERROR
            )
        address = _client_address(request)
        now = self._now()
        if self._user_failures.is_locked(username, now) or self._address_failures.is_locked(
            address, now
        ):
            self._report(username, address, False, "password")
            return self._sign_in_form(
                request, login_id, login, username=username, error=_GENERIC_SIGN_IN_ERROR
            )
        # Counted before the check, so that parallel guesses are counted too;
        # forgiven if it succeeds.
        self._user_failures.record(username, now)
        self._address_failures.record(address, now)
        users = self._users.current()
        checked: Deferred[User | None] = deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            users.verify_password,
            username,
            password,
        )
        return self._later(
            request,
            checked.addCallback(self._password_checked, request, login_id, username, address),
        )

    def _password_checked(
        self, user: User | None, request: Request, login_id: str, username: str, address: str
    ) -> bytes:
        now = self._now()
        login = self._logins.get(login_id, now)
        if login is None:
            return _message(request, 400, "Sign-in expired", _MESSAGE_STALE)
        if user is None:
            self._report(username, address, False, "password")
            return self._sign_in_form(
                request, login_id, login, username=username, error=_GENERIC_SIGN_IN_ERROR
            )
        self._user_failures.clear(username)
        self._address_failures.forgive(address, now)
        self._report(username, address, True, "password")
        credential = _fingerprint(user.password_hash)
        if user.totp_secret is not None:
            login = attrs.evolve(
                login,
                step="otp",
                user=user.name,
                amr=("pwd",),
                credential=credential,
            )
            self._logins.update(login_id, login, now)
            return self._otp_form(request, login_id, login)
        identity = _Identity(
            user=user.name, amr=("pwd",), auth_time=int(now), credential=credential
        )
        return self._complete(request, login_id, login, identity)

    def _otp_step(self, request: Request, login_id: str, login: _Login) -> bytes:
        try:
            code = _param(request, "code") or ""
        except _BadParameter:
            code = ""
        now = self._now()
        address = _client_address(request)
        user = self._users.current().get(login.user or "")
        if (
            user is None
            or user.disabled
            or user.totp_secret is None
            or _fingerprint(user.password_hash) != login.credential
        ):
            self._logins.pop(login_id, now)
            return _message(request, 400, "Sign-in expired", _MESSAGE_STALE)
        if self._user_failures.is_locked(user.name, now) or self._address_failures.is_locked(
            address, now
        ):
            self._report(user.name, address, False, "otp")
            return self._otp_form(
                request, login_id, login, "Too many attempts. Wait a few minutes and try again."
            )
        step = totp.verify(user.totp_secret, code, now)
        if step is None or step <= self._totp_steps.get(user.name, -1):
            self._user_failures.record(user.name, now)
            self._address_failures.record(address, now)
            self._report(user.name, address, False, "otp")
            return self._otp_form(request, login_id, login, "Incorrect code.")
        self._totp_steps[user.name] = step
        self._user_failures.clear(user.name)
        self._report(user.name, address, True, "otp")
        identity = _Identity(
            user=user.name,
            amr=tuple(dict.fromkeys((*login.amr, "otp"))),
            auth_time=int(now),
            credential=_fingerprint(user.password_hash),
        )
        return self._complete(request, login_id, login, identity)

    def _complete(
        self, request: Request, login_id: str, login: _Login, identity: _Identity
    ) -> bytes:
        """The user proved who they are: start an SSO session and finish the login."""
        now = self._now()
        self._logins.pop(login_id, now)
        old = _cookie(request, SSO_COOKIE)
        if old is not None:
            self._sessions.pop(old, now)
        session_id = _new_token()
        self._sessions.put(session_id, identity, now)
        _set_cookie(request, SSO_COOKIE, session_id)
        if login.auth is not None:
            return self._issue_code(request, login.auth, identity, status=303)
        return self._approve_device(request, login.device_code or "", identity)

    # -- the token endpoint ---------------------------------------------

    def _authenticate_client(self, request: Request) -> ClientRegistration:
        """
        @raise _OAuthError: C{invalid_client} (401) or C{invalid_request}.
        """
        challenge = b'Basic realm="appproxy"'
        raw_header = request.getHeader(b"authorization")
        header = raw_header.decode("latin-1") if raw_header is not None else None
        form_id = _param(request, "client_id")
        form_secret = _param(request, "client_secret")
        method: str
        if header is not None:
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() != "basic":
                raise _OAuthError(
                    "invalid_client", "use HTTP Basic client authentication", 401, challenge
                )
            if form_secret is not None:
                raise _OAuthError("invalid_request", "use one client authentication method only")
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise _OAuthError(
                    "invalid_client", "malformed Basic credentials", 401, challenge
                ) from None
            raw_id, colon, raw_secret = decoded.partition(":")
            if not colon:
                raise _OAuthError("invalid_client", "malformed Basic credentials", 401, challenge)
            client_id = urllib.parse.unquote_plus(raw_id)
            secret: str | None = urllib.parse.unquote_plus(raw_secret)
            if form_id is not None and form_id != client_id:
                raise _OAuthError("invalid_request", "client_id does not match the credentials")
            method = "client_secret_basic"
        elif form_secret is not None:
            if form_id is None:
                raise _OAuthError("invalid_request", "client_id is missing")
            client_id, secret, method = form_id, form_secret, "client_secret_post"
        elif form_id is not None:
            client_id, secret, method = form_id, None, "none"
        else:
            raise _OAuthError("invalid_client", "client authentication is required", 401, challenge)

        client = self.settings.client(client_id)
        expected = client.client_secret if client is not None else None
        # Compare even for an unknown client, so time does not tell.
        matched = _equal(secret or "", expected or "\x00" * 32)
        if client is None:
            raise _OAuthError("invalid_client", "unknown client or wrong secret", 401, challenge)
        if client.public:
            if method != "none":
                raise _OAuthError("invalid_client", "a public client has no secret", 401, challenge)
            return client
        if method == "none":
            raise _OAuthError("invalid_client", "client authentication is required", 401, challenge)
        if method not in client.auth_methods:
            raise _OAuthError(
                "invalid_client", f"{method} is not allowed for this client", 401, challenge
            )
        if not matched:
            raise _OAuthError("invalid_client", "unknown client or wrong secret", 401, challenge)
        return client

    def _render_token(self, request: Request) -> bytes:
        try:
            if _has_query(request):
                raise _OAuthError("invalid_request", "send the parameters in the request body")
            try:
                client = self._authenticate_client(request)
                grant_type = _param(request, "grant_type")
                if grant_type == "authorization_code":
                    document = self._code_grant(request, client)
                elif grant_type == DEVICE_GRANT:
                    document = self._device_grant(request, client)
                elif grant_type is None:
                    raise _OAuthError("invalid_request", "grant_type is missing")
                else:
                    raise _OAuthError("unsupported_grant_type", "this grant type is not supported")
            except _BadParameter as e:
                raise _OAuthError("invalid_request", str(e)) from None
        except _OAuthError as e:
            return _oauth_error(request, e)
        return _json(request, 200, document)

    def _code_grant(self, request: Request, client: ClientRegistration) -> dict[str, Any]:
        if client.public:
            raise _OAuthError("unauthorized_client", "a public client may only use the device flow")
        code = _param(request, "code")
        redirect_uri = _param(request, "redirect_uri")
        verifier = _param(request, "code_verifier")
        if code is None or redirect_uri is None or verifier is None:
            raise _OAuthError(
                "invalid_request", "code, redirect_uri and code_verifier are required"
            )
        now = self._now()
        # Single use: taken out before anything is checked.
        grant = self._codes.pop(code, now)
        if grant is None:
            spent = self._spent_codes.pop(code, now)
            if spent is not None:
                _log.warn("An authorization code was presented twice; revoking its tokens")
                for token in spent:
                    self._access_tokens.pop(token, now)
            raise _OAuthError("invalid_grant", "the code is invalid, expired or already used")
        issued: list[str] = []
        self._spent_codes.put(code, issued, now)
        auth = grant.auth
        if auth.client_id != client.client_id:
            raise _OAuthError("invalid_grant", "the code was issued to another client")
        if redirect_uri != auth.redirect_uri:
            raise _OAuthError(
                "invalid_grant", "redirect_uri does not match the authorization request"
            )
        if not _CODE_VERIFIER_RE.match(verifier) or not _equal(
            _s256(verifier), auth.code_challenge
        ):
            raise _OAuthError("invalid_grant", "the PKCE code_verifier does not match")
        document = self._tokens(client, grant.identity, auth.scope, auth.nonce)
        issued.append(document["access_token"])
        return document

    def _tokens(
        self,
        client: ClientRegistration,
        identity: _Identity,
        scope: tuple[str, ...],
        nonce: str | None,
    ) -> dict[str, Any]:
        users = self._users.current()
        user = users.get(identity.user)
        if user is None or user.disabled or _fingerprint(user.password_hash) != identity.credential:
            raise _OAuthError("invalid_grant", "the user can no longer sign in")
        now = self._now()
        access_token = _new_token()
        self._access_tokens.put(
            access_token,
            _AccessGrant(user=user.name, client_id=client.client_id, scope=scope),
            now,
        )
        issued_at = int(now)
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": user.name,
            "aud": client.client_id,
            "azp": client.client_id,
            "exp": issued_at + self.settings.id_token_lifetime,
            "iat": issued_at,
            "auth_time": identity.auth_time,
            "amr": list(identity.amr),
            "acr": ACR_MFA if "otp" in identity.amr else ACR_PWD,
            "at_hash": _b64url(hashlib.sha256(access_token.encode("ascii")).digest()[:16]),
            **_user_claims(user),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.settings.access_token_lifetime,
            "id_token": self.signing_key.sign(claims),
            "scope": " ".join(scope),
        }

    # -- the device flow -------------------------------------------------

    def _render_device_authorization(self, request: Request) -> bytes:
        try:
            if _has_query(request):
                raise _OAuthError("invalid_request", "send the parameters in the request body")
            try:
                client = self._authenticate_client(request)
                scope = tuple(dict.fromkeys((_param(request, "scope") or "openid").split()))
            except _BadParameter as e:
                raise _OAuthError("invalid_request", str(e)) from None
            if "openid" not in scope:
                raise _OAuthError("invalid_scope", "the scope must include openid")
        except _OAuthError as e:
            return _oauth_error(request, e)
        now = self._now()
        user_code = self._new_user_code(now)
        device_code = _new_token()
        lifetime = self.settings.device_code_lifetime
        self._devices.put(
            device_code,
            _DeviceGrant(
                client_id=client.client_id,
                scope=scope,
                user_code=user_code,
                expires_at=now + lifetime,
                interval=self.settings.device_poll_interval,
            ),
            now,
        )
        self._user_codes.put(user_code, device_code, now)
        verification_uri = f"{self.settings.issuer}/device"
        shown = _format_user_code(user_code)
        return _json(
            request,
            200,
            {
                "device_code": device_code,
                "user_code": shown,
                "verification_uri": verification_uri,
                "verification_uri_complete": _with_query(verification_uri, {"user_code": shown}),
                "expires_in": lifetime,
                "interval": self.settings.device_poll_interval,
            },
        )

    def _new_user_code(self, now: float) -> str:
        while True:
            code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(_USER_CODE_LENGTH))
            if self._user_codes.get(code, now) is None:
                return code

    def _device_grant(self, request: Request, client: ClientRegistration) -> dict[str, Any]:
        device_code = _param(request, "device_code")
        if device_code is None:
            raise _OAuthError("invalid_request", "device_code is missing")
        now = self._now()
        grant = self._devices.get(device_code, now)
        if grant is None or grant.client_id != client.client_id:
            raise _OAuthError("invalid_grant", "unknown device code")
        if now >= grant.expires_at:
            self._devices.pop(device_code, now)
            raise _OAuthError("expired_token", "the device code has expired")
        if grant.status == "denied":
            self._devices.pop(device_code, now)
            raise _OAuthError("access_denied", "the user denied the request")
        if grant.status == "approved" and grant.identity is not None:
            self._devices.pop(device_code, now)
            return self._tokens(client, grant.identity, grant.scope, None)
        too_soon = grant.last_poll is not None and now - grant.last_poll < grant.interval
        # RFC 8628 section 3.5: each slow_down adds 5 seconds to the interval.
        self._devices.update(
            device_code,
            attrs.evolve(
                grant, last_poll=now, interval=grant.interval + 5 if too_soon else grant.interval
            ),
            now,
        )
        if too_soon:
            raise _OAuthError("slow_down", "poll less often")
        raise _OAuthError("authorization_pending", "the user has not approved the device yet")

    def _render_device(self, request: Request) -> bytes:
        try:
            user_code = _param(request, "user_code") or ""
        except _BadParameter:
            user_code = ""
        return _html(request, 200, pages.device_code_page(action="/device", user_code=user_code))

    def _render_device_post(self, request: Request) -> object:
        if (request.args or {}).get(b"login"):
            return self._login_post(request, "/device")
        try:
            typed = _param(request, "user_code") or ""
        except _BadParameter:
            typed = ""
        now = self._now()
        address = _client_address(request)
        if self._address_failures.is_locked(address, now):
            body = pages.device_code_page(
                action="/device", error="Too many attempts. Wait a few minutes and try again."
            )
            return _html(request, 200, body)
        user_code = _normalize_user_code(typed)
        device_code = self._user_codes.get(user_code, now)
        grant = self._devices.get(device_code, now) if device_code is not None else None
        if (
            device_code is None
            or grant is None
            or grant.status != "pending"
            or now >= grant.expires_at
        ):
            self._address_failures.record(address, now)
            body = pages.device_code_page(
                action="/device",
                user_code=typed,
                error="That code is not valid or has expired. Check the code on your device.",
            )
            return _html(request, 200, body)
        users = self._users.current()
        session = self._session(request, users)
        if session is None:
            login_id, login = self._new_login(request, device_code=device_code, step="password")
            return self._sign_in_form(request, login_id, login)
        identity = session[1]
        login_id, login = self._new_login(
            request,
            device_code=device_code,
            step="confirm",
            user=identity.user,
            amr=identity.amr,
            credential=identity.credential,
        )
        return self._confirm_form(request, login_id, login)

    def _confirm_form(self, request: Request, login_id: str, login: _Login) -> bytes:
        grant = self._devices.get(login.device_code or "", self._now())
        body = pages.device_confirm_page(
            action="/device",
            login_id=login_id,
            csrf=login.csrf,
            user=login.user or "",
            client=grant.client_id if grant is not None else "",
            user_code=_format_user_code(grant.user_code) if grant is not None else "",
        )
        return _html(request, 200, body)

    def _device_decision(
        self, request: Request, login_id: str, login: _Login, *, approve: bool
    ) -> bytes:
        now = self._now()
        self._logins.pop(login_id, now)
        device_code = login.device_code or ""
        if not approve:
            grant = self._devices.get(device_code, now)
            if grant is not None and grant.status == "pending":
                self._devices.update(device_code, attrs.evolve(grant, status="denied"), now)
            return _message(
                request,
                200,
                "Request denied",
                "The device was not signed in. You can close this window.",
            )
        # Approval from the confirmation page: the SSO session must still be there.
        session = self._session(request, self._users.current())
        if session is None or session[1].user != login.user:
            return _message(request, 400, "Sign-in expired", _MESSAGE_STALE)
        return self._approve_device(request, device_code, session[1])

    def _approve_device(self, request: Request, device_code: str, identity: _Identity) -> bytes:
        now = self._now()
        grant = self._devices.get(device_code, now)
        if grant is None or grant.status != "pending" or now >= grant.expires_at:
            return _message(
                request,
                400,
                "Device code expired",
                "The code has expired. Start again on your device.",
            )
        self._devices.update(
            device_code, attrs.evolve(grant, status="approved", identity=identity), now
        )
        self._user_codes.pop(grant.user_code, now)
        return _message(
            request,
            200,
            "Device approved",
            "Your device is signed in. You can close this window and return to it.",
        )

    # -- userinfo and sign-out --------------------------------------------

    def _render_userinfo(self, request: Request) -> bytes:
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            request.setHeader(b"www-authenticate", b'Bearer realm="appproxy"')
            return _json(
                request, 401, {"error": "invalid_request", "error_description": "no access token"}
            )
        now = self._now()
        grant = self._access_tokens.get(token.strip(), now)
        user = self._users.current().get(grant.user) if grant is not None else None
        if grant is None or user is None or user.disabled:
            request.setHeader(
                b"www-authenticate",
                b'Bearer realm="appproxy", error="invalid_token", '
                b'error_description="the access token is invalid or expired"',
            )
            return _json(
                request,
                401,
                {
                    "error": "invalid_token",
                    "error_description": "the access token is invalid or expired",
                },
            )
        return _json(request, 200, {"sub": user.name, **_user_claims(user)})

    def _render_end_session(self, request: Request) -> bytes:
        now = self._now()
        session_id = _cookie(request, SSO_COOKIE)
        if session_id is not None:
            self._sessions.pop(session_id, now)
        _clear_cookie(request, SSO_COOKIE)
        try:
            hint = _param(request, "id_token_hint")
            target = _param(request, "post_logout_redirect_uri")
            state = _param(request, "state")
            client_id = _param(request, "client_id")
        except _BadParameter:
            hint = target = state = client_id = None
        if target is not None and self._may_return_to(target, hint, client_id):
            return _redirect(request, _with_query(target, {"state": state}))
        return _message(
            request,
            200,
            "You are signed out",
            "You are signed out of the sign-in service. You can close this window.",
        )

    def _may_return_to(self, target: str, hint: str | None, client_id: str | None) -> bool:
        """Is C{target} on the origin of a redirect URI of the client named?"""
        clients: set[str] = set()
        if hint is not None:
            try:
                claims = jwt.decode(
                    hint,
                    self.signing_key.private_key.public_key(),
                    algorithms=[self.signing_key.algorithm],
                    issuer=self.settings.issuer,
                    options={"verify_exp": False, "verify_aud": False, "verify_iat": False},
                )
            except jwt.InvalidTokenError:
                return False
            audience = claims.get("aud")
            clients.update([audience] if isinstance(audience, str) else audience or [])
            if client_id is not None and client_id not in clients:
                return False
        elif client_id is not None:
            clients.add(client_id)
        try:
            origin = _origin(_check_uri(target, "post_logout_redirect_uri"))
        except ValueError:
            return False
        for name in clients:
            client = self.settings.client(name) if isinstance(name, str) else None
            if client is None:
                continue
            for uri in client.redirect_uris:
                if _origin(urllib.parse.urlsplit(uri)) == origin:
                    return True
        return False


def _user_claims(user: User) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "preferred_username": user.name,
        "groups": list(user.groups),
        "roles": list(user.roles),
    }
    if user.display_name is not None:
        claims["name"] = user.display_name
    if user.email is not None:
        claims["email"] = user.email
    return claims
