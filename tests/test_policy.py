"""
Tests for L{appproxy.access.policy}, L{appproxy.access.evaluation},
L{appproxy.access.what_if} and L{appproxy.cli.policy}.

The examples are tables: each row names itself, and a failure names the row.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Mapping, Sequence
from ipaddress import ip_address, ip_network
from random import Random

import attrs
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.evaluation import AccessRequest, Decision, evaluate
from appproxy.access.policy import (
    Assignment,
    MfaRule,
    NamedLocation,
    Policy,
    PolicySet,
    unknown_locations,
)
from appproxy.access.what_if import what_if
from appproxy.cli.policy import add_policy_command

NOW = 1_700_000_000

LOCATIONS = {
    "office": NamedLocation(
        name="office", networks=(ip_network("10.0.0.0/8"), ip_network("2001:db8:1::/48"))
    ),
    "home": NamedLocation(name="home", networks=(ip_network("192.0.2.0/24"),)),
    "lab": NamedLocation(name="lab", networks=(ip_network("10.9.0.0/16"),)),
}

EVERYONE = Assignment()


def request(
    *,
    app: str = "wiki",
    user: str = "alice",
    groups: frozenset[str] = frozenset(),
    ip: str = "198.51.100.7",
    amr: frozenset[str] = frozenset({"pwd"}),
    acr: str | None = None,
    auth_age: int = 0,
    risks: frozenset[str] = frozenset(),
) -> AccessRequest:
    return AccessRequest(
        app=app,
        user=user,
        groups=groups,
        client_ip=ip_address(ip),
        amr=amr,
        acr=acr,
        auth_time=NOW - auth_age,
        now=NOW,
        risks=risks,
    )


def policy_set(*policies: Policy, mfa: MfaRule | None = None) -> PolicySet:
    return PolicySet(locations=LOCATIONS, policies=policies, mfa=mfa or MfaRule())


# ---------------------------------------------------------------------------
# strategies

users = st.sampled_from(["alice", "Alice", "ALICE", "bob", "carol", "Straße"])
request_users = st.sampled_from(["alice", "Alice", "bob", "carol", "dave", "STRASSE"])
group_names = st.sampled_from(["staff", "Staff", "contractors", "cn=admins,dc=example", "g-1"])
apps = st.sampled_from(["wiki", "crm", "mail"])
location_names = st.sampled_from(sorted(LOCATIONS))
addresses = st.sampled_from(
    [
        "10.1.2.3",
        "10.9.8.7",
        "192.0.2.55",
        "198.51.100.7",
        "2001:db8:1::5",
        "2001:db8:2::5",
        "::ffff:10.1.2.3",
        "::ffff:203.0.113.1",
    ]
).map(ip_address)
risk_sets = st.frozensets(st.sampled_from(["failed-sign-ins", "anonymizer"]))
amr_sets = st.frozensets(st.sampled_from(["pwd", "otp", "mfa", "hwk", "kba", "wia"]), max_size=3)
acrs = st.none() | st.sampled_from(["urn:loa:1", "urn:loa:2", "silver"])


def _tuples(
    elements: st.SearchStrategy[str], max_size: int = 3
) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(elements, max_size=max_size, unique=True).map(tuple)


def _often(
    default: tuple[str, ...], other: st.SearchStrategy[tuple[str, ...]]
) -> st.SearchStrategy[tuple[str, ...]]:
    """Mostly C{default} (a condition that matches everything), sometimes C{other}."""
    return st.sampled_from([True, True, False]).flatmap(
        lambda use_default: st.just(default) if use_default else other
    )


policies_st = st.builds(
    Policy,
    name=st.just("placeholder"),
    apps=_often(("*",), _tuples(apps | st.just("*"), 2)),
    exclude_apps=_often((), _tuples(apps, 1)),
    users=_often((), _tuples(users | st.just("*"), 2)),
    groups=_often((), _tuples(group_names, 2)),
    exclude_users=_often((), _tuples(users, 1)),
    exclude_groups=_often((), _tuples(group_names, 1)),
    locations=_often(("*",), _tuples(location_names | st.just("*"), 2)),
    exclude_locations=_often((), _tuples(location_names, 1)),
    risks=_often((), _tuples(st.sampled_from(["failed-sign-ins", "anonymizer"]), 2)),
    grant=st.sampled_from([None, "block", "mfa", "mfa"]),
    sign_in_frequency=st.none() | st.integers(1, 10_000),
)


def _named(policies: list[Policy]) -> tuple[Policy, ...]:
    return tuple(attrs.evolve(policy, name=f"p{index}") for index, policy in enumerate(policies))


policy_sets = st.builds(
    lambda policies, mfa: PolicySet(locations=LOCATIONS, policies=_named(policies), mfa=mfa),
    st.lists(policies_st, max_size=6),
    st.builds(
        MfaRule,
        amr=st.just(MfaRule().amr) | _tuples(st.sampled_from(["otp", "mfa", "hwk"]), 2),
        acr=_tuples(st.sampled_from(["urn:loa:2", "silver"]), 2),
    ),
)
assignments = st.just(Assignment()) | st.builds(
    Assignment, users=_tuples(users | st.just("*"), 2), groups=_tuples(group_names, 2)
)
requests = st.builds(
    AccessRequest,
    app=apps,
    user=request_users,
    groups=st.frozensets(group_names, max_size=3),
    client_ip=addresses,
    amr=amr_sets,
    acr=acrs,
    auth_time=st.integers(NOW - 20_000, NOW),
    now=st.just(NOW),
    risks=risk_sets,
)

_STRICTNESS = {"allow": 0, "reauthenticate": 1, "mfa": 2, "block": 3, "not-assigned": 4}


# ---------------------------------------------------------------------------
# examples


@attrs.frozen
class Case:
    """
    One row of a decision table: what L{evaluate} decides for C{request}.

    @ivar expected: the whole L{Decision}, or only its outcome.
    """

    label: str
    policies: PolicySet
    request: AccessRequest
    expected: Decision | str
    assignment: Assignment = EVERYONE


class DecisionTableTestCase(SynchronousTestCase):
    def assertDecisions(self, cases: Sequence[Case]) -> None:
        """Each row's decision is the one it expects; a failure names the row."""
        for case in cases:
            decision = evaluate(case.policies, case.assignment, case.request)
            if isinstance(case.expected, Decision):
                self.assertEqual(decision, case.expected, case.label)
            else:
                self.assertEqual(decision.outcome, case.expected, case.label)
                self.assertEqual(decision.allowed, case.expected == "allow", case.label)


class ValueTests(SynchronousTestCase):
    def test_decision_allowed(self) -> None:
        self.assertTrue(Decision(outcome="allow", policy=None, reason="x").allowed)
        for outcome in ("not-assigned", "block", "mfa", "reauthenticate"):
            self.assertFalse(Decision(outcome=outcome, policy="p", reason="x").allowed, outcome)

    def test_invalid_grant(self) -> None:
        self.assertRaises(ValueError, Policy, name="p", grant="allow")

    def test_invalid_risk(self) -> None:
        e = self.assertRaises(ValueError, Policy, name="p", risks=("impossible-travel",))
        self.assertIn("'impossible-travel'", str(e))

    def test_invalid_frequency(self) -> None:
        for value in (0, -5):
            self.assertRaises(ValueError, Policy, name="p", sign_in_frequency=value)

    def test_unknown_locations(self) -> None:
        mixed = Policy(
            name="p",
            locations=("office", "branch", "*"),
            exclude_locations=("home", "branch", "vpn"),
        )
        cases: list[tuple[str, Policy, Mapping[str, NamedLocation], tuple[str, ...]]] = [
            ("unknown in both lists", mixed, LOCATIONS, ("branch", "vpn")),
            ("anywhere", Policy(name="q"), LOCATIONS, ()),
            ("anywhere, no locations", Policy(name="q"), {}, ()),
        ]
        for label, policy, locations, expected in cases:
            self.assertEqual(unknown_locations(policy, locations), expected, label)

    def test_named_location_mapped_address(self) -> None:
        office = LOCATIONS["office"]
        for address, expected in [
            ("::ffff:10.0.0.1", True),
            ("10.0.0.1", True),
            ("::ffff:11.0.0.1", False),
            ("2001:db8:1::1", True),
        ]:
            self.assertEqual(office.contains(ip_address(address)), expected, address)

    def test_mfa_rule(self) -> None:
        strict = MfaRule(amr=("hwk",), acr=("urn:loa:2",))
        for label, rule, amr, acr, expected in [
            ("default, otp", MfaRule(), {"pwd", "otp"}, None, True),
            ("default, pwd only", MfaRule(), {"pwd"}, None, False),
            ("default, acr only", MfaRule(), set(), "urn:loa:2", False),
            ("strict, acr", strict, set(), "urn:loa:2", True),
            ("strict, other amr and acr", strict, {"otp"}, "urn:loa:1", False),
            ("strict, amr", strict, {"hwk"}, None, True),
        ]:
            self.assertEqual(rule.satisfied(amr, acr), expected, label)


NOT_ASSIGNED_BOB = Decision(
    outcome="not-assigned", policy=None, reason="User 'bob' is not assigned to app 'wiki'."
)


class AssignmentTests(DecisionTableTestCase):
    def test_assignments(self) -> None:
        alice = Assignment(users=("ALICE",))
        staff = Assignment(groups=("Staff",))
        self.assertDecisions(
            [
                Case("everyone", policy_set(), request(), "allow"),
                Case("user, same case", policy_set(), request(user="alice"), "allow", alice),
                Case("user, other case", policy_set(), request(user="Alice"), "allow", alice),
                Case("user not listed", policy_set(), request(user="bob"), NOT_ASSIGNED_BOB, alice),
                Case(
                    "user casefolded",
                    policy_set(),
                    request(user="STRASSE"),
                    "allow",
                    Assignment(users=("straße",)),
                ),
                Case(
                    "group, exact",
                    policy_set(),
                    request(groups=frozenset({"Staff"})),
                    "allow",
                    staff,
                ),
                Case(
                    "group, other case",
                    policy_set(),
                    request(groups=frozenset({"staff"})),
                    "not-assigned",
                    staff,
                ),
                Case(
                    "every user ('*')",
                    policy_set(),
                    request(user="anyone"),
                    "allow",
                    Assignment(users=("*",), groups=("staff",)),
                ),
                Case(
                    "not assigned before block",
                    policy_set(Policy(name="block-all", grant="block")),
                    request(),
                    "not-assigned",
                    Assignment(users=("bob",)),
                ),
            ]
        )


NO_ANONYMIZERS = policy_set(Policy(name="no-anonymizers", risks=("anonymizer",), grant="block"))
NO_HOME = policy_set(Policy(name="no-home", locations=("home",), grant="block"))
OFFICE_ONLY = policy_set(
    Policy(name="office-only", apps=("crm",), exclude_locations=("office",), grant="block")
)
FIRST_BLOCK = policy_set(
    Policy(name="mfa-all", grant="mfa"),
    Policy(name="block-contractors", groups=("contractors",), grant="block"),
    Policy(name="block-bob", users=("Bob",), grant="block"),
)
SESSION_AND_MFA = policy_set(
    Policy(name="session", sign_in_frequency=3600),
    Policy(name="require-mfa", apps=("wiki",), grant="mfa"),
)
MFA_BY_ACR = policy_set(
    Policy(name="require-mfa", grant="mfa"), mfa=MfaRule(amr=(), acr=("urn:loa:2",))
)
HOURLY_AND_MFA = policy_set(
    Policy(name="hourly", sign_in_frequency=3600), Policy(name="mfa", grant="mfa")
)
HOURLY = policy_set(Policy(name="hourly", sign_in_frequency=3600))
RISKY = policy_set(Policy(name="risky", risks=("anonymizer", "failed-sign-ins"), grant="mfa"))
BLOCK = Policy(name="block", grant="block")


def _blocked(policy: str, why: str) -> Decision:
    return Decision(outcome="block", policy=policy, reason=f"Blocked by policy '{policy}': {why}.")


class EvaluateTests(DecisionTableTestCase):
    def test_no_policies(self) -> None:
        self.assertDecisions(
            [
                Case(
                    "no policies",
                    policy_set(),
                    request(),
                    Decision(
                        outcome="allow",
                        policy=None,
                        reason="Allowed: no conditional-access policy applies.",
                    ),
                )
            ]
        )

    def test_block(self) -> None:
        self.assertDecisions(
            [
                Case("no risk", NO_ANONYMIZERS, request(), "allow"),
                Case(
                    "anonymizer",
                    NO_ANONYMIZERS,
                    request(risks=frozenset({"anonymizer"})),
                    _blocked("no-anonymizers", "the sign-in comes from an anonymizing network"),
                ),
                Case(
                    "another risk",
                    NO_ANONYMIZERS,
                    request(risks=frozenset({"failed-sign-ins"})),
                    "allow",
                ),
                Case(
                    "from home",
                    NO_HOME,
                    request(ip="192.0.2.1"),
                    _blocked("no-home", "the sign-in comes from location 'home'"),
                ),
                Case("from the office", NO_HOME, request(ip="10.0.0.1"), "allow"),
                Case("crm in the office", OFFICE_ONLY, request(app="crm", ip="10.0.0.1"), "allow"),
                Case(
                    "crm in the office, mapped",
                    OFFICE_ONLY,
                    request(app="crm", ip="::ffff:10.0.0.1"),
                    "allow",
                ),
                Case("another app", OFFICE_ONLY, request(app="wiki"), "allow"),
                Case(
                    "crm outside the office",
                    OFFICE_ONLY,
                    request(app="crm"),
                    _blocked("office-only", "the sign-in comes from outside location 'office'"),
                ),
            ]
        )

    def test_first_block_named(self) -> None:
        self.assertDecisions(
            [
                Case(
                    "by group",
                    FIRST_BLOCK,
                    request(user="bob", groups=frozenset({"contractors"})),
                    _blocked("block-contractors", "user 'bob' is in group 'contractors'"),
                ),
                Case(
                    "by user",
                    FIRST_BLOCK,
                    request(user="BOB"),
                    _blocked("block-bob", "it applies to user 'BOB'"),
                ),
            ]
        )

    def test_mfa(self) -> None:
        self.assertDecisions(
            [
                Case(
                    "password only",
                    SESSION_AND_MFA,
                    request(),
                    Decision(
                        outcome="mfa",
                        policy="require-mfa",
                        reason=(
                            "Policy 'require-mfa' requires multi-factor authentication; "
                            "the sign-in used pwd."
                        ),
                    ),
                ),
                Case(
                    "with otp",
                    SESSION_AND_MFA,
                    request(amr=frozenset({"pwd", "otp"})),
                    Decision(
                        outcome="allow",
                        policy=None,
                        reason=(
                            "Allowed: policies 'session', 'require-mfa' apply and are satisfied."
                        ),
                    ),
                ),
                Case("another app", SESSION_AND_MFA, request(app="crm"), "allow"),
                Case("amr not counted", MFA_BY_ACR, request(amr=frozenset({"otp"})), "mfa"),
                Case("by acr", MFA_BY_ACR, request(acr="urn:loa:2"), "allow"),
                Case("mfa before reauthenticate", HOURLY_AND_MFA, request(auth_age=4000), "mfa"),
            ]
        )

    def test_reauthenticate(self) -> None:
        self.assertDecisions(
            [
                Case("just in time", HOURLY, request(auth_age=3600), "allow"),
                Case(
                    "too old",
                    HOURLY,
                    request(auth_age=3601),
                    Decision(
                        outcome="reauthenticate",
                        policy="hourly",
                        reason=(
                            "Policy 'hourly' requires signing in again every 3600 seconds; "
                            "the last sign-in was 3601 seconds ago."
                        ),
                    ),
                ),
                Case(
                    "policy for another user",
                    policy_set(Policy(name="hourly", users=("bob",), sign_in_frequency=3600)),
                    request(auth_age=10_000),
                    "allow",
                ),
            ]
        )

    def test_exclusions(self) -> None:
        self.assertDecisions(
            [
                Case(
                    "user",
                    policy_set(attrs.evolve(BLOCK, exclude_users=("ALICE",))),
                    request(),
                    "allow",
                ),
                Case(
                    "group",
                    policy_set(attrs.evolve(BLOCK, exclude_groups=("break-glass",))),
                    request(groups=frozenset({"break-glass"})),
                    "allow",
                ),
                Case(
                    "app",
                    policy_set(attrs.evolve(BLOCK, exclude_apps=("wiki",))),
                    request(),
                    "allow",
                ),
                Case(
                    "location",
                    policy_set(attrs.evolve(BLOCK, exclude_locations=("lab",))),
                    request(ip="10.9.0.1"),
                    "allow",
                ),
                Case(
                    "user both included and excluded",
                    policy_set(attrs.evolve(BLOCK, users=("alice",), exclude_users=("alice",))),
                    request(),
                    "allow",
                ),
                Case("nothing excluded", policy_set(BLOCK), request(ip="10.9.0.1"), "block"),
            ]
        )

    def test_unknown_location_contains_nothing(self) -> None:
        policies = PolicySet(
            locations={},
            policies=(Policy(name="p", locations=("office",), grant="block"),),
            mfa=MfaRule(),
        )
        self.assertDecisions([Case("unknown location", policies, request(ip="10.0.0.1"), "allow")])

    def test_risk_any_of(self) -> None:
        self.assertDecisions(
            [
                *(
                    Case(f"risks {sorted(risks)}", RISKY, request(risks=frozenset(risks)), "mfa")
                    for risks in (
                        {"anonymizer"},
                        {"failed-sign-ins"},
                        {"anonymizer", "failed-sign-ins"},
                    )
                ),
                Case("no risk", RISKY, request(), "allow"),
            ]
        )


# ---------------------------------------------------------------------------
# properties


def _decide(policies: PolicySet, assignment: Assignment, req: AccessRequest) -> Decision:
    return evaluate(policies, assignment, req)


def _with(policies: PolicySet, extra: Policy, position: int) -> PolicySet:
    items = list(policies.policies)
    items.insert(position % (len(items) + 1), extra)
    return attrs.evolve(policies, policies=tuple(items))


def _applies_to(req: AccessRequest) -> Policy:
    """A block policy that names C{req}'s app, user and location explicitly."""
    where = [name for name, location in LOCATIONS.items() if location.contains(req.client_ip)]
    return Policy(
        name="added-block",
        apps=(req.app,),
        users=(req.user.upper(),),
        locations=tuple(where) or ("*",),
        grant="block",
    )


class EvaluatePropertyTests(SynchronousTestCase):
    @given(policy_sets, assignments, requests)
    def test_deterministic(
        self, policies: PolicySet, assignment: Assignment, req: AccessRequest
    ) -> None:
        first = evaluate(policies, assignment, req)
        again = evaluate(
            policies,
            assignment,
            attrs.evolve(req, groups=frozenset(sorted(req.groups, reverse=True))),
        )
        self.assertEqual(first, again)
        self.assertEqual(first.allowed, first.outcome == "allow")
        if first.outcome == "allow":
            self.assertIsNone(first.policy)
        elif first.outcome != "not-assigned":
            self.assertIn(first.policy, [policy.name for policy in policies.policies])
            self.assertIn(f"'{first.policy}'", first.reason)
        self.assertTrue(first.reason.endswith("."))

    @given(policy_sets, assignments, requests, st.randoms(use_true_random=False))
    def test_list_order_within_policies_irrelevant(
        self, policies: PolicySet, assignment: Assignment, req: AccessRequest, random: Random
    ) -> None:
        def shuffled(items: tuple[str, ...]) -> tuple[str, ...]:
            as_list = list(items)
            random.shuffle(as_list)
            return tuple(as_list)

        permuted = attrs.evolve(
            policies,
            policies=tuple(
                attrs.evolve(
                    policy,
                    users=shuffled(policy.users),
                    groups=shuffled(policy.groups),
                    locations=shuffled(policy.locations),
                    exclude_locations=shuffled(policy.exclude_locations),
                    apps=shuffled(policy.apps),
                    risks=shuffled(policy.risks),
                )
                for policy in policies.policies
            ),
        )
        assignment2 = Assignment(
            users=shuffled(assignment.users), groups=shuffled(assignment.groups)
        )
        before = evaluate(policies, assignment, req)
        after = evaluate(permuted, assignment2, req)
        self.assertEqual((before.outcome, before.policy), (after.outcome, after.policy))

    @given(policy_sets, assignments, requests, st.integers(0, 10))
    def test_applying_block_never_allows(
        self, policies: PolicySet, assignment: Assignment, req: AccessRequest, position: int
    ) -> None:
        decision = evaluate(_with(policies, _applies_to(req), position), assignment, req)
        self.assertFalse(decision.allowed)
        if assignment.assigned(req.user, req.groups):
            self.assertEqual(decision.outcome, "block")

    @given(policy_sets, assignments, requests, policies_st, st.integers(0, 10))
    def test_adding_block_policy_never_allows_more(
        self,
        policies: PolicySet,
        assignment: Assignment,
        req: AccessRequest,
        extra: Policy,
        position: int,
    ) -> None:
        extra = attrs.evolve(extra, name="extra", grant="block")
        before = evaluate(policies, assignment, req)
        after = evaluate(_with(policies, extra, position), assignment, req)
        if not before.allowed:
            self.assertFalse(after.allowed)
        if after.allowed:
            self.assertEqual(before, after)

    @given(policy_sets, assignments, requests, st.permutations(range(6)))
    def test_block_wins_whatever_order(
        self,
        policies: PolicySet,
        assignment: Assignment,
        req: AccessRequest,
        order: list[int],
    ) -> None:
        indexes = [index for index in order if index < len(policies.policies)]
        reordered = attrs.evolve(
            policies, policies=tuple(policies.policies[index] for index in indexes)
        )
        before = evaluate(policies, assignment, req)
        after = evaluate(reordered, assignment, req)
        self.assertEqual(before.outcome == "block", after.outcome == "block")
        self.assertEqual(before.outcome == "not-assigned", after.outcome == "not-assigned")
        if after.outcome == "block":
            # The first applying block policy in the new order is named.
            blockers = [
                policy.name
                for policy in reordered.policies
                if policy.grant == "block"
                and evaluate(attrs.evolve(reordered, policies=(policy,)), EVERYONE, req).outcome
                == "block"
            ]
            self.assertEqual(after.policy, blockers[0])

    @given(policy_sets, assignments, requests, policies_st, st.integers(0, 10), st.integers(0, 3))
    def test_exclusions_win(
        self,
        policies: PolicySet,
        assignment: Assignment,
        req: AccessRequest,
        extra: Policy,
        position: int,
        how: int,
    ) -> None:
        extra = attrs.evolve(extra, name="extra", grant="block")
        if how == 0:
            extra = attrs.evolve(extra, exclude_users=(*extra.exclude_users, req.user.swapcase()))
        elif how == 1:
            assume(req.groups)
            extra = attrs.evolve(extra, exclude_groups=(*extra.exclude_groups, min(req.groups)))
        elif how == 2:
            extra = attrs.evolve(extra, exclude_apps=(req.app,))
        else:
            where = [name for name, loc in LOCATIONS.items() if loc.contains(req.client_ip)]
            assume(where)
            extra = attrs.evolve(extra, exclude_locations=(where[0],))
        before = evaluate(policies, assignment, req)
        after = evaluate(_with(policies, extra, position), assignment, req)
        self.assertEqual((before.outcome, before.policy), (after.outcome, after.policy))

    @given(policy_sets, requests)
    def test_not_assigned_never_allowed(self, policies: PolicySet, req: AccessRequest) -> None:
        assignment = Assignment(users=("nobody", "someone-else"), groups=("group-nobody-is-in",))
        decision = evaluate(policies, assignment, req)
        self.assertEqual(decision.outcome, "not-assigned")
        self.assertFalse(decision.allowed)

    @given(policy_sets, assignments, requests)
    def test_satisfied_mfa_never_asked(
        self, policies: PolicySet, assignment: Assignment, req: AccessRequest
    ) -> None:
        req = attrs.evolve(req, amr=req.amr | {policies.mfa.amr[0]}) if policies.mfa.amr else req
        assume(policies.mfa.satisfied(req.amr, req.acr))
        self.assertNotEqual(evaluate(policies, assignment, req).outcome, "mfa")

    @given(policy_sets, assignments, requests, risk_sets)
    def test_more_risk_never_less_strict(
        self, policies: PolicySet, assignment: Assignment, req: AccessRequest, more: frozenset[str]
    ) -> None:
        before = evaluate(policies, assignment, req)
        after = evaluate(policies, assignment, attrs.evolve(req, risks=req.risks | more))
        self.assertGreaterEqual(_STRICTNESS[after.outcome], _STRICTNESS[before.outcome])

    @given(policy_sets, assignments, requests)
    def test_no_policies_means_assignment_decides(
        self, policies: PolicySet, assignment: Assignment, req: AccessRequest
    ) -> None:
        decision = evaluate(attrs.evolve(policies, policies=()), assignment, req)
        self.assertEqual(decision.allowed, assignment.assigned(req.user, req.groups))

    @given(policy_sets, requests)
    def test_unconditional_block(self, policies: PolicySet, req: AccessRequest) -> None:
        blocked = _with(policies, Policy(name="everything", grant="block"), 99)
        self.assertEqual(evaluate(blocked, EVERYONE, req).outcome, "block")


# ---------------------------------------------------------------------------
# what-if

WHAT_IF_POLICIES = policy_set(
    Policy(name="no-anonymizers", risks=("anonymizer",), grant="block"),
    Policy(name="crm-office-only", apps=("crm",), exclude_locations=("office",), grant="block"),
    Policy(name="require-mfa", exclude_groups=("break-glass",), grant="mfa"),
    Policy(name="daily", sign_in_frequency=86400),
)
WHAT_IF_ASSIGNMENTS: Mapping[str, Assignment] = {
    "wiki": Assignment(),
    "crm": Assignment(groups=("sales",)),
}
LOCATION_POLICIES = policy_set(
    Policy(name="from-home", locations=("home", "lab"), grant="block"),
    Policy(name="away", exclude_locations=("office", "home"), grant="mfa"),
)
#: The hypothetical sign-in of L{WhatIfTests}, unless a row says otherwise.
ALICE: Mapping[str, object] = {
    "user": "alice",
    "groups": ["staff"],
    "app": "wiki",
    "ip": "198.51.100.7",
    "amr": ["pwd"],
}
#: A sign-in with no group or method, for the location rows.
ANONYMOUS: Mapping[str, object] = {
    "user": "a",
    "groups": [],
    "app": "wiki",
    "ip": "::1",
    "amr": [],
}


@attrs.frozen
class WhatIfCase:
    """
    One row: what L{what_if} reports for a sign-in.

    @ivar sign_in: the arguments of L{what_if}.
    @ivar starts: how the report begins, if checked.
    @ivar contains: parts of the report.
    """

    label: str
    sign_in: Mapping[str, object]
    starts: str | None = None
    contains: tuple[str, ...] = ()
    policies: PolicySet = WHAT_IF_POLICIES
    assignments: Mapping[str, Assignment] = WHAT_IF_ASSIGNMENTS


def run_what_if(case: WhatIfCase) -> str:
    return what_if(case.policies, case.assignments, **case.sign_in)  # type: ignore[arg-type]


WHAT_IF_CASES = [
    WhatIfCase(
        "allow",
        {**ALICE, "amr": ["pwd", "otp"], "groups": ["sales"], "app": "crm", "ip": "10.1.1.1"},
        contains=(
            "Decision: allow\n",
            "Reason: Allowed: policies 'require-mfa', 'daily' apply",
            "Assignment: group 'sales' is assigned\n",
            "  crm-office-only: does not apply: address 10.1.1.1 is in excluded location "
            "'office'\n",
            "grant mfa: met",
        ),
    ),
    WhatIfCase(
        "block",
        {**ALICE, "risks": ["anonymizer"], "auth_age": 90000},
        starts="Decision: block (policy 'no-anonymizers')\n",
        contains=(
            "  daily: applies (it applies to app 'wiki'); sign-in frequency 86400 s: exceeded",
            "Risk signals: anonymizer\n",
        ),
    ),
    WhatIfCase(
        "excluded group",
        {**ALICE, "groups": ["break-glass"], "auth_age": 90000},
        starts="Decision: reauthenticate (policy 'daily')\n",
        contains=(
            "  require-mfa: does not apply: user 'alice' is excluded by group 'break-glass'\n",
        ),
    ),
    WhatIfCase(
        "not assigned",
        {**ALICE, "app": "crm"},
        starts="Decision: not-assigned\n",
        contains=("Assignment: user 'alice' is not assigned\n",),
    ),
    WhatIfCase(
        "in the office",
        {**ANONYMOUS, "ip": "10.1.1.1"},
        contains=(
            "  from-home: does not apply: address 10.1.1.1 is in none of the locations "
            "'home', 'lab'\n",
            "  away: does not apply: address 10.1.1.1 is in excluded location 'office'",
        ),
        policies=LOCATION_POLICIES,
        assignments={"wiki": EVERYONE},
    ),
    WhatIfCase(
        "away",
        ANONYMOUS,
        contains=(
            "  away: applies (the sign-in comes from outside locations 'office', 'home'); "
            "grant mfa: NOT met\n",
        ),
        policies=LOCATION_POLICIES,
        assignments={"wiki": EVERYONE},
    ),
    WhatIfCase(
        "no policies",
        ANONYMOUS,
        contains=("Policies: none configured\n", "User: 'a'; groups: none\n"),
        policies=policy_set(),
        assignments={"wiki": EVERYONE},
    ),
]


class WhatIfTests(SynchronousTestCase):
    def test_mfa(self) -> None:
        out = run_what_if(WhatIfCase("mfa", ALICE))
        self.assertEqual(
            out,
            "Decision: mfa (policy 'require-mfa')\n"
            "Reason: Policy 'require-mfa' requires multi-factor authentication; "
            "the sign-in used pwd.\n"
            "\n"
            "User: 'alice'; groups: 'staff'\n"
            "App: 'wiki'; address: 198.51.100.7\n"
            "Sign-in: amr pwd; acr none; 0 s ago; MFA not met\n"
            "Risk signals: none\n"
            "Assignment: every signed-in user is assigned\n"
            "\n"
            "Policies, in order:\n"
            "  no-anonymizers: does not apply: none of its risk signals (anonymizer) is present\n"
            "  crm-office-only: does not apply: app 'wiki' is not included\n"
            "  require-mfa: applies (it applies to app 'wiki'); grant mfa: NOT met\n"
            "  daily: applies (it applies to app 'wiki'); sign-in frequency 86400 s: met\n",
        )

    def test_reports(self) -> None:
        for case in WHAT_IF_CASES:
            out = run_what_if(case)
            if case.starts is not None:
                self.assertTrue(out.startswith(case.starts), f"{case.label}: {out}")
            for part in case.contains:
                self.assertIn(part, out, case.label)

    def test_bad_input(self) -> None:
        cases: list[tuple[dict[str, object], str]] = [
            ({"app": "nope"}, "unknown app 'nope' (apps: 'crm', 'wiki')"),
            ({"user": ""}, "the user name must not be empty"),
            ({"ip": "999.1.1.1"}, "'999.1.1.1' is not an IP address"),
            ({"auth_age": -1}, "the sign-in age must not be negative, not -1"),
            ({"risks": ["bad"]}, "unknown risk signal 'bad'"),
        ]
        for kwargs, message in cases:
            e = self.assertRaises(ValueError, run_what_if, WhatIfCase(message, {**ALICE, **kwargs}))
            self.assertIn(message, str(e))
            self.assertNotIn("\n", str(e))


def what_if_argv(
    *options: str, config: str = "c", app: str = "wiki", ip: str | None = "::1"
) -> list[str]:
    """C{appproxy policy what-if} with a config, a user, an app, an address and C{options}."""
    argv = ["policy", "what-if", "--config", config, "--user", "u", "--app", app]
    if ip is not None:
        argv += ["--ip", ip]
    return [*argv, *options]


class PolicyCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.loaded: list[str] = []

        def load_config(path: str) -> tuple[PolicySet, Mapping[str, Assignment]]:
            self.loaded.append(path)
            if path == "missing.toml":
                raise OSError(2, "No such file or directory", path)
            return WHAT_IF_POLICIES, WHAT_IF_ASSIGNMENTS

        parser = argparse.ArgumentParser(prog="appproxy")
        add_policy_command(parser.add_subparsers(), load_config)
        self.parser = parser

    def run_command(self, *argv: str) -> tuple[int, str]:
        args = self.parser.parse_args(argv)
        out = io.StringIO()
        return args.func(args, out), out.getvalue()

    def test_what_if(self) -> None:
        code, out = self.run_command(
            "policy",
            "what-if",
            "--config",
            "service.toml",
            "--user",
            "alice",
            "--groups",
            "sales, staff,",
            "--app",
            "crm",
            "--ip",
            "203.0.113.4",
            "--amr",
            "pwd,otp",
            "--risk",
            "failed-sign-ins",
            "--auth-age",
            "60",
        )
        self.assertEqual(code, 0)
        self.assertEqual(self.loaded, ["service.toml"])
        self.assertEqual(
            out,
            what_if(
                WHAT_IF_POLICIES,
                WHAT_IF_ASSIGNMENTS,
                user="alice",
                groups=["sales", "staff"],
                app="crm",
                ip="203.0.113.4",
                amr=["pwd", "otp"],
                auth_age=60,
                risks=["failed-sign-ins"],
            ),
        )
        self.assertTrue(out.startswith("Decision: block (policy 'crm-office-only')\n"))

    def test_defaults(self) -> None:
        code, out = self.run_command(*what_if_argv())
        self.assertEqual(code, 0)
        self.assertIn("Sign-in: amr pwd; acr none; 0 s ago; MFA not met\n", out)

    def test_bad_ip(self) -> None:
        e = self.assertRaises(ValueError, self.run_command, *what_if_argv(ip="x"))
        self.assertEqual(str(e), "--ip: 'x' is not an IP address")
        self.assertEqual(self.loaded, [])

    def test_unknown_app(self) -> None:
        e = self.assertRaises(ValueError, self.run_command, *what_if_argv(app="nope"))
        self.assertEqual(str(e), "unknown app 'nope' (apps: 'crm', 'wiki')")

    def test_load_error_propagates(self) -> None:
        self.assertRaises(OSError, self.run_command, *what_if_argv(config="missing.toml"))

    def test_usage_errors(self) -> None:
        for argv in (
            what_if_argv(app="w", ip=None),
            what_if_argv("--risk", "bogus", app="w"),
            what_if_argv("--auth-age", "-3", app="w"),
        ):
            with contextlib.redirect_stderr(io.StringIO()):
                self.assertRaises(SystemExit, self.parser.parse_args, argv)
