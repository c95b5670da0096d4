"""
Who may use the admin API: a bearer token (C{Authorization: Bearer ID-TOKEN})
that is an ID token from the configured provider carrying the administrator
role, checked as connector registration checks it
(L{appproxy.trust.admin_token.verify_admin_token}: signature, issuer,
audience, expiry, issued in the last ten minutes, the admin claim) but not
used up: one token serves many calls until it is too old.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from appproxy.config import ServiceConfig
from appproxy.oidc.client import RelyingParty
from appproxy.oidc.errors import SignInError
from appproxy.trust.admin_token import (
    NotAdministrator,
    actor_name,
)
from appproxy.trust.admin_verify import verify_admin

__all__ = ["AdminAuth", "Unauthorized", "actor", "bearer_token"]

#: The longest bearer token looked at.
_MAX_TOKEN = 16_384


class Unauthorized(Exception):
    """A refused call: C{status} 401 (no valid token) or 403 (not an administrator)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def bearer_token(header: bytes | None) -> str:
    """
    The token of an C{Authorization: Bearer} header.

    @raise Unauthorized: (401) if there is none.
    """
    if header is None:
        raise Unauthorized(401, "invalid_request", "send Authorization: Bearer ID-TOKEN")
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or len(token) > _MAX_TOKEN:
        raise Unauthorized(401, "invalid_request", "send Authorization: Bearer ID-TOKEN")
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        raise Unauthorized(401, "invalid_token", "the token is not a JWT") from None


@attrs.define
class AdminAuth:
    """Checks the bearer tokens of admin API calls."""

    config: ServiceConfig
    relying_party: Callable[[], RelyingParty | None]
    clock: Any

    async def verify(self, header: bytes | None) -> dict[str, Any]:
        """
        The claims of the administrator the C{Authorization} header names.

        @raise Unauthorized: 401 without a valid token from the provider,
            403 for someone who is not an administrator.
        """
        token = bearer_token(header)
        config = self.config
        rp = self.relying_party()
        audience = config.admin.audience or config.connectors.device_client_id
        if rp is None or config.oidc is None or audience is None:
            raise Unauthorized(
                401,
                "invalid_token",
                "this service checks no tokens: it needs [oidc], and [admin] audience"
                " or [connectors] device_client_id",
            )
        try:
            return await verify_admin(token, rp, config, audience, int(self.clock.seconds()))
        except SignInError as e:
            raise Unauthorized(401, "invalid_token", e.reason) from None
        except NotAdministrator as e:
            raise Unauthorized(403, "insufficient_scope", str(e)) from None


def actor(claims: dict[str, Any]) -> str:
    """Who a token names, for the log (never the token)."""
    return actor_name(claims)
