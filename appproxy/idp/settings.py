"""
The built-in provider's configuration: its settings, the relying parties
registered with it, and the names it publishes (C{acr} values, grant types).

Pure: no reactor, no twisted.web.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from typing import Final

import attrs

__all__ = [
    "ACR_MFA",
    "ACR_PWD",
    "APP_PARAMETER",
    "AUTH_METHODS",
    "DEVICE_GRANT",
    "MFA_ACR_VALUES",
    "ClientRegistration",
    "ProviderSettings",
    "SignInAttemptHook",
    "check_uri",
    "origin",
]

#: The authorization request's parameter that names the app the user signs
#: in to, for the sign-in page; appproxy's own, only names of its apps count
#: (here, in a pure module, so that the service's sign-in flow names it
#: without importing the provider's twisted.web side when it is not used).
APP_PARAMETER: Final = "appproxy_app"

#: C{acr} of a sign-in with password and one-time code.
ACR_MFA: Final = "urn:appproxy:mfa"
#: C{acr} of a sign-in with a password only.
ACR_PWD: Final = "urn:appproxy:pwd"  # noqa: S105 - not a password
#: C{acr_values} that ask for a second factor.
MFA_ACR_VALUES: Final = frozenset(
    {"mfa", ACR_MFA, "http://schemas.openid.net/pape/policies/2007/06/multi-factor"}
)
#: The device authorization grant's C{grant_type} (RFC 8628).
DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
#: How a confidential client may authenticate at the token endpoint.
AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post")

#: C{(user, address, ok, step)}: called after every checked sign-in step.
#: C{user} is the user name as typed (it may not exist), C{step} is
#: C{"password"} or C{"otp"}.
SignInAttemptHook = Callable[[str, str, bool, str], object]

_CLIENT_ID_RE = re.compile(r"[\x21-\x7e]{1,255}\Z")


def check_uri(uri: str, what: str) -> urllib.parse.SplitResult:
    """
    C{uri}, split, if a browser may be sent there: https (http only on
    loopback), a host, no fragment, userinfo or whitespace.

    @param what: names C{uri} in the error.
    @raise ValueError: if it may not.
    """
    parts = urllib.parse.urlsplit(uri)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"{what} {uri!r} must be an https URL (http only on loopback)")
    if not parts.hostname or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{what} {uri!r} must have a host and no fragment or userinfo")
    if any(char <= " " or char == "\x7f" for char in uri):
        raise ValueError(f"{what} {uri!r} contains whitespace or control characters")
    return parts


def origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int | None]:
    """The origin (scheme, host, port) of a split URL; port -1 if invalid."""
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
    auth_methods: tuple[str, ...] = AUTH_METHODS

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
            check_uri(uri, f"client {self.client_id!r}: redirect URI")
        unknown = set(self.auth_methods) - set(AUTH_METHODS)
        if unknown or not self.auth_methods:
            raise ValueError(
                f"client {self.client_id!r}: auth_methods must be some of {', '.join(AUTH_METHODS)}"
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
