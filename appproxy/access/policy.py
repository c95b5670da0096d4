"""
Conditional access, the model: who may use an app, from where, and how they
must have signed in.

The model is Microsoft Entra ID's conditional access.  An app has an
L{Assignment} (the users and groups allowed to use it at all); a
L{PolicySet} holds named locations and L{Policy} rules.  A policy I{applies}
to a request when its app, user, location and risk conditions all match;
applying policies then grant access only if their controls are met: C{block}
refuses, C{mfa} demands multi-factor authentication, C{sign_in_frequency}
demands a recent sign-in.

Frozen values only: L{appproxy.access.evaluation} makes the decision and
L{appproxy.access.what_if} explains it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from appproxy.access._phrases import quoted
from appproxy.access.risk import RISK_SIGNALS
from appproxy.http.forwarding import IPAddress, IPNetwork, unmapped

__all__ = [
    "ANY",
    "DEFAULT_MFA_AMR",
    "Assignment",
    "MfaRule",
    "NamedLocation",
    "Policy",
    "PolicySet",
    "check_risk_signals",
    "unknown_locations",
]

#: In C{apps}, C{users} or C{locations} (and their C{exclude_} forms): all.
ANY = "*"

#: The C{amr} values (RFC 8176) that count as multi-factor authentication by
#: default.
DEFAULT_MFA_AMR: tuple[str, ...] = ("mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "pop")

_GRANTS = ("block", "mfa")


def _folded(names: Iterable[str]) -> frozenset[str]:
    return frozenset(name.casefold() for name in names)


def check_risk_signals(risks: Iterable[str]) -> None:
    """
    @raise ValueError: (one line) if one of C{risks} is not a known risk
        signal (see L{appproxy.access.risk.RISK_SIGNALS}).
    """
    unknown = sorted(set(risks) - RISK_SIGNALS)
    if unknown:
        raise ValueError(
            f"unknown risk signal {quoted(unknown)} (known: {quoted(sorted(RISK_SIGNALS))})"
        )


def _check_risks(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    check_risk_signals(value)


def _check_frequency(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and (isinstance(value, bool) or value <= 0):
        raise ValueError(f"sign_in_frequency must be a positive number of seconds, not {value!r}")


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
        address = unmapped(address)
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
        """Is C{user}, a member of C{groups}, assigned?  (As L{explain}, not worded.)"""
        if (not self.users and not self.groups) or ANY in self.users:
            return True
        if user.casefold() in self._users_folded:
            return True
        return any(group in groups for group in self.groups)

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
    @ivar users_folded: C{users}, casefolded (computed).
    @ivar exclude_users_folded: C{exclude_users}, casefolded (computed).
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
    users_folded: frozenset[str] = attrs.field(init=False, repr=False, eq=False)
    exclude_users_folded: frozenset[str] = attrs.field(init=False, repr=False, eq=False)

    @users_folded.default
    def _fold_users(self) -> frozenset[str]:
        return _folded(self.users)

    @exclude_users_folded.default
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

    L{appproxy.access.evaluation.evaluate} treats an unknown location as one
    that contains no address: the configuration parser must refuse a policy
    for which this is not empty.
    """
    seen: dict[str, None] = {}
    for name in (*policy.locations, *policy.exclude_locations):
        if name != ANY and name not in locations:
            seen[name] = None
    return tuple(seen)
