"""
C{/end-session}: RP-initiated sign-out.  The browser's SSO session at the
provider ends (not its sessions at the apps); it is sent back to the client
only to an address on the origin of one of that client's redirect URIs.
"""

from __future__ import annotations

import urllib.parse

import jwt
from twisted.web.http import Request

from appproxy.idp._http import (
    BadParameter,
    clear_cookie,
    cookie,
    message,
    param,
    redirect,
    with_query,
)
from appproxy.idp.context import SSO_COOKIE, ProviderContext
from appproxy.idp.settings import check_uri, origin

__all__ = ["render_end_session"]


def render_end_session(context: ProviderContext, request: Request) -> bytes:
    """GET or POST C{/end-session}."""
    session_id = cookie(request, SSO_COOKIE)
    if session_id is not None:
        context.store.end_session(session_id, context.now())
    clear_cookie(request, SSO_COOKIE)
    try:
        hint = param(request, "id_token_hint")
        target = param(request, "post_logout_redirect_uri")
        state = param(request, "state")
        client_id = param(request, "client_id")
    except BadParameter:
        hint = target = state = client_id = None
    if target is not None and _may_return_to(context, target, hint, client_id):
        return redirect(request, with_query(target, {"state": state}))
    return message(
        request,
        200,
        "You are signed out",
        "You are signed out of the sign-in service. You can close this window.",
    )


def _may_return_to(
    context: ProviderContext, target: str, hint: str | None, client_id: str | None
) -> bool:
    """Is C{target} on the origin of a redirect URI of the client named?"""
    clients: set[str] = set()
    if hint is not None:
        key = context.signing_key
        try:
            claims = jwt.decode(
                hint,
                key.private_key.public_key(),
                algorithms=[key.algorithm],
                issuer=context.settings.issuer,
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
        wanted = origin(check_uri(target, "post_logout_redirect_uri"))
    except ValueError:
        return False
    for name in clients:
        client = context.settings.client(name) if isinstance(name, str) else None
        if client is None:
            continue
        for uri in client.redirect_uris:
            if origin(urllib.parse.urlsplit(uri)) == wanted:
                return True
    return False
