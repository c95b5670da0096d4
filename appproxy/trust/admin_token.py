"""
An administrator's ID token, as a connector sends it to register: verified
fully against the service's OpenID provider and checked for the
administrator role.

The checks are the sign-in's (L{appproxy.oidc.tokens}): the header's
algorithm among those configured (never C{none} or an HMAC), the key chosen
by C{kid}, the JWS signature, then C{iss}, C{aud} (the device flow's client
id), C{azp}, C{exp}, C{iat}, C{nbf} with the configured clock skew and
C{sub}.  The device flow has no nonce, so none is checked.  Then the admin
claim must be, or contain, the admin value.  A device flow's token is fresh:
one issued more than L{MAX_AGE} seconds ago is refused; and one token
registers one connector (L{use_id}: its C{jti}, or its hash, is remembered
until it expires).

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import attrs
import jwt

from appproxy.oidc.errors import SignInError
from appproxy.oidc.tokens import check_id_token_claims, signed_claims

__all__ = [
    "MAX_AGE",
    "USED_KIND",
    "AdminCheck",
    "NotAdministrator",
    "actor_name",
    "use_id",
    "verify_admin_token",
]

#: The oldest ID token taken (seconds since its C{iat}, besides the clock skew).
MAX_AGE: Final = 600
#: The kind of the state database's used ids for registrations' ID tokens.
USED_KIND: Final = "connector-registration"

#: Stands in for the nonce the device flow does not have (see the module's text).
_NO_NONCE = "device-authorization-grant"


class NotAdministrator(Exception):
    """A valid ID token of someone who is not an administrator; the text says who and why."""

    def __init__(self, message: str, actor: str) -> None:
        super().__init__(message)
        #: Who the token names (L{actor_name}).
        self.actor = actor


@attrs.frozen(kw_only=True)
class AdminCheck:
    """What an administrator's ID token must be."""

    issuer: str
    client_id: str
    """The device flow's client id: the token's audience."""
    algorithms: tuple[str, ...]
    clock_skew: int
    admin_claim: str
    admin_value: str


def _fail(reason: str) -> SignInError:
    return SignInError("id-token", reason)


def verify_admin_token(
    raw: str, *, keys: Mapping[str, jwt.PyJWK], check: AdminCheck, now: int
) -> dict[str, Any]:
    """
    The claims of C{raw}, an administrator's ID token.

    @raise SignInError: (step C{"id-token"}) if the token is not valid.
    @raise NotAdministrator: if it is, but the admin claim does not hold the
        admin value.
    """
    claims = signed_claims(raw, keys=keys, algorithms=check.algorithms)
    check_id_token_claims(
        {**claims, "nonce": _NO_NONCE},
        issuer=check.issuer,
        client_id=check.client_id,
        nonce=_NO_NONCE,
        now=now,
        clock_skew=check.clock_skew,
    )
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or now - iat > MAX_AGE + check.clock_skew:
        raise _fail(
            f"The ID token was issued over {MAX_AGE // 60} minutes ago: sign in again (iat)"
        )
    value = claims.get(check.admin_claim)
    values = value if isinstance(value, list) else [value]
    if check.admin_value not in [v for v in values if isinstance(v, str)]:
        who = actor_name(claims)
        raise NotAdministrator(
            f"{who} is not an administrator: the {check.admin_claim!r} claim"
            f" must contain {check.admin_value!r}",
            who,
        )
    return claims


def actor_name(claims: Mapping[str, Any]) -> str:
    """C{oidc:SUB (NAME)}: who an ID token names, for the audit log."""
    sub = claims.get("sub")
    name = claims.get("preferred_username") or claims.get("email")
    who = f"oidc:{sub}"
    if isinstance(name, str) and name:
        who += f" ({name[:200]})"
    return who


def use_id(raw: str, claims: Mapping[str, Any]) -> str:
    """What marks the ID token C{raw} used: C{jti:} its C{jti}, else C{sha256:} its hash."""
    jti = claims.get("jti")
    if isinstance(jti, str) and 0 < len(jti) <= 200:
        return "jti:" + jti
    return "sha256:" + hashlib.sha256(raw.encode("utf-8")).hexdigest()
