"""
The connector's connection machine (L{appproxy.tunnel.connector_machine}),
driven directly: every (state, input) pair of the table, and random input
sequences against its invariants (every stream opened is taken or refused,
exactly once; never more of each kind taken than its capacity, requests
and upgraded streams each their own; one close, only once idle; nothing
after closed).
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.connector_machine import (
    TRANSITIONS,
    AcceptRequest,
    AcceptSettings,
    AcceptUpgrade,
    Advertise,
    Close,
    ConnectorInput,
    ConnectorMachine,
    ConnectorState,
    EndUpgrades,
    Invalid,
    Refuse,
)

C = ConnectorState
N = ConnectorInput
CAPACITY = 3
UPGRADES = 2

#: How to reach each state from a new machine, with one request active.
_PATHS: dict[ConnectorState, list[ConnectorInput]] = {
    C.AWAITING_SETTINGS: [N.REQUEST_OPENED],
    C.READY: [N.REQUEST_OPENED, N.SETTINGS_APPLIED],
    C.DRAINING: [N.REQUEST_OPENED, N.DRAIN_REQUESTED],
    C.CLOSED: [N.REQUEST_OPENED, N.CONNECTION_LOST],
}

#: What each (state, input) pair returns, one request active.
_EXPECTED: dict[tuple[ConnectorState, ConnectorInput], tuple[ConnectorState, list[object]]] = {
    **{(s, N.REQUEST_OPENED): (s, [AcceptRequest()]) for s in (C.AWAITING_SETTINGS, C.READY)},
    (C.DRAINING, N.REQUEST_OPENED): (C.DRAINING, [Refuse()]),
    **{(s, N.UPGRADE_OPENED): (s, [AcceptUpgrade()]) for s in (C.AWAITING_SETTINGS, C.READY)},
    (C.DRAINING, N.UPGRADE_OPENED): (C.DRAINING, [Refuse()]),
    # No upgraded stream is active on these paths: a defined error.
    **{
        (s, N.UPGRADE_FINISHED): (s, [Invalid(s, N.UPGRADE_FINISHED)])
        for s in (C.AWAITING_SETTINGS, C.READY, C.DRAINING)
    },
    **{(s, N.CONTROL_OPENED): (s, [AcceptSettings()]) for s in (C.AWAITING_SETTINGS, C.READY)},
    (C.DRAINING, N.CONTROL_OPENED): (C.DRAINING, [Refuse()]),
    **{(s, N.UNKNOWN_CONTROL): (s, [Refuse()]) for s in (C.AWAITING_SETTINGS, C.READY, C.DRAINING)},
    (C.AWAITING_SETTINGS, N.SETTINGS_APPLIED): (C.READY, []),
    (C.READY, N.SETTINGS_APPLIED): (C.READY, []),
    (C.DRAINING, N.SETTINGS_APPLIED): (C.DRAINING, []),
    (C.AWAITING_SETTINGS, N.SETTINGS_REFUSED): (C.AWAITING_SETTINGS, []),
    (C.READY, N.SETTINGS_REFUSED): (C.READY, []),
    (C.DRAINING, N.SETTINGS_REFUSED): (C.DRAINING, []),
    (C.AWAITING_SETTINGS, N.REQUEST_FINISHED): (C.AWAITING_SETTINGS, []),
    (C.READY, N.REQUEST_FINISHED): (C.READY, []),
    (C.DRAINING, N.REQUEST_FINISHED): (C.DRAINING, [Close(goaway=True)]),
    **{
        (s, N.DRAIN_REQUESTED): (C.DRAINING, [Advertise(0)]) for s in (C.AWAITING_SETTINGS, C.READY)
    },
    (C.DRAINING, N.DRAIN_REQUESTED): (C.DRAINING, []),
    **{
        (s, N.GOAWAY_RECEIVED): (C.DRAINING, []) for s in (C.AWAITING_SETTINGS, C.READY, C.DRAINING)
    },
    **{(s, N.CONNECTION_LOST): (C.CLOSED, []) for s in (C.AWAITING_SETTINGS, C.READY, C.DRAINING)},
    **{(C.CLOSED, i): (C.CLOSED, []) for i in ConnectorInput},
}


def machine_in(state: ConnectorState) -> ConnectorMachine:
    machine = ConnectorMachine(CAPACITY, UPGRADES)
    for event in _PATHS[state]:
        machine.feed(event)
    assert machine.state is state, (state, machine.state)
    return machine


class TableTests(SynchronousTestCase):
    def test_table_complete(self) -> None:
        """Every (state, input) pair is in the table: none is left to chance."""
        for pair in itertools.product(ConnectorState, ConnectorInput):
            self.assertIn(pair, TRANSITIONS)
            self.assertIn(pair, _EXPECTED)

    def test_every_pair(self) -> None:
        """Each pair, from each state with one request active, does what it should."""
        for state, event in itertools.product(ConnectorState, ConnectorInput):
            with self.subTest(state=state, event=event):
                machine = machine_in(state)
                actions = machine.feed(event)
                expected_state, expected = _EXPECTED[(state, event)]
                self.assertEqual(actions, expected)
                self.assertIs(machine.state, expected_state)

    def test_idle_drain_closes_at_once(self) -> None:
        machine = ConnectorMachine(CAPACITY)
        self.assertEqual(machine.feed(N.DRAIN_REQUESTED), [Advertise(0), Close(goaway=True)])
        self.assertEqual(machine.advertised, 0)

    def test_goaway_closes_once_idle_without_goaway(self) -> None:
        machine = machine_in(C.READY)
        self.assertEqual(machine.feed(N.GOAWAY_RECEIVED), [])
        self.assertEqual(machine.feed(N.REQUEST_OPENED), [Refuse()])
        self.assertEqual(machine.feed(N.REQUEST_FINISHED), [Close(goaway=False)])

    def test_capacity_refuses_past_limit(self) -> None:
        machine = ConnectorMachine(2)
        self.assertEqual(machine.feed(N.REQUEST_OPENED), [AcceptRequest()])
        self.assertEqual(machine.feed(N.REQUEST_OPENED), [AcceptRequest()])
        self.assertEqual(machine.feed(N.REQUEST_OPENED), [Refuse()])
        self.assertEqual(machine.active, 2)
        machine.feed(N.REQUEST_FINISHED)
        self.assertEqual(machine.feed(N.REQUEST_OPENED), [AcceptRequest()])

    def test_upgrades_have_their_own_room(self) -> None:
        """
        Upgraded streams are counted apart from requests: a full set of
        WebSockets leaves the requests' room untouched, and the reverse.
        """
        machine = ConnectorMachine(1, 2)
        self.assertEqual(machine.advertised, 3)
        self.assertEqual(machine.feed(N.UPGRADE_OPENED), [AcceptUpgrade()])
        self.assertEqual(machine.feed(N.UPGRADE_OPENED), [AcceptUpgrade()])
        self.assertEqual(machine.feed(N.UPGRADE_OPENED), [Refuse()])
        self.assertEqual(machine.feed(N.REQUEST_OPENED), [AcceptRequest()])
        self.assertEqual(machine.feed(N.REQUEST_OPENED), [Refuse()])
        self.assertEqual((machine.active, machine.upgrades), (1, 2))
        machine.feed(N.UPGRADE_FINISHED)
        self.assertEqual(machine.feed(N.UPGRADE_OPENED), [AcceptUpgrade()])

    def test_no_upgrade_capacity_refuses_upgrades(self) -> None:
        machine = ConnectorMachine(CAPACITY)
        self.assertEqual(machine.feed(N.UPGRADE_OPENED), [Refuse()])
        self.assertEqual(machine.advertised, CAPACITY)

    def test_drain_ends_upgrades(self) -> None:
        """
        A WebSocket cannot be drained: the drain ends the upgraded streams
        at once and waits for the requests; it closes once both are gone.
        """
        machine = ConnectorMachine(CAPACITY, UPGRADES)
        machine.feed(N.UPGRADE_OPENED)
        machine.feed(N.UPGRADE_OPENED)
        machine.feed(N.REQUEST_OPENED)
        self.assertEqual(machine.feed(N.DRAIN_REQUESTED), [Advertise(0), EndUpgrades()])
        self.assertEqual(machine.feed(N.UPGRADE_OPENED), [Refuse()])
        self.assertEqual(machine.feed(N.UPGRADE_FINISHED), [])
        self.assertEqual(machine.feed(N.UPGRADE_FINISHED), [])
        self.assertEqual(machine.feed(N.REQUEST_FINISHED), [Close(goaway=True)])
        # Asked again: nothing more to end.
        self.assertEqual(machine.feed(N.DRAIN_REQUESTED), [])

    def test_drain_of_upgrades_alone_closes_with_the_last(self) -> None:
        machine = ConnectorMachine(CAPACITY, UPGRADES)
        machine.feed(N.UPGRADE_OPENED)
        self.assertEqual(machine.feed(N.DRAIN_REQUESTED), [Advertise(0), EndUpgrades()])
        self.assertEqual(machine.feed(N.UPGRADE_FINISHED), [Close(goaway=True)])

    def test_goaway_received_lets_upgrades_run(self) -> None:
        """The service's drain is the service's: it ends its WebSockets itself."""
        machine = ConnectorMachine(CAPACITY, UPGRADES)
        machine.feed(N.UPGRADE_OPENED)
        self.assertEqual(machine.feed(N.GOAWAY_RECEIVED), [])
        self.assertEqual(machine.feed(N.UPGRADE_FINISHED), [Close(goaway=False)])

    def test_finished_without_request_is_invalid(self) -> None:
        """An end with nothing active is a defined error, not a negative count."""
        machine = ConnectorMachine(CAPACITY)
        self.assertEqual(
            machine.feed(N.REQUEST_FINISHED), [Invalid(C.AWAITING_SETTINGS, N.REQUEST_FINISHED)]
        )
        self.assertEqual(machine.active, 0)

    def test_refused_settings_keep_waiting(self) -> None:
        """A refused push neither makes the connection ready nor closes it."""
        machine = ConnectorMachine(CAPACITY)
        self.assertEqual(machine.feed(N.CONTROL_OPENED), [AcceptSettings()])
        self.assertEqual(machine.feed(N.SETTINGS_REFUSED), [])
        self.assertIs(machine.state, C.AWAITING_SETTINGS)
        self.assertEqual(machine.advertised, CAPACITY)


class PropertyTests(SynchronousTestCase):
    @given(
        st.integers(min_value=0, max_value=4),
        st.integers(min_value=0, max_value=3),
        st.lists(st.sampled_from(list(ConnectorInput)), max_size=60),
    )
    def test_invariants(
        self, capacity: int, upgrade_capacity: int, events: list[ConnectorInput]
    ) -> None:
        """
        Every stream opened is answered exactly once (taken or refused);
        taken requests never exceed the capacity, and each is finished at
        most once; one close, only when draining and idle; nothing but
        silence after closed.
        """
        machine = ConnectorMachine(capacity, upgrade_capacity)
        taken = 0
        upgrades = 0
        closes = 0
        for event in events:
            before = machine.state
            actions = machine.feed(event)
            if before is C.CLOSED:
                self.assertEqual(actions, [])
                continue
            answers = [
                a
                for a in actions
                if isinstance(a, AcceptRequest | AcceptUpgrade | AcceptSettings | Refuse)
            ]
            opened = (N.REQUEST_OPENED, N.UPGRADE_OPENED, N.CONTROL_OPENED, N.UNKNOWN_CONTROL)
            if event in opened:
                self.assertEqual(len(answers), 1)
            else:
                self.assertEqual(answers, [])
            taken += sum(isinstance(a, AcceptRequest) for a in actions)
            if event is N.REQUEST_FINISHED and not any(isinstance(a, Invalid) for a in actions):
                taken -= 1
            upgrades += sum(isinstance(a, AcceptUpgrade) for a in actions)
            if event is N.UPGRADE_FINISHED and not any(isinstance(a, Invalid) for a in actions):
                upgrades -= 1
            if event is N.REQUEST_OPENED:
                self.assertFalse(any(isinstance(a, AcceptUpgrade) for a in actions))
            if event is N.UPGRADE_OPENED:
                self.assertFalse(any(isinstance(a, AcceptRequest) for a in actions))
            self.assertEqual(machine.active, taken if machine.state is not C.CLOSED else 0)
            self.assertEqual(machine.upgrades, upgrades if machine.state is not C.CLOSED else 0)
            self.assertLessEqual(machine.active, capacity)
            self.assertLessEqual(machine.upgrades, upgrade_capacity)
            self.assertGreaterEqual(machine.active, 0)
            self.assertGreaterEqual(machine.upgrades, 0)
            for action in actions:
                if isinstance(action, EndUpgrades):
                    # Only at the drain's start, and only with some to end.
                    self.assertIs(event, N.DRAIN_REQUESTED)
                    self.assertGreater(machine.upgrades, 0)
                if isinstance(action, Close):
                    closes += 1
                    self.assertIs(machine.state, C.DRAINING)
                    self.assertEqual(machine.active, 0)
                    self.assertEqual(machine.upgrades, 0)
                if isinstance(action, AcceptRequest | AcceptUpgrade):
                    self.assertIn(machine.state, (C.AWAITING_SETTINGS, C.READY))
            if machine.state is C.CLOSED:
                taken = 0
                upgrades = 0
        self.assertLessEqual(closes, 1)
