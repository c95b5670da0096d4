"""
The gate's decisions, apart from I/O: verified ID token claims -> the app's
session; a session and its groups -> the policy decision; the decision ->
what the gate does next; a refusal -> how it is logged and titled.

Pure: no reactor, no I/O; the caller supplies the time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from appproxy.access.evaluation import AccessRequest, Decision, evaluate
from appproxy.access.policy import PolicySet
from appproxy.access.risk import AnonymizerList, FailedSignIns, risk_signals
from appproxy.access.session import ClaimValue, Session
from appproxy.config import AppConfig, OidcConfig
from appproxy.http.forwarding import IPAddress, ip_text

__all__ = ["Next", "Refusal", "decide", "next_step", "refusal", "session_from_claims"]

#: Claims a session carries in its own fields, never among the extra claims.
_SESSION_FIELDS = frozenset({"user", "sub", "name", "email", "groups", "roles", "amr", "acr"})

#: What the gate does with a decision: send the browser to sign in again
#: with multi-factor authentication, or with a fresh sign-in; refuse; admit.
Next = Literal["step-up", "reauthenticate", "refuse", "admit"]


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(str(item) for item in value if isinstance(item, str | int))
    return ()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _extra_claims(app: AppConfig, claims: Mapping[str, object]) -> dict[str, ClaimValue]:
    """The claims C{app}'s identity headers name, beyond the session's own fields."""
    extra: dict[str, ClaimValue] = {}
    for _, claim in app.headers:
        if claim in _SESSION_FIELDS or claim in extra:
            continue
        value = claims.get(claim)
        if isinstance(value, str):
            extra[claim] = value
        elif isinstance(value, bool | int | float):
            extra[claim] = str(value).lower() if isinstance(value, bool) else str(value)
        elif isinstance(value, list):
            extra[claim] = tuple(str(item) for item in value if isinstance(item, str | int))
    return extra


def session_from_claims(
    app: AppConfig, oidc: OidcConfig, claims: Mapping[str, object], now: int
) -> Session | str:
    """The session made of verified ID token claims, or why not."""
    user = claims.get(oidc.username_claim)
    if not isinstance(user, str) or not user:
        return (
            f"The ID token has no {oidc.username_claim!r} claim to use as the user name"
            " (see oidc.username_claim)."
        )
    exp = claims.get("exp")
    token_expiry = int(exp) if isinstance(exp, int | float) else now + app.session_lifetime
    iat = claims.get("iat")
    auth_time = claims.get("auth_time", iat)
    return Session(
        app=app.name,
        user=user,
        subject=str(claims.get("sub")),
        issuer=str(claims.get("iss")),
        name=_text(claims.get("name")),
        email=_text(claims.get("email")),
        groups=_strings(claims.get(oidc.groups_claim)),
        roles=_strings(claims.get("roles")),
        amr=_strings(claims.get("amr")),
        acr=_text(claims.get("acr")),
        claims=_extra_claims(app, claims),
        auth_time=int(auth_time) if isinstance(auth_time, int | float) else now,
        issued_at=now,
        expires_at=min(token_expiry, now + app.session_lifetime),
    )


def decide(
    policies: PolicySet,
    failures: FailedSignIns,
    anonymizers: AnonymizerList | None,
    app: AppConfig,
    session: Session,
    client_ip: IPAddress,
    now: int,
) -> Decision:
    """
    Assignment and conditional access for C{session} (its user, groups and
    sign-in), now, from C{client_ip}.
    """
    risks = risk_signals(failures, anonymizers, session.user, ip_text(client_ip), now)
    return evaluate(
        policies,
        app.assignment,
        AccessRequest(
            app=app.name,
            user=session.user,
            groups=frozenset(session.groups),
            client_ip=client_ip,
            amr=frozenset(session.amr),
            acr=session.acr,
            auth_time=session.auth_time,
            now=now,
            risks=risks,
        ),
    )


def next_step(decision: Decision, *, step_up_done: bool = False, reauth_done: bool = False) -> Next:
    """
    What to do with C{decision}; C{step_up_done} and C{reauth_done} say that
    the sign-in just made was already the step-up or fresh sign-in asked for,
    so it is not asked again (the decision then refuses).
    """
    if decision.outcome == "mfa" and not step_up_done:
        return "step-up"
    if decision.outcome == "reauthenticate" and not reauth_done:
        return "reauthenticate"
    return "admit" if decision.allowed else "refuse"


@attrs.frozen
class Refusal:
    """
    How a refusal is logged and shown.

    @ivar result: the sign-in log's result.
    @ivar step: the sign-in log's step.
    @ivar title: the 403 page's title.
    """

    result: str
    step: str
    title: str


def refusal(decision: Decision) -> Refusal:
    """The refusal C{decision} makes: by assignment, or by a policy it names."""
    if decision.outcome == "not-assigned":
        return Refusal(result="not-assigned", step="assignment", title="Not assigned to this app")
    return Refusal(result="blocked", step="policy", title=f"Blocked by policy '{decision.policy}'")
