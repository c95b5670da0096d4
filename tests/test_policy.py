"""
Tests for L{appproxy.access.policy}.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from random import Random

import attrs
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.policy import (
    AccessRequest,
    Assignment,
    Decision,
    MfaRule,
    NamedLocation,
    Policy,
    PolicySet,
    add_policy_command,
    client_address,
    evaluate,
    unknown_locations,
    what_if,
)

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


class ValueTests(SynchronousTestCase):
    def test_decision_allowed(self) -> None:
        self.assertTrue(Decision(outcome="allow", policy=None, reason="x").allowed)
        for outcome in ("not-assigned", "block", "mfa", "reauthenticate"):
            self.assertFalse(Decision(outcome=outcome, policy="p", reason="x").allowed)

    def test_invalid_grant(self) -> None:
        self.assertRaises(ValueError, Policy, name="p", grant="allow")

    def test_invalid_risk(self) -> None:
        e = self.assertRaises(ValueError, Policy, name="p", risks=("impossible-travel",))
        self.assertIn("'impossible-travel'", str(e))

    def test_invalid_frequency(self) -> None:
        for value in (0, -5):
            self.assertRaises(ValueError, Policy, name="p", sign_in_frequency=value)

    def test_unknown_locations(self) -> None:
        policy = Policy(
            name="p",
            locations=("office", "branch", "*"),
            exclude_locations=("home", "branch", "vpn"),
        )
        self.assertEqual(unknown_locations(policy, LOCATIONS), ("branch", "vpn"))
        self.assertEqual(unknown_locations(Policy(name="q"), LOCATIONS), ())
        self.assertEqual(unknown_locations(Policy(name="q"), {}), ())

    def test_named_location_mapped_address(self) -> None:
        office = LOCATIONS["office"]
        self.assertTrue(office.contains(ip_address("::ffff:10.0.0.1")))
        self.assertTrue(office.contains(ip_address("10.0.0.1")))
        self.assertFalse(office.contains(ip_address("::ffff:11.0.0.1")))
        self.assertTrue(office.contains(ip_address("2001:db8:1::1")))

    def test_mfa_rule(self) -> None:
        rule = MfaRule()
        self.assertTrue(rule.satisfied({"pwd", "otp"}, None))
        self.assertFalse(rule.satisfied({"pwd"}, None))
        self.assertFalse(rule.satisfied(set(), "urn:loa:2"))
        rule = MfaRule(amr=("hwk",), acr=("urn:loa:2",))
        self.assertTrue(rule.satisfied(set(), "urn:loa:2"))
        self.assertFalse(rule.satisfied({"otp"}, "urn:loa:1"))
        self.assertTrue(rule.satisfied({"hwk"}, None))


class AssignmentTests(SynchronousTestCase):
    def test_everyone(self) -> None:
        self.assertEqual(evaluate(policy_set(), EVERYONE, request()).outcome, "allow")

    def test_user_case_insensitive(self) -> None:
        assignment = Assignment(users=("ALICE",))
        self.assertTrue(evaluate(policy_set(), assignment, request(user="alice")).allowed)
        self.assertTrue(evaluate(policy_set(), assignment, request(user="Alice")).allowed)
        decision = evaluate(policy_set(), assignment, request(user="bob"))
        self.assertEqual(
            decision,
            Decision(
                outcome="not-assigned",
                policy=None,
                reason="User 'bob' is not assigned to app 'wiki'.",
            ),
        )

    def test_casefold(self) -> None:
        assignment = Assignment(users=("straße",))
        self.assertTrue(evaluate(policy_set(), assignment, request(user="STRASSE")).allowed)

    def test_group_exact(self) -> None:
        assignment = Assignment(groups=("Staff",))
        self.assertTrue(
            evaluate(policy_set(), assignment, request(groups=frozenset({"Staff"}))).allowed
        )
        self.assertEqual(
            evaluate(policy_set(), assignment, request(groups=frozenset({"staff"}))).outcome,
            "not-assigned",
        )

    def test_star(self) -> None:
        assignment = Assignment(users=("*",), groups=("staff",))
        self.assertTrue(evaluate(policy_set(), assignment, request(user="anyone")).allowed)

    def test_not_assigned_before_block(self) -> None:
        policies = policy_set(Policy(name="block-all", grant="block"))
        self.assertEqual(
            evaluate(policies, Assignment(users=("bob",)), request()).outcome, "not-assigned"
        )


class EvaluateTests(SynchronousTestCase):
    def test_no_policies(self) -> None:
        self.assertEqual(
            evaluate(policy_set(), EVERYONE, request()),
            Decision(
                outcome="allow",
                policy=None,
                reason="Allowed: no conditional-access policy applies.",
            ),
        )

    def test_block_anonymizer(self) -> None:
        policies = policy_set(Policy(name="no-anonymizers", risks=("anonymizer",), grant="block"))
        self.assertTrue(evaluate(policies, EVERYONE, request()).allowed)
        self.assertEqual(
            evaluate(policies, EVERYONE, request(risks=frozenset({"anonymizer"}))),
            Decision(
                outcome="block",
                policy="no-anonymizers",
                reason=(
                    "Blocked by policy 'no-anonymizers': the sign-in comes from an "
                    "anonymizing network."
                ),
            ),
        )
        self.assertTrue(
            evaluate(policies, EVERYONE, request(risks=frozenset({"failed-sign-ins"}))).allowed
        )

    def test_block_from_location(self) -> None:
        policies = policy_set(Policy(name="no-home", locations=("home",), grant="block"))
        decision = evaluate(policies, EVERYONE, request(ip="192.0.2.1"))
        self.assertEqual(decision.outcome, "block")
        self.assertEqual(
            decision.reason, "Blocked by policy 'no-home': the sign-in comes from location 'home'."
        )
        self.assertTrue(evaluate(policies, EVERYONE, request(ip="10.0.0.1")).allowed)

    def test_block_outside_office(self) -> None:
        policies = policy_set(
            Policy(name="office-only", apps=("crm",), exclude_locations=("office",), grant="block")
        )
        self.assertTrue(evaluate(policies, EVERYONE, request(app="crm", ip="10.0.0.1")).allowed)
        self.assertTrue(
            evaluate(policies, EVERYONE, request(app="crm", ip="::ffff:10.0.0.1")).allowed
        )
        self.assertTrue(evaluate(policies, EVERYONE, request(app="wiki")).allowed)
        decision = evaluate(policies, EVERYONE, request(app="crm"))
        self.assertEqual(decision.outcome, "block")
        self.assertEqual(
            decision.reason,
            "Blocked by policy 'office-only': the sign-in comes from outside location 'office'.",
        )

    def test_first_block_named(self) -> None:
        policies = policy_set(
            Policy(name="mfa-all", grant="mfa"),
            Policy(name="block-contractors", groups=("contractors",), grant="block"),
            Policy(name="block-bob", users=("Bob",), grant="block"),
        )
        decision = evaluate(
            policies, EVERYONE, request(user="bob", groups=frozenset({"contractors"}))
        )
        self.assertEqual((decision.outcome, decision.policy), ("block", "block-contractors"))
        self.assertEqual(
            decision.reason,
            "Blocked by policy 'block-contractors': user 'bob' is in group 'contractors'.",
        )
        decision = evaluate(policies, EVERYONE, request(user="BOB"))
        self.assertEqual((decision.outcome, decision.policy), ("block", "block-bob"))
        self.assertEqual(
            decision.reason, "Blocked by policy 'block-bob': it applies to user 'BOB'."
        )

    def test_mfa(self) -> None:
        policies = policy_set(
            Policy(name="session", sign_in_frequency=3600),
            Policy(name="require-mfa", apps=("wiki",), grant="mfa"),
        )
        self.assertEqual(
            evaluate(policies, EVERYONE, request()),
            Decision(
                outcome="mfa",
                policy="require-mfa",
                reason=(
                    "Policy 'require-mfa' requires multi-factor authentication; "
                    "the sign-in used pwd."
                ),
            ),
        )
        self.assertEqual(
            evaluate(policies, EVERYONE, request(amr=frozenset({"pwd", "otp"}))),
            Decision(
                outcome="allow",
                policy=None,
                reason="Allowed: policies 'session', 'require-mfa' apply and are satisfied.",
            ),
        )
        self.assertTrue(evaluate(policies, EVERYONE, request(app="crm")).allowed)

    def test_mfa_by_acr(self) -> None:
        policies = policy_set(
            Policy(name="require-mfa", grant="mfa"), mfa=MfaRule(amr=(), acr=("urn:loa:2",))
        )
        self.assertEqual(
            evaluate(policies, EVERYONE, request(amr=frozenset({"otp"}))).outcome, "mfa"
        )
        self.assertTrue(evaluate(policies, EVERYONE, request(acr="urn:loa:2")).allowed)

    def test_mfa_before_reauthenticate(self) -> None:
        policies = policy_set(
            Policy(name="hourly", sign_in_frequency=3600), Policy(name="mfa", grant="mfa")
        )
        self.assertEqual(evaluate(policies, EVERYONE, request(auth_age=4000)).outcome, "mfa")

    def test_reauthenticate(self) -> None:
        policies = policy_set(Policy(name="hourly", sign_in_frequency=3600))
        self.assertTrue(evaluate(policies, EVERYONE, request(auth_age=3600)).allowed)
        self.assertEqual(
            evaluate(policies, EVERYONE, request(auth_age=3601)),
            Decision(
                outcome="reauthenticate",
                policy="hourly",
                reason=(
                    "Policy 'hourly' requires signing in again every 3600 seconds; "
                    "the last sign-in was 3601 seconds ago."
                ),
            ),
        )
        self.assertEqual(
            evaluate(
                policy_set(Policy(name="hourly", users=("bob",), sign_in_frequency=3600)),
                EVERYONE,
                request(auth_age=10_000),
            ).outcome,
            "allow",
        )

    def test_exclusions(self) -> None:
        base = Policy(name="block", grant="block")
        cases = [
            (attrs.evolve(base, exclude_users=("ALICE",)), request()),
            (
                attrs.evolve(base, exclude_groups=("break-glass",)),
                request(groups=frozenset({"break-glass"})),
            ),
            (attrs.evolve(base, exclude_apps=("wiki",)), request()),
            (attrs.evolve(base, exclude_locations=("lab",)), request(ip="10.9.0.1")),
            (attrs.evolve(base, users=("alice",), exclude_users=("alice",)), request()),
        ]
        for policy, req in cases:
            self.assertTrue(evaluate(policy_set(policy), EVERYONE, req).allowed, policy)
        self.assertEqual(
            evaluate(policy_set(base), EVERYONE, request(ip="10.9.0.1")).outcome, "block"
        )

    def test_unknown_location_contains_nothing(self) -> None:
        policies = PolicySet(
            locations={},
            policies=(Policy(name="p", locations=("office",), grant="block"),),
            mfa=MfaRule(),
        )
        self.assertTrue(evaluate(policies, EVERYONE, request(ip="10.0.0.1")).allowed)

    def test_risk_any_of(self) -> None:
        policies = policy_set(
            Policy(name="risky", risks=("anonymizer", "failed-sign-ins"), grant="mfa")
        )
        for risks in ({"anonymizer"}, {"failed-sign-ins"}, {"anonymizer", "failed-sign-ins"}):
            self.assertEqual(
                evaluate(policies, EVERYONE, request(risks=frozenset(risks))).outcome, "mfa"
            )
        self.assertTrue(evaluate(policies, EVERYONE, request()).allowed)


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
# client_address

PROXIES = (ip_network("10.0.0.0/8"), ip_network("fd00::/8"))


def xff(*values: str) -> list[bytes]:
    return [value.encode("latin-1") for value in values]


class ClientAddressTests(SynchronousTestCase):
    def test_untrusted_peer(self) -> None:
        self.assertEqual(
            client_address("203.0.113.9", xff("1.2.3.4"), PROXIES), IPv4Address("203.0.113.9")
        )

    def test_no_proxies(self) -> None:
        self.assertEqual(client_address("10.0.0.1", xff("1.2.3.4"), ()), IPv4Address("10.0.0.1"))

    def test_trusted_peer(self) -> None:
        self.assertEqual(
            client_address("10.0.0.1", xff("6.6.6.6, 203.0.113.9"), PROXIES),
            IPv4Address("203.0.113.9"),
        )

    def test_chain_of_proxies(self) -> None:
        self.assertEqual(
            client_address("10.0.0.1", xff("6.6.6.6,203.0.113.9", "10.2.2.2 , fd00::1"), PROXIES),
            IPv4Address("203.0.113.9"),
        )

    def test_all_trusted(self) -> None:
        self.assertEqual(
            client_address("10.0.0.1", xff("10.1.1.1, 10.2.2.2"), PROXIES),
            IPv4Address("10.1.1.1"),
        )

    def test_no_header(self) -> None:
        self.assertEqual(client_address("10.0.0.1", [], PROXIES), IPv4Address("10.0.0.1"))

    def test_malformed_stops(self) -> None:
        self.assertEqual(
            client_address("10.0.0.1", xff("203.0.113.9, unknown, 10.3.3.3"), PROXIES),
            IPv4Address("10.3.3.3"),
        )
        self.assertEqual(
            client_address("10.0.0.1", xff("203.0.113.9, garbage"), PROXIES),
            IPv4Address("10.0.0.1"),
        )

    def test_empty_entries_skipped(self) -> None:
        self.assertEqual(
            client_address("10.0.0.1", xff("203.0.113.9", "", " ,,"), PROXIES),
            IPv4Address("203.0.113.9"),
        )

    def test_ports_and_brackets(self) -> None:
        for entry, expected in [
            ("203.0.113.9:4711", "203.0.113.9"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
        ]:
            self.assertEqual(
                client_address("10.0.0.1", xff(entry), PROXIES), ip_address(expected), entry
            )
        for entry in ("203.0.113.9:", "203.0.113.9:x", "[2001:db8::1", "[1.2.3.4]", "fe80::1%eth0"):
            self.assertEqual(
                client_address("10.0.0.1", xff(entry), PROXIES), IPv4Address("10.0.0.1"), entry
            )

    def test_ipv6(self) -> None:
        self.assertEqual(
            client_address("fd00::5", xff("2001:db8::7"), PROXIES), IPv6Address("2001:db8::7")
        )

    def test_mapped(self) -> None:
        self.assertEqual(
            client_address("::ffff:10.0.0.1", xff("::ffff:203.0.113.9"), PROXIES),
            IPv4Address("203.0.113.9"),
        )
        self.assertEqual(
            client_address("::ffff:203.0.113.9", [], PROXIES), IPv4Address("203.0.113.9")
        )

    def test_bad_peer(self) -> None:
        self.assertRaises(ValueError, client_address, "not-an-ip", [], PROXIES)

    def test_non_ascii(self) -> None:
        self.assertEqual(
            client_address("10.0.0.1", [b"203.0.113.9, \xff\xfe"], PROXIES),
            IPv4Address("10.0.0.1"),
        )


trusted_ips = st.sampled_from(["10.0.0.1", "10.200.3.4", "fd00::1", "fdff::abcd"])
untrusted_ips = st.sampled_from(["203.0.113.9", "198.51.100.1", "2001:db8::5", "1.1.1.1"])
any_entries = (
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=","), max_size=12
    )
    | trusted_ips
    | untrusted_ips
)


def _split_headers(entries: list[str], cuts: list[int]) -> list[bytes]:
    """Spread the entries over several header values, as several hops might."""
    joined = ",".join(entries)
    parts: list[bytes] = []
    start = 0
    for cut in sorted(set(cuts)):
        if start <= cut <= len(joined) and (cut == len(joined) or joined[cut] == ","):
            parts.append(joined[start:cut].encode("latin-1"))
            start = cut + 1
    parts.append(joined[start:].encode("latin-1"))
    return parts


class ClientAddressPropertyTests(SynchronousTestCase):
    @given(untrusted_ips, st.lists(any_entries, max_size=6))
    def test_untrusted_peer_wins(self, peer: str, entries: list[str]) -> None:
        self.assertEqual(client_address(peer, xff(",".join(entries)), PROXIES), ip_address(peer))

    @given(
        trusted_ips,
        st.lists(any_entries, max_size=5),
        untrusted_ips,
        st.lists(trusted_ips, max_size=3),
    )
    def test_spoofed_entries_never_win(
        self, peer: str, spoofed: list[str], client: str, proxies: list[str]
    ) -> None:
        entries = [*spoofed, client, *proxies]
        self.assertEqual(client_address(peer, xff(", ".join(entries)), PROXIES), ip_address(client))

    @given(trusted_ips, st.lists(any_entries, max_size=8), st.lists(st.integers(0, 100)))
    def test_result_is_peer_or_entry(self, peer: str, entries: list[str], cuts: list[int]) -> None:
        result = client_address(peer, _split_headers(entries, cuts), PROXIES)
        candidates = {ip_address(peer)}
        for entry in entries:
            for form in (entry.strip(), entry.strip().strip("[]")):
                try:
                    candidates.add(ip_address(form))
                except ValueError:
                    pass
            try:
                candidates.add(ip_address(entry.strip().rpartition(":")[0].strip("[]")))
            except ValueError:
                pass
        candidates |= {
            candidate.ipv4_mapped
            for candidate in candidates
            if isinstance(candidate, IPv6Address) and candidate.ipv4_mapped is not None
        }
        self.assertIn(result, candidates)

    @given(trusted_ips, st.lists(any_entries, max_size=8), st.lists(st.integers(0, 100)))
    def test_header_split_irrelevant(self, peer: str, entries: list[str], cuts: list[int]) -> None:
        self.assertEqual(
            client_address(peer, _split_headers(entries, cuts), PROXIES),
            client_address(peer, xff(",".join(entries)), PROXIES),
        )

    @given(
        trusted_ips,
        st.lists(any_entries, max_size=6),
        untrusted_ips,
        st.lists(trusted_ips, max_size=3),
    )
    def test_untrusted_result_is_rightmost_untrusted(
        self, peer: str, left: list[str], client: str, right: list[str]
    ) -> None:
        result = client_address(peer, xff(",".join([*left, client, *right])), PROXIES)
        self.assertFalse(any(result in network for network in PROXIES))


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


class WhatIfTests(SynchronousTestCase):
    def run_what_if(self, **kwargs: object) -> str:
        arguments: dict[str, object] = {
            "user": "alice",
            "groups": ["staff"],
            "app": "wiki",
            "ip": "198.51.100.7",
            "amr": ["pwd"],
        }
        arguments.update(kwargs)
        return what_if(WHAT_IF_POLICIES, WHAT_IF_ASSIGNMENTS, **arguments)  # type: ignore[arg-type]

    def test_mfa(self) -> None:
        out = self.run_what_if()
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

    def test_allow(self) -> None:
        out = self.run_what_if(amr=["pwd", "otp"], groups=["sales"], app="crm", ip="10.1.1.1")
        self.assertIn("Decision: allow\n", out)
        self.assertIn("Reason: Allowed: policies 'require-mfa', 'daily' apply", out)
        self.assertIn("Assignment: group 'sales' is assigned\n", out)
        self.assertIn(
            "  crm-office-only: does not apply: address 10.1.1.1 is in excluded location "
            "'office'\n",
            out,
        )
        self.assertIn("grant mfa: met", out)

    def test_block(self) -> None:
        out = self.run_what_if(risks=["anonymizer"], auth_age=90000)
        self.assertTrue(out.startswith("Decision: block (policy 'no-anonymizers')\n"))
        self.assertIn(
            "  daily: applies (it applies to app 'wiki'); sign-in frequency 86400 s: exceeded", out
        )
        self.assertIn("Risk signals: anonymizer\n", out)

    def test_excluded_group(self) -> None:
        out = self.run_what_if(groups=["break-glass"], auth_age=90000)
        self.assertTrue(out.startswith("Decision: reauthenticate (policy 'daily')\n"))
        self.assertIn(
            "  require-mfa: does not apply: user 'alice' is excluded by group 'break-glass'\n", out
        )

    def test_not_assigned(self) -> None:
        out = self.run_what_if(app="crm")
        self.assertTrue(out.startswith("Decision: not-assigned\n"))
        self.assertIn("Assignment: user 'alice' is not assigned\n", out)

    def test_location_reasons(self) -> None:
        policies = policy_set(
            Policy(name="from-home", locations=("home", "lab"), grant="block"),
            Policy(name="away", exclude_locations=("office", "home"), grant="mfa"),
        )
        out = what_if(
            policies, {"wiki": EVERYONE}, user="a", groups=[], app="wiki", ip="10.1.1.1", amr=[]
        )
        self.assertIn(
            "  from-home: does not apply: address 10.1.1.1 is in none of the locations "
            "'home', 'lab'\n",
            out,
        )
        self.assertIn(
            "  away: does not apply: address 10.1.1.1 is in excluded location 'office'", out
        )
        out = what_if(
            policies, {"wiki": EVERYONE}, user="a", groups=[], app="wiki", ip="::1", amr=[]
        )
        self.assertIn(
            "  away: applies (the sign-in comes from outside locations 'office', 'home'); "
            "grant mfa: NOT met\n",
            out,
        )

    def test_no_policies(self) -> None:
        out = what_if(
            policy_set(), {"wiki": EVERYONE}, user="a", groups=[], app="wiki", ip="::1", amr=[]
        )
        self.assertIn("Policies: none configured\n", out)
        self.assertIn("User: 'a'; groups: none\n", out)

    def test_bad_input(self) -> None:
        cases: list[tuple[dict[str, object], str]] = [
            ({"app": "nope"}, "unknown app 'nope' (apps: 'crm', 'wiki')"),
            ({"user": ""}, "the user name must not be empty"),
            ({"ip": "999.1.1.1"}, "'999.1.1.1' is not an IP address"),
            ({"auth_age": -1}, "the sign-in age must not be negative, not -1"),
            ({"risks": ["bad"]}, "unknown risk signal 'bad'"),
        ]
        for kwargs, message in cases:
            e = self.assertRaises(ValueError, self.run_what_if, **kwargs)
            self.assertIn(message, str(e))
            self.assertNotIn("\n", str(e))


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
        code, out = self.run_command(
            "policy", "what-if", "--config", "c", "--user", "u", "--app", "wiki", "--ip", "::1"
        )
        self.assertEqual(code, 0)
        self.assertIn("Sign-in: amr pwd; acr none; 0 s ago; MFA not met\n", out)

    def test_bad_ip(self) -> None:
        e = self.assertRaises(
            ValueError,
            self.run_command,
            "policy",
            "what-if",
            "--config",
            "c",
            "--user",
            "u",
            "--app",
            "wiki",
            "--ip",
            "x",
        )
        self.assertEqual(str(e), "--ip: 'x' is not an IP address")
        self.assertEqual(self.loaded, [])

    def test_unknown_app(self) -> None:
        e = self.assertRaises(
            ValueError,
            self.run_command,
            "policy",
            "what-if",
            "--config",
            "c",
            "--user",
            "u",
            "--app",
            "nope",
            "--ip",
            "::1",
        )
        self.assertEqual(str(e), "unknown app 'nope' (apps: 'crm', 'wiki')")

    def test_load_error_propagates(self) -> None:
        self.assertRaises(
            OSError,
            self.run_command,
            "policy",
            "what-if",
            "--config",
            "missing.toml",
            "--user",
            "u",
            "--app",
            "wiki",
            "--ip",
            "::1",
        )

    def test_usage_errors(self) -> None:
        import contextlib

        for argv in (
            ["policy", "what-if", "--config", "c", "--user", "u", "--app", "w"],
            [
                "policy",
                "what-if",
                "--config",
                "c",
                "--user",
                "u",
                "--app",
                "w",
                "--ip",
                "::1",
                "--risk",
                "bogus",
            ],
            [
                "policy",
                "what-if",
                "--config",
                "c",
                "--user",
                "u",
                "--app",
                "w",
                "--ip",
                "::1",
                "--auth-age",
                "-3",
            ],
        ):
            with contextlib.redirect_stderr(io.StringIO()):
                self.assertRaises(SystemExit, self.parser.parse_args, argv)
