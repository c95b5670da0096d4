"""
An administrator's ID token checked against the service's provider: its
keys and issuer from the relying party's metadata and JWKS (fetched and
cached there), then L{appproxy.trust.admin_token.verify_admin_token}.
Connector registration and the admin API both ask here, each with its own
audience and its own answer to a refusal.
"""

from __future__ import annotations

from typing import Any

import attrs

from appproxy.config import ServiceConfig
from appproxy.oidc.client import RelyingParty
from appproxy.oidc.tokens import token_header
from appproxy.trust.admin_token import AdminCheck, verify_admin_token

__all__ = ["verify_admin"]


async def verify_admin(
    token: str, rp: RelyingParty, config: ServiceConfig, audience: str, now: int
) -> dict[str, Any]:
    """
    The claims of C{token}, an ID token the service's provider issued to
    C{audience} for an administrator (C{[connectors] admin_claim} holding
    C{admin_value}).  C{config.oidc} must be set.

    @raise SignInError: the token is not valid (signature, issuer, audience, times).
    @raise NotAdministrator: valid, but not an administrator's.
    """
    assert config.oidc is not None
    check = AdminCheck(
        issuer=config.oidc.issuer,
        client_id=audience,
        algorithms=config.oidc.algorithms,
        clock_skew=config.oidc.clock_skew,
        admin_claim=config.connectors.admin_claim,
        admin_value=config.connectors.admin_value,
    )
    metadata = await rp.metadata()
    check = attrs.evolve(check, issuer=metadata.issuer)
    kid = token_header(token).get("kid")
    keys = await rp.jwks.get_keys(kid if isinstance(kid, str) else None)
    return verify_admin_token(token, keys=keys, check=check, now=now)
