"""
Conditional access, the decision: L{evaluate} takes a L{PolicySet}, an app's
L{Assignment} and an L{AccessRequest}, and returns a L{Decision} whose reason
says why, in a sentence for the user and the logs.

Pure functions and frozen values: no reactor, no I/O, no clock (the time is
part of the L{AccessRequest}).  L{why_not_applying}, L{why_applying} and
L{sign_in_too_old} are the steps L{appproxy.access.what_if} shows one by one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import attrs

from appproxy.access._phrases import locations_phrase, quoted
from appproxy.access.policy import ANY, Assignment, NamedLocation, Policy, PolicySet
from appproxy.access.risk import ANONYMIZER, FAILED_SIGN_INS
from appproxy.http.forwarding import IPAddress, unmapped

__all__ = [
    "AccessRequest",
    "Decision",
    "Outcome",
    "evaluate",
    "sign_in_too_old",
    "why_applying",
    "why_not_applying",
]

#: What L{evaluate} decides.
Outcome = Literal["allow", "not-assigned", "block", "mfa", "reauthenticate"]

_RISK_TEXT = {
    ANONYMIZER: "the sign-in comes from an anonymizing network",
    FAILED_SIGN_INS: "there have been too many failed sign-ins for this user or address",
}


@attrs.frozen(kw_only=True)
class AccessRequest:
    """
    A signed-in user's request for an app, as conditional access sees it.

    @ivar app: the app's name.
    @ivar user: the user name.
    @ivar groups: the user's groups.
    @ivar client_ip: the client's address (see L{appproxy.http.forwarding.client_address}).
    @ivar amr: the session's authentication methods.
    @ivar acr: the session's authentication context class, if any.
    @ivar auth_time: when the user last authenticated at the provider
        (POSIX seconds).
    @ivar now: the current time (POSIX seconds).
    @ivar risks: the risk signals present (see L{appproxy.access.risk}).
    """

    app: str
    user: str
    groups: frozenset[str]
    client_ip: IPAddress
    amr: frozenset[str]
    acr: str | None
    auth_time: int
    now: int
    risks: frozenset[str]


@attrs.frozen(kw_only=True)
class Decision:
    """
    The outcome of L{evaluate}.

    @ivar outcome: C{"allow"}; C{"not-assigned"} (the user may not use the
        app); C{"block"}; C{"mfa"} (sign in again with multi-factor
        authentication); C{"reauthenticate"} (sign in again: the last sign-in
        is too old).
    @ivar policy: the policy that made the decision, if one did.
    @ivar reason: a sentence for the user and the logs.
    """

    outcome: Outcome
    policy: str | None
    reason: str

    @property
    def allowed(self) -> bool:
        """Is access granted?"""
        return self.outcome == "allow"


def _location_containing(
    address: IPAddress, names: Iterable[str], locations: Mapping[str, NamedLocation]
) -> str | None:
    """The first of C{names} (C{"*"}: anywhere) whose location holds C{address}."""
    for name in names:
        if name == ANY:
            return ANY
        location = locations.get(name)
        if location is not None and location.contains(address):
            return name
    return None


def why_not_applying(
    policy: Policy, locations: Mapping[str, NamedLocation], request: AccessRequest
) -> str | None:
    """Why C{policy} does not apply to C{request}; L{None} if it does."""
    app = request.app
    if ANY not in policy.apps and app not in policy.apps:
        return f"app '{app}' is not included"
    if ANY in policy.exclude_apps or app in policy.exclude_apps:
        return f"app '{app}' is excluded"

    user = request.user
    folded = user.casefold()
    if not (
        (not policy.users and not policy.groups)
        or ANY in policy.users
        or folded in policy.users_folded
        or not request.groups.isdisjoint(policy.groups)
    ):
        return f"user '{user}' is not included (not listed, and in no listed group)"
    if ANY in policy.exclude_users or folded in policy.exclude_users_folded:
        return f"user '{user}' is excluded"
    for group in policy.exclude_groups:
        if group in request.groups:
            return f"user '{user}' is excluded by group '{group}'"

    address = unmapped(request.client_ip)
    if _location_containing(address, policy.locations, locations) is None:
        return f"address {address} is in none of the {locations_phrase(policy.locations)}"
    excluded = _location_containing(address, policy.exclude_locations, locations)
    if excluded == ANY:
        return "every location is excluded ('*')"
    if excluded is not None:
        return f"address {address} is in excluded location '{excluded}'"

    if policy.risks and request.risks.isdisjoint(policy.risks):
        return f"none of its risk signals ({', '.join(policy.risks)}) is present"
    return None


def why_applying(
    policy: Policy, locations: Mapping[str, NamedLocation], request: AccessRequest
) -> str:
    """The conditions by which C{policy} applies to C{request}, as a phrase."""
    clauses = [_RISK_TEXT[risk] for risk in policy.risks if risk in request.risks]
    address = unmapped(request.client_ip)
    where = _location_containing(address, policy.locations, locations)
    if where is not None and where != ANY:
        clauses.append(f"the sign-in comes from location '{where}'")
    elif policy.exclude_locations:
        clauses.append(
            f"the sign-in comes from outside {locations_phrase(policy.exclude_locations)}"
        )
    if not clauses:
        member_of = [group for group in policy.groups if group in request.groups]
        if member_of and ANY not in policy.users:
            clauses.append(f"user '{request.user}' is in group '{member_of[0]}'")
        elif request.user.casefold() in policy.users_folded:
            clauses.append(f"it applies to user '{request.user}'")
        else:
            clauses.append(f"it applies to app '{request.app}'")
    return "; ".join(clauses)


def _auth_age(request: AccessRequest) -> int:
    return request.now - request.auth_time


def sign_in_too_old(policy: Policy, request: AccessRequest) -> bool:
    """Is the last sign-in older than C{policy}'s C{sign_in_frequency} allows?"""
    return policy.sign_in_frequency is not None and _auth_age(request) > policy.sign_in_frequency


def _applying(policies: PolicySet, request: AccessRequest) -> list[Policy]:
    return [
        policy
        for policy in policies.policies
        if why_not_applying(policy, policies.locations, request) is None
    ]


def evaluate(policies: PolicySet, assignment: Assignment, request: AccessRequest) -> Decision:
    """
    Decide whether C{request} may go ahead.

    In this order: a user not in C{assignment} is C{"not-assigned"}; if any
    applying policy's grant is C{block}, C{"block"} (naming the first such
    policy in configuration order); if an applying C{mfa} policy is not met
    (see L{MfaRule}), C{"mfa"} (naming the first); if the last sign-in is
    older than an applying policy's C{sign_in_frequency},
    C{"reauthenticate"} (naming the first); otherwise C{"allow"}, with the
    applying policies named in the reason.
    """
    if not assignment.assigned(request.user, request.groups):
        return Decision(
            outcome="not-assigned",
            policy=None,
            reason=f"User '{request.user}' is not assigned to app '{request.app}'.",
        )
    applying = _applying(policies, request)
    for policy in applying:
        if policy.grant == "block":
            why = why_applying(policy, policies.locations, request)
            return Decision(
                outcome="block",
                policy=policy.name,
                reason=f"Blocked by policy '{policy.name}': {why}.",
            )
    if not policies.mfa.satisfied(request.amr, request.acr):
        for policy in applying:
            if policy.grant == "mfa":
                used = ", ".join(sorted(request.amr)) or "no recorded method"
                return Decision(
                    outcome="mfa",
                    policy=policy.name,
                    reason=(
                        f"Policy '{policy.name}' requires multi-factor authentication; "
                        f"the sign-in used {used}."
                    ),
                )
    for policy in applying:
        if sign_in_too_old(policy, request):
            return Decision(
                outcome="reauthenticate",
                policy=policy.name,
                reason=(
                    f"Policy '{policy.name}' requires signing in again every "
                    f"{policy.sign_in_frequency} seconds; the last sign-in was "
                    f"{_auth_age(request)} seconds ago."
                ),
            )
    if not applying:
        reason = "Allowed: no conditional-access policy applies."
    elif len(applying) == 1:
        reason = f"Allowed: policy '{applying[0].name}' applies and is satisfied."
    else:
        names = quoted(policy.name for policy in applying)
        reason = f"Allowed: policies {names} apply and are satisfied."
    return Decision(outcome="allow", policy=None, reason=reason)
