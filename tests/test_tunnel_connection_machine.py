"""
The tunnel connection's state machine (L{appproxy.tunnel.connection_machine}),
driven directly: every (state, input) pair, the settings push, capacity,
drain and liveness, the upgraded streams' budget of their own, and random
input sequences against its invariants.
"""

from __future__ import annotations

import itertools

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.connection_machine import (
    TRANSITIONS,
    Action,
    Close,
    ConnectionInput,
    ConnectionMachine,
    ConnectionState,
    Invalid,
    OpenStream,
    OpenUpgrade,
    PushSettings,
    ReturnJob,
    ReturnUpgrade,
    StopWanting,
    StopWantingUpgrade,
    WantJob,
    WantUpgrade,
)

C = ConnectionState
N = ConnectionInput


def machine_in(state: ConnectionState, capacity: int = 2) -> ConnectionMachine:
    m = ConnectionMachine(max_capacity=10)
    if state is C.CLOSED:
        m.feed(N.CONNECTION_LOST)
        return m
    if state is C.CONNECTING:
        return m
    m.feed(N.HANDSHAKE_DONE)
    m.feed(N.CAPACITY_CHANGED, capacity)
    if state is C.AWAITING_SETTINGS:
        return m
    m.feed(N.SETTINGS_ACKED)
    m.feed(N.STREAM_CLOSED)
    if state is C.DRAINING:
        m.feed(N.JOB_OFFERED)  # one stream in flight: draining waits for it
        m.feed(N.DRAIN_REQUESTED)
    assert m.state is state, (state, m.state)
    return m


class TableTests(SynchronousTestCase):
    def test_every_pair(self) -> None:
        for state, event in itertools.product(ConnectionState, ConnectionInput):
            with self.subTest(state=state, event=event):
                m = machine_in(state)
                actions = m.feed(event, 1)
                entry = TRANSITIONS.get((state, event))
                if entry is None:
                    self.assertEqual(actions, [Invalid(state, event)])
                    self.assertIs(m.state, state)
                else:
                    self.assertIs(m.state, entry[0])
                if event is N.JOB_OFFERED:
                    answers = [a for a in actions if isinstance(a, OpenStream | ReturnJob)]
                    self.assertEqual(len(answers), 1)
                if event is N.UPGRADE_OFFERED:
                    upgrades = [a for a in actions if isinstance(a, OpenUpgrade | ReturnUpgrade)]
                    self.assertEqual(len(upgrades), 1)
                if state is C.CLOSED:
                    self.assertEqual(
                        [a for a in actions if not isinstance(a, ReturnJob | ReturnUpgrade)], []
                    )
                self.assertGreaterEqual(m.open, 0)
                self.assertGreaterEqual(m.upgrades, 0)

    def test_undefined_pairs(self) -> None:
        """What h2 or the shell can never send in that state is an Invalid, not an exception."""
        for pair in [
            (C.CONNECTING, N.SETTINGS_ACKED),
            (C.CONNECTING, N.STREAM_CLOSED),
            (C.DRAINING, N.HANDSHAKE_DONE),
            (C.READY, N.HANDSHAKE_DONE),
        ]:
            self.assertNotIn(pair, TRANSITIONS)


class BehaviourTests(SynchronousTestCase):
    def test_settings_then_jobs(self) -> None:
        m = ConnectionMachine(max_capacity=10)
        self.assertEqual(m.feed(N.HANDSHAKE_DONE), [PushSettings()])
        # No job before the connector acknowledged its settings.
        self.assertEqual(m.feed(N.CAPACITY_CHANGED, 2), [])
        self.assertEqual(m.feed(N.SETTINGS_ACKED), [WantJob()])
        self.assertEqual(m.feed(N.JOB_OFFERED), [OpenStream()])  # full: the push is open
        self.assertEqual(m.feed(N.STREAM_CLOSED), [WantJob()])

    def test_capacity_capped_and_shrinking(self) -> None:
        m = machine_in(C.READY, capacity=50)
        self.assertEqual(m.capacity, 10)
        self.assertEqual(m.feed(N.CAPACITY_CHANGED, 0), [StopWanting()])
        self.assertEqual(m.feed(N.JOB_OFFERED), [ReturnJob()])
        self.assertIs(m.state, C.READY)
        self.assertEqual(m.feed(N.CAPACITY_CHANGED, 1), [WantJob()])

    def test_reload_push_waits_for_room(self) -> None:
        m = machine_in(C.READY, capacity=1)
        m.feed(N.JOB_OFFERED)
        self.assertEqual(m.feed(N.SETTINGS_CHANGED), [])
        self.assertTrue(m.push_pending)
        self.assertEqual(m.feed(N.STREAM_CLOSED), [PushSettings()])
        self.assertEqual(m.open, 1)

    def test_failed_push_drains_then_closes(self) -> None:
        m = machine_in(C.READY, capacity=3)
        m.feed(N.JOB_OFFERED)
        self.assertEqual(m.feed(N.SETTINGS_FAILED), [StopWanting()])
        self.assertEqual(m.feed(N.STREAM_CLOSED), [Close(goaway=True)])
        self.assertEqual(m.feed(N.STREAM_CLOSED), [Invalid(C.DRAINING, N.STREAM_CLOSED)])

    def test_goaway_closes_without_saying_it(self) -> None:
        m = machine_in(C.READY)
        self.assertEqual(m.feed(N.GOAWAY_RECEIVED), [StopWanting(), Close(goaway=False)])

    def test_cancelled_job_asks_again(self) -> None:
        m = machine_in(C.READY)
        self.assertTrue(m.wanting)
        self.assertEqual(m.feed(N.JOB_CANCELLED), [WantJob()])
        self.assertEqual(m.open, 0)

    def test_closed_returns_jobs(self) -> None:
        m = machine_in(C.READY)
        self.assertEqual(m.feed(N.CONNECTION_LOST), [StopWanting()])
        self.assertEqual(m.feed(N.JOB_OFFERED), [ReturnJob()])
        self.assertEqual(m.feed(N.UPGRADE_OFFERED), [ReturnUpgrade()])
        self.assertEqual(m.feed(N.SETTINGS_CHANGED), [])


class PropertyTests(SynchronousTestCase):
    @example(
        [
            (N.HANDSHAKE_DONE, 0),
            (N.SETTINGS_ACKED, 0),
            (N.CAPACITY_CHANGED, 2),
            (N.JOB_CANCELLED, 0),
        ]
    )
    @given(
        st.lists(
            st.tuples(st.sampled_from(list(ConnectionInput)), st.integers(0, 20)),
            max_size=60,
        )
    )
    def test_invariants(self, steps: list[tuple[ConnectionInput, int]]) -> None:
        """
        Whatever the inputs: nothing raises; open streams never go negative
        and a stream is opened only within the peer's offer (capped); every
        offered job gets exactly one answer; one ask at a time; one Close;
        nothing but a job's answer once closed.
        """
        m = ConnectionMachine(max_capacity=10)
        closes = 0
        for event, value in steps:
            was_closed = m.state is C.CLOSED
            wanting = m.wanting
            actions: list[Action] = m.feed(event, value)
            self.assertGreaterEqual(m.open, 0)
            self.assertLessEqual(m.capacity, 10)
            if any(isinstance(a, OpenStream) for a in actions):
                self.assertLessEqual(m.open, m.capacity)
            if event is N.JOB_OFFERED:
                answers = [a for a in actions if isinstance(a, OpenStream | ReturnJob)]
                self.assertEqual(len(answers), 1)
            else:
                self.assertFalse(any(isinstance(a, OpenStream | ReturnJob) for a in actions))
            if any(isinstance(a, WantJob) for a in actions):
                self.assertTrue(m.wanting)
                # An ask is answered by a job, or by one nobody wants any more
                # (cancelled): only then may a new one go out while one was.
                self.assertFalse(wanting and event not in (N.JOB_OFFERED, N.JOB_CANCELLED))
            closes += sum(isinstance(a, Close) for a in actions)
            self.assertLessEqual(closes, 1)
            if was_closed:
                self.assertEqual(
                    [a for a in actions if not isinstance(a, ReturnJob | ReturnUpgrade)], []
                )


def upgrading(advertised: int = 12, offer: int = 2, max_upgrades: int = 100) -> ConnectionMachine:
    """A ready machine whose connector offers C{offer} upgraded streams of C{advertised}."""
    m = ConnectionMachine(max_capacity=100, max_upgrades=max_upgrades)
    m.feed(N.HANDSHAKE_DONE)
    m.feed(N.CAPACITY_CHANGED, advertised)
    m.feed(N.SETTINGS_ACKED, offer)
    m.feed(N.STREAM_CLOSED)  # the settings stream
    return m


class UpgradeTests(SynchronousTestCase):
    """Upgraded streams (WebSockets) have a share of the connection of their own."""

    def test_settings_answer_splits_capacity(self) -> None:
        m = ConnectionMachine(max_capacity=100, max_upgrades=100)
        m.feed(N.HANDSHAKE_DONE)
        m.feed(N.CAPACITY_CHANGED, 12)
        self.assertEqual(m.feed(N.SETTINGS_ACKED, 2), [WantJob(), WantUpgrade()])
        self.assertEqual((m.capacity, m.upgrade_capacity), (10, 2))

    def test_no_upgrade_capacity_no_upgrade_wanted(self) -> None:
        """A connector that offers none (an old one) is never asked for upgrades."""
        m = ConnectionMachine(max_capacity=100, max_upgrades=100)
        m.feed(N.HANDSHAKE_DONE)
        m.feed(N.CAPACITY_CHANGED, 12)
        self.assertEqual(m.feed(N.SETTINGS_ACKED, 0), [WantJob()])
        self.assertEqual((m.capacity, m.upgrade_capacity), (12, 0))
        self.assertEqual(m.feed(N.UPGRADE_OFFERED), [ReturnUpgrade()])

    def test_idle_websockets_do_not_starve_requests(self) -> None:
        """
        With the upgrade room full, requests still get every stream of
        their own share, and the upgrade queue is not asked again until an
        upgraded stream closes.
        """
        m = upgrading(advertised=5, offer=2)
        self.assertEqual(m.feed(N.UPGRADE_OFFERED), [OpenUpgrade(), WantUpgrade()])
        self.assertEqual(m.feed(N.UPGRADE_OFFERED), [OpenUpgrade()])
        self.assertFalse(m.wanting_upgrade)
        opened = 0
        for _ in range(3):
            opened += OpenStream() in m.feed(N.JOB_OFFERED)
        self.assertEqual(opened, 3)
        self.assertEqual((m.open, m.upgrades), (3, 2))
        self.assertEqual(m.feed(N.UPGRADE_CLOSED), [WantUpgrade()])
        self.assertEqual(m.feed(N.STREAM_CLOSED), [WantJob()])

    def test_upgrade_beyond_room_returned(self) -> None:
        m = upgrading(offer=1)
        m.feed(N.UPGRADE_OFFERED)
        self.assertEqual(m.feed(N.UPGRADE_OFFERED), [ReturnUpgrade()])

    def test_capped(self) -> None:
        """Our own cap bounds the upgrades; the connector's request share stays its own."""
        m = upgrading(advertised=12, offer=5, max_upgrades=3)
        self.assertEqual((m.capacity, m.upgrade_capacity), (7, 3))

    def test_capacity_shrinks_to_zero(self) -> None:
        m = upgrading()
        self.assertEqual(m.feed(N.CAPACITY_CHANGED, 0), [StopWanting(), StopWantingUpgrade()])
        self.assertEqual((m.capacity, m.upgrade_capacity), (0, 0))

    def test_drain_waits_for_upgrades(self) -> None:
        m = upgrading()
        m.feed(N.UPGRADE_OFFERED)
        self.assertEqual(m.feed(N.DRAIN_REQUESTED), [StopWanting(), StopWantingUpgrade()])
        self.assertEqual(m.feed(N.UPGRADE_CLOSED), [Close(goaway=True)])

    def test_goaway_and_lost(self) -> None:
        m = upgrading()
        m.feed(N.UPGRADE_OFFERED)
        self.assertEqual(m.feed(N.GOAWAY_RECEIVED), [StopWanting(), StopWantingUpgrade()])
        self.assertEqual(m.feed(N.CONNECTION_LOST), [])
        self.assertEqual((m.open, m.upgrades), (0, 0))

    def test_upgrade_waits_for_the_settings_push(self) -> None:
        """
        The first settings push is a stream of its own, opened before the
        connector's limit is known: an upgrade waits for room within that
        limit, not only within the upgrade capacity.
        """
        m = ConnectionMachine(max_capacity=10, max_upgrades=1)
        m.feed(N.HANDSHAKE_DONE)
        m.feed(N.SETTINGS_ACKED, 1)
        self.assertEqual(m.feed(N.CAPACITY_CHANGED, 1), [])
        self.assertEqual(m.feed(N.UPGRADE_OFFERED), [ReturnUpgrade()])
        self.assertEqual(m.feed(N.STREAM_CLOSED), [WantUpgrade()])
        self.assertEqual(m.feed(N.UPGRADE_OFFERED), [OpenUpgrade()])
        self.assertEqual((m.open, m.upgrades, m.advertised), (0, 1, 1))

    def test_cancelled_upgrade_asks_again(self) -> None:
        m = upgrading()
        self.assertEqual(m.feed(N.UPGRADE_CANCELLED), [WantUpgrade()])


class UpgradePropertyTests(SynchronousTestCase):
    @given(
        st.lists(
            st.tuples(st.sampled_from(list(ConnectionInput)), st.integers(0, 20)),
            max_size=80,
        ),
        st.integers(0, 30),
    )
    def test_budgets(self, steps: list[tuple[ConnectionInput, int]], max_upgrades: int) -> None:
        """
        Whatever the inputs: the two kinds together never exceed what the
        connector advertises; requests never exceed its share for them
        (advertised less the upgrade offer); upgrades never exceed the upgrade
        capacity; every upgrade offered gets exactly one answer; one ask of
        each queue at a time; drain closes only with no stream of either kind.
        """
        m = ConnectionMachine(max_capacity=10, max_upgrades=max_upgrades)
        for event, value in steps:
            wanting = m.wanting_upgrade
            was_closed = m.state is C.CLOSED
            actions: list[Action] = m.feed(event, value)
            self.assertGreaterEqual(m.upgrades, 0)
            self.assertLessEqual(m.upgrade_capacity, max_upgrades)
            self.assertLessEqual(m.capacity + m.upgrade_capacity, max(m.advertised, 0))
            if any(isinstance(a, OpenUpgrade) for a in actions):
                self.assertLessEqual(m.upgrades, m.upgrade_capacity)
                self.assertLessEqual(m.open + m.upgrades, m.advertised)
            if any(isinstance(a, OpenStream) for a in actions):
                self.assertLessEqual(m.open, m.capacity)
            answers = [a for a in actions if isinstance(a, OpenUpgrade | ReturnUpgrade)]
            self.assertEqual(len(answers), 1 if event is N.UPGRADE_OFFERED else 0)
            if any(isinstance(a, WantUpgrade) for a in actions):
                self.assertTrue(m.wanting_upgrade)
                # An upgrade offered or cancelled answers the ask before it.
                self.assertFalse(wanting and event not in (N.UPGRADE_OFFERED, N.UPGRADE_CANCELLED))
                self.assertFalse(was_closed)
            if any(isinstance(a, Close) for a in actions):
                self.assertEqual((m.open, m.upgrades), (0, 0))
