"""
The connector's machine for an upgraded (WebSocket) stream
(L{appproxy.tunnel.connector_upgrade}), driven directly: its paths, and
random input sequences against its invariants (the app's connection is
always closed by the end, at once on a reset; one END_STREAM, only after
the app's side ended; done only once both directions ended; the handshake's
timer never outlives the handshake).
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.connector_upgrade import (
    ENDED,
    TRANSITIONS,
    Abort,
    CloseApp,
    EndStream,
    Invalid,
    TimedOut,
    UpgradeInput,
    UpgradeMachine,
    UpgradeState,
)
from appproxy.tunnel.machine import CancelTimer, ResetStream, SetTimer

S = UpgradeState
I = UpgradeInput  # noqa: E741
LIMIT = 30.0


def started() -> UpgradeMachine:
    machine = UpgradeMachine(LIMIT)
    machine.start(0.0)
    return machine


def feed_all(machine: UpgradeMachine, *events: UpgradeInput) -> list[object]:
    actions: list[object] = []
    for event in events:
        actions += machine.feed(event, 1.0)
    return actions


class PathTests(SynchronousTestCase):
    def test_start_arms_the_backend_timeout(self) -> None:
        machine = UpgradeMachine(LIMIT)
        self.assertEqual(machine.start(5.0), [SetTimer(35.0)])
        self.assertIs(machine.state, S.HANDSHAKE_SENT)

    def test_app_ends_first(self) -> None:
        """EOF from the app: END_STREAM; the service's END_STREAM then closes the app."""
        machine = started()
        self.assertEqual(machine.feed(I.ACCEPTED, 1.0), [CancelTimer()])
        self.assertIs(machine.state, S.OPEN)
        self.assertEqual(machine.feed(I.APP_EOF, 2.0), [EndStream()])
        self.assertIs(machine.state, S.HALF_CLOSED)
        self.assertEqual(machine.feed(I.END_SENT, 2.0), [])
        self.assertIs(machine.state, S.HALF_CLOSED)
        self.assertEqual(machine.feed(I.SERVICE_ENDED, 3.0), [CloseApp(at_once=False)])
        self.assertIs(machine.state, S.DONE)

    def test_service_ends_first(self) -> None:
        """END_STREAM from the service: the app's connection closes once flushed."""
        machine = started()
        machine.feed(I.ACCEPTED, 1.0)
        self.assertEqual(machine.feed(I.SERVICE_ENDED, 2.0), [CloseApp(at_once=False)])
        self.assertIs(machine.state, S.HALF_CLOSED)
        self.assertEqual(machine.feed(I.APP_EOF, 2.0), [EndStream()])
        self.assertIs(machine.state, S.HALF_CLOSED)
        self.assertEqual(machine.feed(I.END_SENT, 2.0), [])
        self.assertIs(machine.state, S.DONE)

    def test_refused_is_a_response(self) -> None:
        """A non-101 answer is relayed; done once its END_STREAM went out."""
        machine = started()
        self.assertEqual(machine.feed(I.REFUSED, 1.0), [CancelTimer()])
        self.assertIs(machine.state, S.RESPONDING)
        self.assertEqual(machine.feed(I.APP_EOF, 1.0), [])
        self.assertEqual(machine.feed(I.END_SENT, 1.0), [CloseApp(at_once=False)])
        self.assertIs(machine.state, S.DONE)

    def test_handshake_times_out(self) -> None:
        machine = started()
        self.assertEqual(
            machine.feed(I.TIMER_FIRED, LIMIT),
            [
                TimedOut("did not answer the WebSocket handshake within 30 seconds."),
                CloseApp(at_once=True),
            ],
        )
        self.assertIs(machine.state, S.DONE)
        self.assertTrue(machine.answered)

    def test_early_timer_rearms(self) -> None:
        machine = started()
        self.assertEqual(machine.feed(I.TIMER_FIRED, 1.0), [SetTimer(LIMIT)])
        self.assertIs(machine.state, S.HANDSHAKE_SENT)

    def test_timer_is_moot_once_open(self) -> None:
        """The service times an open WebSocket's idleness, not the connector."""
        machine = started()
        machine.feed(I.ACCEPTED, 1.0)
        self.assertEqual(machine.feed(I.TIMER_FIRED, 1000.0), [])
        self.assertIs(machine.state, S.OPEN)

    def test_service_ended_before_the_answer(self) -> None:
        machine = started()
        self.assertEqual(machine.feed(I.SERVICE_ENDED, 1.0), [])
        self.assertEqual(machine.feed(I.ACCEPTED, 1.0), [CancelTimer(), CloseApp(at_once=False)])
        self.assertIs(machine.state, S.HALF_CLOSED)

    def test_reset_closes_the_app_at_once(self) -> None:
        for path in ([], [I.ACCEPTED], [I.ACCEPTED, I.APP_EOF], [I.REFUSED]):
            for event in (I.PEER_RESET, I.FAILED):
                with self.subTest(path=path, event=event):
                    machine = started()
                    feed_all(machine, *path)
                    actions = machine.feed(event, 2.0)
                    self.assertEqual(actions[-1], CloseApp(at_once=True))
                    self.assertIs(machine.state, S.RESET)

    def test_going_away_resets(self) -> None:
        """
        The connector's drain: a WebSocket (or a handshake in flight) ends
        at once, its app's connection closed and the stream reset.
        """
        for path in ([], [I.ACCEPTED], [I.ACCEPTED, I.APP_EOF], [I.ACCEPTED, I.SERVICE_ENDED]):
            with self.subTest(path=path):
                machine = started()
                feed_all(machine, *path)
                actions = machine.feed(I.GOING_AWAY, 2.0)
                self.assertEqual(actions[-2:], [CloseApp(at_once=True), ResetStream("CANCEL")])
                self.assertIs(machine.state, S.RESET)
                self.assertIsNone(machine.armed)

    def test_going_away_lets_a_refusal_finish(self) -> None:
        """A refusal being relayed is a response: it ends as requests do."""
        machine = started()
        machine.feed(I.REFUSED, 1.0)
        self.assertEqual(machine.feed(I.GOING_AWAY, 2.0), [])
        self.assertIs(machine.state, S.RESPONDING)
        self.assertEqual(machine.feed(I.END_SENT, 3.0), [CloseApp(at_once=False)])

    def test_invalid_input_aborts(self) -> None:
        """END_SENT before the app ended is a defined error, not an exception."""
        machine = started()
        machine.feed(I.ACCEPTED, 1.0)
        actions = machine.feed(I.END_SENT, 1.0)
        self.assertEqual(actions[0], Invalid(S.OPEN, I.END_SENT))
        self.assertIn(CloseApp(at_once=True), actions)
        self.assertIsInstance(actions[-1], Abort)
        self.assertIs(machine.state, S.RESET)

    def test_every_pair_is_defined(self) -> None:
        """Each pair is in the table or answered as invalid: none raises."""
        for state, event in itertools.product(UpgradeState, UpgradeInput):
            machine = started()
            machine.state = state
            actions = machine.feed(event, 1.0)
            if (state, event) not in TRANSITIONS:
                self.assertIsInstance(actions[0], Invalid)
            if state in ENDED:
                self.assertEqual(actions, [])


class PropertyTests(SynchronousTestCase):
    @given(st.lists(st.sampled_from(list(UpgradeInput)), max_size=30))
    def test_invariants(self, events: list[UpgradeInput]) -> None:
        """
        Whatever arrives: nothing after the end; at most one END_STREAM,
        only after the app's side ended and the upgrade was answered; done
        from the flowing states only once both directions ended; the app's
        connection closed by the end (at once on a reset); no timer
        outside the handshake.
        """
        machine = UpgradeMachine(LIMIT)
        actions: list[object] = list(machine.start(0.0))
        ends = 0
        accepted = False
        for n, event in enumerate(events):
            before = machine.state
            new = machine.feed(event, float(n))
            actions += new
            if before in ENDED:
                self.assertEqual(new, [])
                continue
            if event is I.ACCEPTED and before is S.HANDSHAKE_SENT:
                accepted = True
            for action in new:
                if isinstance(action, EndStream):
                    ends += 1
                    self.assertTrue(accepted)
                    self.assertTrue(machine.app_ended)
            if machine.state is S.DONE and before in (S.OPEN, S.HALF_CLOSED):
                self.assertTrue(machine.up_ended and machine.down_ended)
            if machine.state is S.RESET:
                self.assertIn(CloseApp(at_once=True), new)
            if event is I.GOING_AWAY and before is not S.RESPONDING:
                self.assertIs(machine.state, S.RESET)
                self.assertIn(ResetStream("CANCEL"), new)
            if machine.state is not S.HANDSHAKE_SENT:
                self.assertIsNone(machine.armed)
            if machine.state in ENDED:
                self.assertTrue(any(isinstance(a, CloseApp) for a in actions))
        self.assertLessEqual(ends, 1)
