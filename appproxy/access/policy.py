"""
Conditional access: who may use an app, from where, and how they must have
signed in.

The model is Microsoft Entra ID's conditional access.  An app has an
L{Assignment} (the users and groups allowed to use it at all); a
L{PolicySet} holds named locations and L{Policy} rules.  A policy I{applies}
to a request when its app, user, location and risk conditions all match;
applying policies then grant access only if their controls are met: C{block}
refuses, C{mfa} demands multi-factor authentication, C{sign_in_frequency}
demands a recent sign-in.  L{evaluate} makes the decision.

Pure functions and frozen values: no reactor, no I/O, no clock (the time is
part of the L{AccessRequest}).  L{client_address} finds the client's address
behind trusted reverse proxies; L{what_if} and L{add_policy_command} provide
C{appproxy policy what-if}.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal, TextIO

import attrs

from appproxy.access.risk import ANONYMIZER, FAILED_SIGN_INS, RISK_SIGNALS

__all__ = [
    "ANY",
    "DEFAULT_MFA_AMR",
    "AccessRequest",
    "Assignment",
    "Decision",
    "MfaRule",
    "NamedLocation",
    "Outcome",
    "Policy",
    "PolicySet",
    "add_policy_command",
    "client_address",
    "evaluate",
    "unknown_locations",
    "what_if",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: In C{apps}, C{users} or C{locations} (and their C{exclude_} forms): all.
ANY = "*"

#: The C{amr} values (RFC 8176) that count as multi-factor authentication by
#: default.
DEFAULT_MFA_AMR: tuple[str, ...] = ("mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "pop")

#: What L{evaluate} decides.
Outcome = Literal["allow", "not-assigned", "block", "mfa", "reauthenticate"]

_GRANTS = ("block", "mfa")

_RISK_TEXT = {
    ANONYMIZER: "the sign-in comes from an anonymizing network",
    FAILED_SIGN_INS: "there have been too many failed sign-ins for this user or address",
}


def _unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (C{::ffff:a.b.c.d}) as the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _quoted(names: Iterable[str]) -> str:
    """C{'a', 'b'}."""
    return ", ".join(f"'{name}'" for name in names)


def _locations_phrase(names: Sequence[str]) -> str:
    """C{location 'a'} or C{locations 'a', 'b'}."""
    return ("location " if len(names) == 1 else "locations ") + _quoted(names)


def _folded(names: Iterable[str]) -> frozenset[str]:
    return frozenset(name.casefold() for name in names)


def _check_risks(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    unknown = sorted(set(value) - RISK_SIGNALS)
    if unknown:
        raise ValueError(
            f"unknown risk signal {_quoted(unknown)} (known: {_quoted(sorted(RISK_SIGNALS))})"
        )


def _check_frequency(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and (isinstance(value, bool) or value <= 0):
        raise ValueError(f"sign_in_frequency must be a positive number of seconds, not {value!r}")


# ---------------------------------------------------------------------------
# configuration values


@attrs.frozen(kw_only=True)
class NamedLocation:
    """
    A named set of networks, such as an office.

    @ivar name: the name policies refer to it by.
    @ivar networks: its networks.  An IPv4-mapped IPv6 client address is
        matched as the IPv4 address.
    """

    name: str
    networks: tuple[IPNetwork, ...]

    def contains(self, address: IPAddress) -> bool:
        """Is C{address} in one of the networks?"""
        address = _unmapped(address)
        return any(address in network for network in self.networks)


@attrs.frozen(kw_only=True)
class Assignment:
    """
    Who may use an app at all.  Both fields empty: every signed-in user.

    @ivar users: user names, compared case-insensitively (casefolded);
        C{"*"} is every user.
    @ivar groups: group names or ids, compared exactly.
    """

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    _users_folded: frozenset[str] = attrs.field(init=False, repr=False, eq=False)

    @_users_folded.default
    def _fold_users(self) -> frozenset[str]:
        return _folded(self.users)

    def assigned(self, user: str, groups: frozenset[str]) -> bool:
        """Is C{user}, a member of C{groups}, assigned?"""
        return self.explain(user, groups) is not None

    def explain(self, user: str, groups: frozenset[str]) -> str | None:
        """How C{user} is assigned, as a phrase; L{None} if they are not."""
        if not self.users and not self.groups:
            return "every signed-in user is assigned"
        if ANY in self.users:
            return "every user is assigned ('*')"
        if user.casefold() in self._users_folded:
            return f"user '{user}' is assigned"
        for group in self.groups:
            if group in groups:
                return f"group '{group}' is assigned"
        return None


@attrs.frozen(kw_only=True)
class Policy:
    """
    One conditional-access policy.

    Lists of names: C{"*"} means all.  A user is included when C{users} and
    C{groups} are both empty, when C{users} holds C{"*"}, when the user name
    is listed (case-insensitively) or when the user is in a listed group
    (compared exactly).  Exclusions always win over inclusions.

    @ivar name: its name, shown to users and in logs.
    @ivar apps: the apps it covers (C{"*"}: all).
    @ivar exclude_apps: apps it never covers.
    @ivar users: the users it covers.
    @ivar groups: the groups whose members it covers.
    @ivar exclude_users: users it never covers.
    @ivar exclude_groups: groups whose members it never covers.
    @ivar locations: named locations the client address must be in
        (C{"*"}: anywhere).
    @ivar exclude_locations: named locations where it does not apply.
    @ivar risks: if not empty, it applies only when at least one of these risk
        signals (C{"failed-sign-ins"}, C{"anonymizer"}) is present.
    @ivar grant: C{"block"}, C{"mfa"}, or L{None} for session controls only.
    @ivar sign_in_frequency: if set, the user must have authenticated at the
        provider within that many seconds.
    """

    name: str
    apps: tuple[str, ...] = (ANY,)
    exclude_apps: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    exclude_users: tuple[str, ...] = ()
    exclude_groups: tuple[str, ...] = ()
    locations: tuple[str, ...] = (ANY,)
    exclude_locations: tuple[str, ...] = ()
    risks: tuple[str, ...] = attrs.field(default=(), validator=_check_risks)
    grant: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(_GRANTS))
    )
    sign_in_frequency: int | None = attrs.field(default=None, validator=_check_frequency)
    _users_folded: frozenset[str] = attrs.field(init=False, repr=False, eq=False)
    _exclude_users_folded: frozenset[str] = attrs.field(init=False, repr=False, eq=False)

    @_users_folded.default
    def _fold_users(self) -> frozenset[str]:
        return _folded(self.users)

    @_exclude_users_folded.default
    def _fold_exclude_users(self) -> frozenset[str]:
        return _folded(self.exclude_users)


@attrs.frozen(kw_only=True)
class MfaRule:
    """
    What counts as multi-factor authentication: a session whose C{amr} shares
    a value with C{amr}, or whose C{acr} is in C{acr}.
    """

    amr: tuple[str, ...] = DEFAULT_MFA_AMR
    acr: tuple[str, ...] = ()

    def satisfied(self, amr: Iterable[str], acr: str | None) -> bool:
        """Do this C{amr} and C{acr} count as multi-factor authentication?"""
        return not set(self.amr).isdisjoint(amr) or (acr is not None and acr in self.acr)


@attrs.frozen(kw_only=True)
class PolicySet:
    """
    The service's conditional-access configuration.

    @ivar locations: the named locations, by name.
    @ivar policies: the policies, in configuration order.
    @ivar mfa: what counts as multi-factor authentication.
    """

    locations: Mapping[str, NamedLocation]
    policies: tuple[Policy, ...]
    mfa: MfaRule = attrs.field(factory=MfaRule)


def unknown_locations(policy: Policy, locations: Mapping[str, NamedLocation]) -> tuple[str, ...]:
    """
    The location names C{policy} uses (in C{locations} or
    C{exclude_locations}) that are not in C{locations}, in the order they
    appear, without duplicates.  C{"*"} is always known.

    L{evaluate} treats an unknown location as one that contains no address:
    the configuration parser must refuse a policy for which this is not
    empty.
    """
    seen: dict[str, None] = {}
    for name in (*policy.locations, *policy.exclude_locations):
        if name != ANY and name not in locations:
            seen[name] = None
    return tuple(seen)


# ---------------------------------------------------------------------------
# evaluation


@attrs.frozen(kw_only=True)
class AccessRequest:
    """
    A signed-in user's request for an app, as conditional access sees it.

    @ivar app: the app's name.
    @ivar user: the user name.
    @ivar groups: the user's groups.
    @ivar client_ip: the client's address (see L{client_address}).
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


def _why_not(
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
        or folded in policy._users_folded
        or not request.groups.isdisjoint(policy.groups)
    ):
        return f"user '{user}' is not included (not listed, and in no listed group)"
    if ANY in policy.exclude_users or folded in policy._exclude_users_folded:
        return f"user '{user}' is excluded"
    for group in policy.exclude_groups:
        if group in request.groups:
            return f"user '{user}' is excluded by group '{group}'"

    address = _unmapped(request.client_ip)
    if _location_containing(address, policy.locations, locations) is None:
        return f"address {address} is in none of the {_locations_phrase(policy.locations)}"
    excluded = _location_containing(address, policy.exclude_locations, locations)
    if excluded == ANY:
        return "every location is excluded ('*')"
    if excluded is not None:
        return f"address {address} is in excluded location '{excluded}'"

    if policy.risks and request.risks.isdisjoint(policy.risks):
        return f"none of its risk signals ({', '.join(policy.risks)}) is present"
    return None


def _why_applies(
    policy: Policy, locations: Mapping[str, NamedLocation], request: AccessRequest
) -> str:
    """The conditions by which C{policy} applies to C{request}, as a phrase."""
    clauses = [_RISK_TEXT[risk] for risk in policy.risks if risk in request.risks]
    address = _unmapped(request.client_ip)
    where = _location_containing(address, policy.locations, locations)
    if where is not None and where != ANY:
        clauses.append(f"the sign-in comes from location '{where}'")
    elif policy.exclude_locations:
        clauses.append(
            f"the sign-in comes from outside {_locations_phrase(policy.exclude_locations)}"
        )
    if not clauses:
        member_of = [group for group in policy.groups if group in request.groups]
        if member_of and ANY not in policy.users:
            clauses.append(f"user '{request.user}' is in group '{member_of[0]}'")
        elif request.user.casefold() in policy._users_folded:
            clauses.append(f"it applies to user '{request.user}'")
        else:
            clauses.append(f"it applies to app '{request.app}'")
    return "; ".join(clauses)


def _auth_age(request: AccessRequest) -> int:
    return request.now - request.auth_time


def _frequency_exceeded(policy: Policy, request: AccessRequest) -> bool:
    return policy.sign_in_frequency is not None and _auth_age(request) > policy.sign_in_frequency


def _applying(policies: PolicySet, request: AccessRequest) -> list[Policy]:
    return [
        policy
        for policy in policies.policies
        if _why_not(policy, policies.locations, request) is None
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
            why = _why_applies(policy, policies.locations, request)
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
        if _frequency_exceeded(policy, request):
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
        names = _quoted(policy.name for policy in applying)
        reason = f"Allowed: policies {names} apply and are satisfied."
    return Decision(outcome="allow", policy=None, reason=reason)


# ---------------------------------------------------------------------------
# the client's address


def _parse_forwarded_entry(entry: str) -> IPAddress | None:
    """
    One C{X-Forwarded-For} entry: an IPv4 or IPv6 address, optionally
    bracketed (IPv6) and followed by a port, as some proxies write it.
    L{None} if malformed.
    """
    host = entry
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            return None
        host, rest = entry[1:close], entry[close + 1 :]
        if rest and not (rest[0] == ":" and rest[1:].isdigit() and rest[1:].isascii()):
            return None
        if ":" not in host:
            return None
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if not (port.isdigit() and port.isascii()):
            return None
    if "%" in host:
        # Scoped addresses have no place in a forwarding header.
        return None
    try:
        return _unmapped(ipaddress.ip_address(host))
    except ValueError:
        return None


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in proxies)


def client_address(
    peer: str, forwarded_for: Sequence[bytes], trusted_proxies: Sequence[IPNetwork]
) -> IPAddress:
    """
    The client's address.

    The TCP peer's address, unless the peer is in one of
    C{trusted_proxies}: then C{X-Forwarded-For} (all the header's values,
    joined with commas) is walked from the right, past trusted proxies, and
    the first untrusted address is the client.  A malformed entry stops the
    walk: the last address found before it is used.  Empty entries are
    skipped.  Anything left of the first untrusted address, which the client
    itself may have written, is never used.

    IPv4-mapped IPv6 addresses are returned as IPv4 addresses.

    @param peer: the TCP peer's IP address.
    @param forwarded_for: the values of the C{X-Forwarded-For} headers, in
        the order received.

    @raise ValueError: if C{peer} is not an IP address.
    """
    address = _unmapped(ipaddress.ip_address(peer))
    if not _trusted(address, trusted_proxies):
        return address
    joined = b",".join(forwarded_for).decode("latin-1")
    for raw in reversed(joined.split(",")):
        entry = raw.strip(" \t")
        if not entry:
            continue
        parsed = _parse_forwarded_entry(entry)
        if parsed is None:
            break
        address = parsed
        if not _trusted(address, trusted_proxies):
            break
    return address


# ---------------------------------------------------------------------------
# appproxy policy what-if

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
        state = "exceeded" if _frequency_exceeded(policy, request) else "met"
        controls.append(f"sign-in frequency {policy.sign_in_frequency} s: {state}")
    if not controls:
        controls.append("no grant or session control")
    return f"  {policy.name}: applies ({_why_applies(policy, policies.locations, request)}); " + (
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
        known = _quoted(sorted(assignment_by_app)) or "none"
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
    unknown = sorted(risk_set - RISK_SIGNALS)
    if unknown:
        raise ValueError(
            f"unknown risk signal {_quoted(unknown)} (known: {_quoted(sorted(RISK_SIGNALS))})"
        )
    group_list = list(dict.fromkeys(groups))
    request = AccessRequest(
        app=app,
        user=user,
        groups=frozenset(group_list),
        client_ip=_unmapped(address),
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
        f"User: '{user}'; groups: {_quoted(group_list) or 'none'}",
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
            why_not = _why_not(policy, policies.locations, request)
            lines.append(_policy_line(policy, policies, request, why_not))
    return "\n".join(lines) + "\n"


def _names(value: str) -> list[str]:
    """A comma-separated list on the command line; empty items dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of seconds") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is negative")
    return number


#: Loads a service configuration file: its policies and each app's assignment.
LoadConfig = Callable[[str], tuple[PolicySet, Mapping[str, Assignment]]]


def add_policy_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], load_config: LoadConfig
) -> None:
    """
    Add C{appproxy policy what-if} to the C{appproxy} command.

    @param load_config: reads the service configuration named by
        C{--config}; it raises L{ValueError} or L{OSError} with a one-line
        message on a bad file.
    """
    parser = subparsers.add_parser(
        "policy",
        help="inspect conditional-access policies",
        description="Inspect the conditional-access policies of a service configuration.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    what = commands.add_parser(
        "what-if",
        help="show the decision for a hypothetical sign-in",
        description=(
            "Evaluate the service configuration's assignments and conditional-access "
            "policies for a hypothetical sign-in, and show which policies apply and why."
        ),
    )
    what.add_argument("--config", required=True, metavar="FILE", help="the service.toml")
    what.add_argument("--user", required=True, help="the user name")
    what.add_argument(
        "--groups", default="", metavar="G,H", help="the user's groups, comma-separated"
    )
    what.add_argument("--app", required=True, help="the app's name")
    what.add_argument("--ip", required=True, metavar="ADDR", help="the client's IP address")
    what.add_argument(
        "--amr",
        default="pwd",
        metavar="M,N",
        help="authentication methods, comma-separated (default: pwd)",
    )
    what.add_argument("--acr", default=None, help="authentication context class")
    what.add_argument(
        "--auth-age",
        type=_non_negative,
        default=0,
        metavar="SECONDS",
        help="how long ago the user signed in (default: 0)",
    )
    what.add_argument(
        "--risk",
        action="append",
        default=[],
        choices=sorted(RISK_SIGNALS),
        help="a risk signal present (repeatable)",
    )
    what.set_defaults(func=_cmd_what_if, load_policy_config=load_config)


def _cmd_what_if(args: argparse.Namespace, out: TextIO) -> int:
    load_config: LoadConfig = args.load_policy_config
    try:
        ip = ipaddress.ip_address(args.ip)
    except ValueError:
        raise ValueError(f"--ip: {args.ip!r} is not an IP address") from None
    policies, assignments = load_config(args.config)
    out.write(
        what_if(
            policies,
            assignments,
            user=args.user,
            groups=_names(args.groups),
            app=args.app,
            ip=ip,
            amr=_names(args.amr),
            acr=args.acr,
            auth_age=args.auth_age,
            risks=args.risk,
        )
    )
    return 0
