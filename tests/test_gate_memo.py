"""
The gate's admissions of this second (L{appproxy.gate.memo}): the next
requests of a session from the same address within the second are admitted
with the same identity headers without deciding again, and anything the
decision depends on that changes meanwhile (failed sign-ins, policies,
anonymizers, the address, the second, a revocation, the cookie's expiry)
is seen by the very next request.

The gate is the service's own (L{build_sign_in} on a directory made by
C{appproxy init}, its real state database); its clock is a test clock.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.access.policy import MfaRule, NamedLocation, Policy, PolicySet
from appproxy.access.risk import AnonymizerList
from appproxy.access.session import Session
from appproxy.gate.memo import MEMO_LIMIT, AdmitMemo
from appproxy.gate.replies import Admit, Reply
from appproxy.gate.setup import build_sign_in
from appproxy.state.sessions import Revocation
from tests.servicedir import init_service_dir, service_config

ADDRESS = "198.51.100.7"


def _session(now: int, **fields: Any) -> Session:
    return Session(
        app="demo",
        user="alice",
        subject="alice-sub",
        issuer="https://login.example.test:8443",
        name="Alice",
        email="alice@example.test",
        groups=("staff",),
        amr=("pwd",),
        auth_time=now,
        issued_at=now,
        expires_at=now + 3600,
        **fields,
    )


class AdmitMemoTests(SynchronousTestCase):
    """The memo alone: an entry for exactly the same inputs, this second only."""

    def setUp(self) -> None:
        self.memo = AdmitMemo()
        self.app: Any = object()
        self.session = _session(1000)
        self.admit = Admit(headers=((b"x-remote-user", b"alice"),), user="alice")
        self.inputs = ("policies", None, "failures", 0)

    def get(self, **changed: Any) -> Admit | None:
        asked = {
            "now": 1000,
            "app": self.app,
            "session": self.session,
            "groups": ("staff",),
            "client_ip": ADDRESS,
            "inputs": self.inputs,
        }
        asked.update(changed)
        return self.memo.get(**asked)

    def test_same_inputs_same_second(self) -> None:
        self.assertIsNone(self.get())
        self.memo.put(1000, self.app, self.session, ("staff",), ADDRESS, self.inputs, self.admit)
        self.assertIs(self.get(), self.admit)

    def test_anything_else_decided_anew(self) -> None:
        self.memo.put(1000, self.app, self.session, ("staff",), ADDRESS, self.inputs, self.admit)
        for changed in (
            {"now": 1001},
            {"app": object()},
            {"session": _session(1000)},  # equal, but another cookie's
            {"groups": ("staff", "admins")},
            {"client_ip": "198.51.100.8"},
            {"inputs": ("policies", None, "failures", 1)},
            {"inputs": ("other policies", None, "failures", 0)},
        ):
            self.assertIsNone(self.get(**changed), changed)
        self.assertIs(self.get(), self.admit)

    def test_forgotten_in_the_next_second(self) -> None:
        self.memo.put(1000, self.app, self.session, ("staff",), ADDRESS, self.inputs, self.admit)
        other = _session(1001)
        self.memo.put(1001, self.app, other, ("staff",), ADDRESS, self.inputs, self.admit)
        self.assertEqual(len(self.memo), 1)
        self.assertIsNone(self.get(now=1001))
        self.assertIs(self.get(now=1001, session=other), self.admit)

    def test_bounded(self) -> None:
        sessions = [_session(1000) for _ in range(MEMO_LIMIT + 5)]
        for session in sessions:
            self.memo.put(1000, self.app, session, ("staff",), ADDRESS, self.inputs, self.admit)
        self.assertEqual(len(self.memo), MEMO_LIMIT)
        self.assertIsNone(self.get(session=sessions[-1]))
        self.memo.clear()
        self.assertEqual(len(self.memo), 0)
        self.assertIsNone(self.get(session=sessions[0]))


class GateMemoTests(TestCase):
    """The service's gate: what changes within a second is seen at once."""

    @inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        directory = init_service_dir(Path(self.mktemp()))
        self.config = service_config(directory)
        self.setup = build_sign_in(self.config, reactor)
        self.addCleanup(self.setup.close)
        sign_in = self.setup.sign_in
        assert sign_in is not None
        self.sign_in = sign_in
        self.context = sign_in.context
        sessions = self.setup.sessions
        assert sessions is not None
        yield sessions.poll()  # the revocations read: sessions can be checked
        self.clock = Clock()
        self.clock.advance(int(reactor.seconds()))
        self.context.clock = self.clock
        self.app = self.context.apps["demo"]
        self.session = _session(int(self.clock.seconds()))
        name = self.app.cookie_name
        self.cookies = {name: self.context.codec.encode(self.session, name)}

    def admit(self, address: str = ADDRESS) -> Admit | Reply:
        decided = self.sign_in.admit(
            self.app,
            method=b"GET",
            uri=b"/",
            cookies=self.cookies,
            client_ip=ip_address(address),
            request_id="memo-test",
            accept=None,
        )
        assert isinstance(decided, Admit | Reply)
        return decided

    def policies(self, *policies: Policy, **locations: str) -> PolicySet:
        named = {
            name: NamedLocation(name=name, networks=(ip_network(network),))
            for name, network in locations.items()
        }
        return PolicySet(locations=named, policies=policies, mfa=MfaRule())

    def assertAdmitted(self, decided: Admit | Reply) -> Admit:
        self.assertIsInstance(decided, Admit)
        assert isinstance(decided, Admit)
        self.assertIn((b"x-remote-email", b"alice@example.test"), decided.headers)
        return decided

    def assertStatus(self, decided: Admit | Reply, status: int) -> None:
        self.assertIsInstance(decided, Reply)
        assert isinstance(decided, Reply)
        self.assertEqual(decided.status, status)

    def test_same_second_admitted_again(self) -> None:
        """The next requests of the second get the same admission; the next second decides anew."""
        first = self.assertAdmitted(self.admit())
        self.assertIs(self.admit(), first)
        self.clock.advance(1)
        later = self.assertAdmitted(self.admit())
        self.assertIsNot(later, first)
        self.assertEqual(later.headers, first.headers)

    def test_failed_sign_ins_seen_at_once(self) -> None:
        """Failed sign-ins recorded within the second raise the risk for the next request."""
        self.context.set_config(
            self.config,
            self.policies(Policy(name="risky", risks=("failed-sign-ins",), grant="mfa")),
        )
        self.assertAdmitted(self.admit())
        failures = self.context.failures
        for _ in range(failures.limit):
            failures.record("alice", "192.0.2.1", self.clock.seconds())
        self.assertStatus(self.admit(), 302)  # to sign in again, with MFA

    def test_new_policies_seen_at_once(self) -> None:
        """Policies changed within the second (a reload) decide the next request."""
        self.assertAdmitted(self.admit())
        self.context.policies = self.policies(Policy(name="closed", grant="block"))
        self.assertStatus(self.admit(), 403)
        self.context.set_config(self.config, self.policies())
        self.assertAdmitted(self.admit())

    def test_new_anonymizers_seen_at_once(self) -> None:
        self.context.set_config(
            self.config,
            self.policies(Policy(name="no-anonymizers", risks=("anonymizer",), grant="block")),
        )
        self.assertAdmitted(self.admit())
        self.context.anonymizers = AnonymizerList([ip_network("198.51.100.0/24")])
        self.assertStatus(self.admit(), 403)

    def test_each_address_decided(self) -> None:
        """An admission from one address is not another address's."""
        self.context.set_config(
            self.config,
            self.policies(
                Policy(name="no-lab", locations=("lab",), grant="block"), lab="10.9.0.0/16"
            ),
        )
        self.assertAdmitted(self.admit())
        self.assertStatus(self.admit("10.9.1.2"), 403)
        self.assertAdmitted(self.admit())

    def test_revoked_session_seen_at_once(self) -> None:
        """A session ended within the second is sent to sign in at its next request."""
        self.assertAdmitted(self.admit())
        now = int(self.clock.seconds())
        self.context.sessions.revocations.add(
            Revocation(
                seq=0,
                kind="session",
                subject=self.session.session_id,
                revoked_at=now,
                expires_at=now + 3600,
            )
        )
        self.assertStatus(self.admit(), 302)

    def test_signed_assertion_made_per_request(self) -> None:
        """An app that gets a signed assertion gets one made for each request."""
        self.app = attrs.evolve(self.app, jwt_assertion=True)
        first = self.assertAdmitted(self.admit())
        self.assertIsNot(self.admit(), first)
