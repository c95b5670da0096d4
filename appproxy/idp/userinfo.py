"""
C{/userinfo}: the claims about the user an access token was given for
(RFC 6750 Bearer tokens, in the C{Authorization} header only).
"""

from __future__ import annotations

from twisted.web.http import Request

from appproxy.idp._http import json_response
from appproxy.idp.context import ProviderContext
from appproxy.idp.token import user_claims

__all__ = ["render_userinfo"]

_INVALID_TOKEN = "the access token is invalid or expired"  # noqa: S105 - not a token


def render_userinfo(context: ProviderContext, request: Request) -> bytes:
    """GET or POST C{/userinfo}."""
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        request.setHeader(b"www-authenticate", b'Bearer realm="appproxy"')
        return json_response(
            request, 401, {"error": "invalid_request", "error_description": "no access token"}
        )
    grant = context.store.access_token(token.strip(), context.now())
    user = context.users.current().get(grant.user) if grant is not None else None
    if grant is None or user is None or user.disabled:
        request.setHeader(
            b"www-authenticate",
            b'Bearer realm="appproxy", error="invalid_token", '
            + f'error_description="{_INVALID_TOKEN}"'.encode("ascii"),
        )
        return json_response(
            request, 401, {"error": "invalid_token", "error_description": _INVALID_TOKEN}
        )
    return json_response(request, 200, {"sub": user.name, **user_claims(user)})
