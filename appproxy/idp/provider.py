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

State between requests (pending sign-ins, SSO sessions (the
C{__Host-appproxy-idp} cookie names one), authorization codes, access tokens,
device codes, failed-attempt counters and the last TOTP step used per user)
is behind L{appproxy.idp.store.ProviderStore}; by default
L{appproxy.idp.memory.MemoryStore} keeps it in this process, so a restart
signs everyone out of the provider (not out of the apps) and the provider
must run in one process.  Several service processes serving one provider
need a shared store.

This module ties the endpoints together; each group is its own module:
L{appproxy.idp.discovery}, L{appproxy.idp.authorize} (with
L{appproxy.idp.signin} and L{appproxy.idp.forms}), L{appproxy.idp.token}
(with L{appproxy.idp.clients}), L{appproxy.idp.device},
L{appproxy.idp.userinfo} and L{appproxy.idp.endsession}; what they share is
L{appproxy.idp.context}, the settings are L{appproxy.idp.settings}.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.web import resource
from twisted.web.http import Request

from appproxy.idp._http import Endpoint, NotFound
from appproxy.idp.authorize import render_authorize, render_authorize_post
from appproxy.idp.context import SSO_COOKIE, ProviderContext, UsersFile
from appproxy.idp.device import render_device, render_device_authorization, render_device_post
from appproxy.idp.discovery import encoded_discovery_document, render_discovery, render_jwks
from appproxy.idp.endsession import render_end_session
from appproxy.idp.memory import MemoryStore
from appproxy.idp.settings import (
    ACR_MFA,
    ACR_PWD,
    MFA_ACR_VALUES,
    ClientRegistration,
    ProviderSettings,
    SignInAttemptHook,
)
from appproxy.idp.signing import SigningKey, load_or_create_signing_key
from appproxy.idp.store import ProviderStore
from appproxy.idp.token import render_token
from appproxy.idp.userinfo import render_userinfo

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

_Handler = Callable[[ProviderContext, Request], Any]

#: The endpoints under the issuer, and their handlers per method.
_ENDPOINTS: Mapping[bytes, Mapping[bytes, _Handler]] = {
    b"authorize": {b"GET": render_authorize, b"POST": render_authorize_post},
    b"token": {b"POST": render_token},
    b"jwks": {b"GET": render_jwks},
    b"userinfo": {b"GET": render_userinfo, b"POST": render_userinfo},
    b"end-session": {b"GET": render_end_session, b"POST": render_end_session},
    b"device_authorization": {b"POST": render_device_authorization},
    b"device": {b"GET": render_device, b"POST": render_device_post},
}


class IdentityProvider:
    """
    The built-in OpenID provider.  Mount L{resource} at the issuer's root.

    @ivar settings: its configuration.
    @ivar resource: the C{twisted.web} resource tree.
    @ivar signing_key: the ID-token signing key.
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
        store: ProviderStore | None = None,
        app_names: Callable[[], Collection[str]] = tuple,
    ) -> None:
        """
        @param users_path: C{users.json} (it may not exist yet: no users).
        @param signing_key_path: C{idp-signing-key.pem} (created if missing).
        @param clock: the time source (POSIX seconds).
        @param reactor: runs password checks in its thread pool.
        @param store: where the provider keeps its state; by default in
            this process's memory (L{MemoryStore}).
        @param app_names: the names of the apps of the service the provider
            belongs to, now: the sign-in page names the one an
            authorization request names (C{appproxy_app}), and no other.
        @raise ValueError: if the users file or the key file is unusable.
        """
        users = UsersFile(Path(users_path))
        self.signing_key: SigningKey = load_or_create_signing_key(signing_key_path)
        self.settings = settings
        self._context = ProviderContext(
            settings=settings,
            store=store if store is not None else MemoryStore.for_settings(settings),
            users=users,
            signing_key=self.signing_key,
            clock=clock,
            reactor=reactor,
            on_sign_in_attempt=on_sign_in_attempt,
            app_names=app_names,
        )
        self.resource: resource.IResource = self._build_resource()

    @property
    def on_sign_in_attempt(self) -> SignInAttemptHook | None:
        """A L{SignInAttemptHook}, or L{None}."""
        return self._context.on_sign_in_attempt

    @on_sign_in_attempt.setter
    def on_sign_in_attempt(self, hook: SignInAttemptHook | None) -> None:
        self._context.on_sign_in_attempt = hook

    def _build_resource(self) -> resource.IResource:
        context = self._context
        root = NotFound()
        well_known = NotFound()
        discovery = encoded_discovery_document(self.settings, self.signing_key)
        well_known.putChild(
            b"openid-configuration", Endpoint({b"GET": partial(render_discovery, discovery)})
        )
        root.putChild(b".well-known", well_known)
        for name, handlers in _ENDPOINTS.items():
            bound = {method: partial(handler, context) for method, handler in handlers.items()}
            root.putChild(name, Endpoint(bound))
        return root
