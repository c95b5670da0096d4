"""
C{appproxy policy what-if}'s report: the decision for a hypothetical sign-in,
and for each policy whether it applies (and if not, why not) and whether its
controls are met.

Pure: L{what_if} returns the text; L{appproxy.cli.policy} prints it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from appproxy.access._phrases import quoted
from appproxy.access.evaluation import (
    AccessRequest,
    evaluate,
    sign_in_too_old,
    why_applying,
    why_not_applying,
)
from appproxy.access.policy import Assignment, Policy, PolicySet, check_risk_signals
from appproxy.http.forwarding import IPAddress, unmapped

__all__ = ["what_if"]

#: The time L{what_if} pretends it is; only differences matter.
_WHAT_IF_NOW = 2_000_000_000


def _policy_line(
    policy: Policy, policies: PolicySet, request: AccessRequest, why_not: str | None
) -> str:
    if why_not is not None:
        return f"  {policy.name}: does not apply: {why_not}"
    controls: list[str] = []
    if policy.grant == "block":
        controls.append("grant block: blocks")
    elif policy.grant == "mfa":
        met = policies.mfa.satisfied(request.amr, request.acr)
        controls.append(f"grant mfa: {'met' if met else 'NOT met'}")
    if policy.sign_in_frequency is not None:
        state = "exceeded" if sign_in_too_old(policy, request) else "met"
        controls.append(f"sign-in frequency {policy.sign_in_frequency} s: {state}")
    if not controls:
        controls.append("no grant or session control")
    return f"  {policy.name}: applies ({why_applying(policy, policies.locations, request)}); " + (
        "; ".join(controls)
    )


def what_if(
    policies: PolicySet,
    assignment_by_app: Mapping[str, Assignment],
    *,
    user: str,
    groups: Iterable[str],
    app: str,
    ip: str | IPAddress,
    amr: Iterable[str],
    acr: str | None = None,
    auth_age: int = 0,
    risks: Iterable[str] = (),
) -> str:
    """
    The report C{appproxy policy what-if} prints: the decision for a
    hypothetical sign-in, the policy that made it, and for each policy
    whether it applies (and if not, why not) and whether its controls are
    met.

    @param assignment_by_app: every app's assignment, by app name.
    @param auth_age: how many seconds ago the user signed in.
    @raise ValueError: (one line) if C{app} is unknown, C{user} is empty,
        C{ip} is not an IP address, C{auth_age} is negative or a risk
        signal is unknown.
    """
    if app not in assignment_by_app:
        known = quoted(sorted(assignment_by_app)) or "none"
        raise ValueError(f"unknown app '{app}' (apps: {known})")
    if not user:
        raise ValueError("the user name must not be empty")
    if auth_age < 0:
        raise ValueError(f"the sign-in age must not be negative, not {auth_age}")
    if isinstance(ip, str):
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"{ip!r} is not an IP address") from None
    else:
        address = ip
    risk_set = frozenset(risks)
    check_risk_signals(risk_set)
    group_list = list(dict.fromkeys(groups))
    request = AccessRequest(
        app=app,
        user=user,
        groups=frozenset(group_list),
        client_ip=unmapped(address),
        amr=frozenset(amr),
        acr=acr,
        auth_time=_WHAT_IF_NOW - auth_age,
        now=_WHAT_IF_NOW,
        risks=risk_set,
    )
    assignment = assignment_by_app[app]
    decision = evaluate(policies, assignment, request)

    lines = [
        f"Decision: {decision.outcome}"
        + (f" (policy '{decision.policy}')" if decision.policy is not None else ""),
        f"Reason: {decision.reason}",
        "",
        f"User: '{user}'; groups: {quoted(group_list) or 'none'}",
        f"App: '{app}'; address: {request.client_ip}",
        f"Sign-in: amr {', '.join(sorted(request.amr)) or 'none'}; acr {acr or 'none'}; "
        f"{auth_age} s ago; MFA "
        + ("met" if policies.mfa.satisfied(request.amr, acr) else "not met"),
        f"Risk signals: {', '.join(sorted(risk_set)) or 'none'}",
        "Assignment: "
        + (assignment.explain(user, request.groups) or f"user '{user}' is not assigned"),
        "",
    ]
    if not policies.policies:
        lines.append("Policies: none configured")
    else:
        lines.append("Policies, in order:")
        for policy in policies.policies:
            why_not = why_not_applying(policy, policies.locations, request)
            lines.append(_policy_line(policy, policies, request, why_not))
    return "\n".join(lines) + "\n"
