"""
C{/.well-known/openid-configuration} and C{/jwks}: what the provider
supports and where, and the public key that verifies its ID tokens.  Both
may be cached for five minutes.
"""

from __future__ import annotations

import json
from typing import Any, Final

from twisted.web.http import Request

from appproxy.idp._http import json_response
from appproxy.idp.context import ProviderContext
from appproxy.idp.settings import (
    ACR_MFA,
    ACR_PWD,
    AUTH_METHODS,
    DEVICE_GRANT,
    MFA_ACR_VALUES,
    ProviderSettings,
)
from appproxy.idp.signing import SigningKey

__all__ = [
    "discovery_document",
    "encoded_discovery_document",
    "render_discovery",
    "render_jwks",
]

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
_CACHE_CONTROL: Final = b"public, max-age=300"


def discovery_document(settings: ProviderSettings, signing_key: SigningKey) -> dict[str, Any]:
    """The OpenID provider metadata (OpenID Connect Discovery 1.0)."""
    issuer = settings.issuer
    auth_methods = sorted(
        {
            method
            for client in settings.clients
            if not client.public
            for method in client.auth_methods
        }
        or set(AUTH_METHODS)
    )
    if any(client.public for client in settings.clients):
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
        "id_token_signing_alg_values_supported": [signing_key.algorithm],
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


def render_discovery(document: bytes, request: Request) -> bytes:
    """GET C{/.well-known/openid-configuration}: C{document}, made once."""
    request.setHeader(b"cache-control", _CACHE_CONTROL)
    request.setHeader(b"content-type", b"application/json")
    return document


def render_jwks(context: ProviderContext, request: Request) -> bytes:
    """GET C{/jwks}."""
    request.setHeader(b"cache-control", _CACHE_CONTROL)
    return json_response(request, 200, context.signing_key.jwks(), cacheable=True)


def encoded_discovery_document(settings: ProviderSettings, signing_key: SigningKey) -> bytes:
    """L{discovery_document}, as served."""
    return json.dumps(discovery_document(settings, signing_key), indent=2).encode("utf-8")
