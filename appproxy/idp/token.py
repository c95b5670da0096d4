"""
C{/token}: an authorization code (with its PKCE verifier) or an approved
device code exchanged for an ID token and an access token.

A code is single use: presented twice, it revokes the access tokens it gave
(RFC 6749 section 4.1.2).  A device that polls too often is told to slow
down, each time by 5 more seconds (RFC 8628 section 3.5).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web.http import Request

from appproxy.idp._http import OAuthError, param
from appproxy.idp.clients import client_request
from appproxy.idp.context import ProviderContext
from appproxy.idp.settings import ACR_MFA, ACR_PWD, DEVICE_GRANT, ClientRegistration
from appproxy.idp.store import AccessGrant, Identity, can_sign_in, new_token, tokens_equal
from appproxy.idp.users import User

__all__ = ["render_token", "user_claims"]

_CODE_VERIFIER_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}\Z")

_log = Logger(namespace="appproxy.idp")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _half_sha256(text: str) -> str:
    """The left half of the SHA-256 digest of C{text}, base64url (C{at_hash})."""
    return _b64url(hashlib.sha256(text.encode("ascii")).digest()[:16])


def _s256(verifier: str) -> str:
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def user_claims(user: User) -> dict[str, Any]:
    """The claims about C{user} that ID tokens and userinfo carry."""
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


def render_token(context: ProviderContext, request: Request) -> bytes:
    """POST C{/token}."""

    def grant(request: Request, client: ClientRegistration) -> dict[str, Any]:
        grant_type = param(request, "grant_type")
        if grant_type == "authorization_code":
            return _code_grant(context, request, client)
        if grant_type == DEVICE_GRANT:
            return _device_grant(context, request, client)
        if grant_type is None:
            raise OAuthError("invalid_request", "grant_type is missing")
        raise OAuthError("unsupported_grant_type", "this grant type is not supported")

    return client_request(context.settings, request, grant)


def _code_grant(
    context: ProviderContext, request: Request, client: ClientRegistration
) -> dict[str, Any]:
    if client.public:
        raise OAuthError("unauthorized_client", "a public client may only use the device flow")
    code = param(request, "code")
    redirect_uri = param(request, "redirect_uri")
    verifier = param(request, "code_verifier")
    if code is None or redirect_uri is None or verifier is None:
        raise OAuthError("invalid_request", "code, redirect_uri and code_verifier are required")
    now = context.now()
    # Single use: taken out before anything is checked.
    grant = context.store.take_code(code, now)
    if grant is None:
        if context.store.replay_code(code, now):
            _log.warn("An authorization code was presented twice; revoking its tokens")
        raise OAuthError("invalid_grant", "the code is invalid, expired or already used")
    auth = grant.auth
    if auth.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the code was issued to another client")
    if redirect_uri != auth.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    if not _CODE_VERIFIER_RE.match(verifier) or not tokens_equal(
        _s256(verifier), auth.code_challenge
    ):
        raise OAuthError("invalid_grant", "the PKCE code_verifier does not match")
    return _tokens(context, client, grant.identity, auth.scope, auth.nonce, code=code)


def _device_grant(
    context: ProviderContext, request: Request, client: ClientRegistration
) -> dict[str, Any]:
    device_code = param(request, "device_code")
    if device_code is None:
        raise OAuthError("invalid_request", "device_code is missing")
    now = context.now()
    store = context.store
    grant = store.device(device_code, now)
    if grant is None or grant.client_id != client.client_id:
        raise OAuthError("invalid_grant", "unknown device code")
    if now >= grant.expires_at:
        store.end_device(device_code, now)
        raise OAuthError("expired_token", "the device code has expired")
    if grant.status == "denied":
        store.end_device(device_code, now)
        raise OAuthError("access_denied", "the user denied the request")
    if grant.status == "approved" and grant.identity is not None:
        store.end_device(device_code, now)
        return _tokens(context, client, grant.identity, grant.scope, None)
    too_soon = grant.last_poll is not None and now - grant.last_poll < grant.interval
    interval = grant.interval + 5 if too_soon else grant.interval
    store.update_device(device_code, attrs.evolve(grant, last_poll=now, interval=interval), now)
    if too_soon:
        raise OAuthError("slow_down", "poll less often")
    raise OAuthError("authorization_pending", "the user has not approved the device yet")


def _tokens(
    context: ProviderContext,
    client: ClientRegistration,
    identity: Identity,
    scope: tuple[str, ...],
    nonce: str | None,
    *,
    code: str | None = None,
) -> dict[str, Any]:
    """The token response; C{code}, if given, is the code spent for it."""
    user = context.users.current().get(identity.user)
    if user is None or not can_sign_in(user, identity.credential):
        raise OAuthError("invalid_grant", "the user can no longer sign in")
    settings = context.settings
    now = context.now()
    access_token = new_token()
    context.store.add_access_token(
        access_token,
        AccessGrant(user=user.name, client_id=client.client_id, scope=scope),
        now,
        code=code,
    )
    issued_at = int(now)
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": user.name,
        "aud": client.client_id,
        "azp": client.client_id,
        "exp": issued_at + settings.id_token_lifetime,
        "iat": issued_at,
        "auth_time": identity.auth_time,
        "amr": list(identity.amr),
        "acr": ACR_MFA if "otp" in identity.amr else ACR_PWD,
        "at_hash": _half_sha256(access_token),
        **user_claims(user),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    return {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": settings.access_token_lifetime,
        "id_token": context.signing_key.sign(claims),
        "scope": " ".join(scope),
    }
