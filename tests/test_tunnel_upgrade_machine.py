"""
The service's machine of an upgraded stream (L{appproxy.tunnel.upgrade_machine}),
driven directly: the life of a WebSocket, its idle timing (bytes either way
count, a held-back direction stops the clock), a refused upgrade, and random
input sequences with a simulated clock against its invariants.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.machine import AnswerError, CancelTimer, ResetStream, SetTimer
from appproxy.tunnel.upgrade_machine import (
    TRANSITIONS,
    Action,
    Finished,
    Invalid,
    Lost,
    UpgradeInput,
    UpgradeMachine,
    UpgradeState,
)

U = UpgradeState
W = UpgradeInput
ANSWER = 10.0
IDLE = 100.0


class Clocked:
    """A machine and the one timer its actions arm, on a clock of our own."""

    def __init__(self) -> None:
        self.now = 0.0
        self.m = UpgradeMachine(ANSWER, IDLE, self.now)
        self.armed: float | None = None
        self.actions: list[Action] = []
        self._take(self.m.start())

    def _take(self, actions: list[Action]) -> list[Action]:
        for a in actions:
            if isinstance(a, SetTimer):
                assert a.at >= self.now - 1e-9, (a, self.now)
                self.armed = a.at
            elif isinstance(a, CancelTimer):
                self.armed = None
        self.actions += actions
        return actions

    def feed(self, event: UpgradeInput) -> list[Action]:
        return self._take(self.m.feed(event, self.now))

    def advance(self, seconds: float) -> list[Action]:
        """Let time pass, firing the timer whenever it is due."""
        target = self.now + seconds
        out: list[Action] = []
        for _ in range(100):
            if self.armed is None or self.armed > target:
                break
            self.now = max(self.now, self.armed)
            self.armed = None
            out += self.feed(W.TIMER_FIRED)
        self.now = target
        return out


class LifeTests(SynchronousTestCase):
    def test_open_then_both_ends(self) -> None:
        c = Clocked()
        self.assertEqual(c.feed(W.ACCEPTED), [])  # the answer's timer looks again
        c.feed(W.DATA_SENT)
        c.feed(W.DATA_RECEIVED)
        self.assertEqual(c.feed(W.REMOTE_ENDED), [])
        self.assertIs(c.m.state, U.OPEN)
        self.assertEqual(c.feed(W.LOCAL_ENDED), [CancelTimer(), Finished()])
        self.assertIs(c.m.state, U.DONE)
        self.assertEqual(c.feed(W.DATA_RECEIVED), [])

    def test_no_answer(self) -> None:
        c = Clocked()
        actions = c.advance(ANSWER)
        self.assertEqual(actions[0], ResetStream("CANCEL"))
        self.assertIsInstance(actions[1], AnswerError)
        self.assertEqual(actions[1].status, 504)  # type: ignore[union-attr]

    def test_error_answer(self) -> None:
        c = Clocked()
        self.assertEqual(c.feed(W.ERROR_ANSWERED), [CancelTimer(), Finished()])

    def test_refused_is_a_response(self) -> None:
        c = Clocked()
        c.feed(W.REFUSED)
        self.assertIs(c.m.state, U.RESPONDING)
        c.feed(W.DATA_RECEIVED)
        self.assertEqual(c.feed(W.REMOTE_ENDED)[-1], Finished())

    def test_refusal_body_stalls(self) -> None:
        c = Clocked()
        c.feed(W.REFUSED)
        actions = c.advance(ANSWER + 1)
        self.assertEqual(
            actions, [ResetStream("CANCEL"), Lost("the response stalled for 10 seconds")]
        )

    def test_data_before_answer_is_invalid(self) -> None:
        c = Clocked()
        actions = c.feed(W.DATA_RECEIVED)
        self.assertIsInstance(actions[0], Invalid)
        self.assertIn(ResetStream("INTERNAL_ERROR"), actions)
        self.assertIsInstance(actions[-1], AnswerError)
        self.assertIs(c.m.state, U.RESET)

    def test_every_pair_defined_or_invalid(self) -> None:
        for state in UpgradeState:
            for event in UpgradeInput:
                m = UpgradeMachine(ANSWER, IDLE, 0.0)
                m.state = state
                actions = m.feed(event, 1.0)
                if (state, event) not in TRANSITIONS:
                    self.assertIsInstance(actions[0], Invalid)
                    self.assertIs(m.state, U.RESET)


class IdleTests(SynchronousTestCase):
    def accepted(self) -> Clocked:
        c = Clocked()
        c.advance(1)
        c.feed(W.ACCEPTED)
        return c

    def test_idle_times_out(self) -> None:
        c = self.accepted()
        self.assertEqual(c.advance(IDLE - 1), [SetTimer(IDLE + 1)])
        self.assertEqual(c.advance(2), [ResetStream("CANCEL"), Lost("idle for 100 seconds")])

    def test_bytes_either_way_keep_it_alive(self) -> None:
        """Well past the idle limit in all, never that long without a byte."""
        c = self.accepted()
        for i in range(10):
            c.advance(IDLE * 0.6)
            c.feed(W.DATA_SENT if i % 2 else W.DATA_RECEIVED)
        self.assertIs(c.m.state, U.OPEN)
        self.assertFalse(any(isinstance(a, Lost) for a in c.actions))

    def test_client_not_reading_is_not_idle(self) -> None:
        """The app's bytes held back (paused): the clock stops, and restarts on resume."""
        c = self.accepted()
        c.feed(W.DATA_RECEIVED)
        c.feed(W.PAUSED)
        c.advance(IDLE * 5)
        self.assertIs(c.m.state, U.OPEN)
        c.feed(W.RESUMED)
        c.advance(IDLE - 1)
        self.assertIs(c.m.state, U.OPEN)
        c.advance(2)
        self.assertIs(c.m.state, U.RESET)

    def test_app_not_reading_is_not_idle(self) -> None:
        c = self.accepted()
        c.feed(W.DATA_SENT)
        c.feed(W.SEND_BLOCKED)
        c.advance(IDLE * 5)
        self.assertIs(c.m.state, U.OPEN)
        c.feed(W.SEND_UNBLOCKED)
        c.advance(IDLE + 1)
        self.assertIs(c.m.state, U.RESET)

    def test_half_closed_still_timed(self) -> None:
        c = self.accepted()
        c.feed(W.REMOTE_ENDED)
        c.advance(IDLE + 1)
        self.assertIs(c.m.state, U.RESET)


_EVENTS = [i for i in UpgradeInput if i is not W.TIMER_FIRED]
# Mostly accepted at once (the WebSocket's life is where the timing is),
# the user side's and the bytes' inputs often, ends and resets seldom.
_COMMON = st.sampled_from(
    [W.DATA_SENT, W.DATA_RECEIVED, W.PAUSED, W.RESUMED, W.SEND_BLOCKED, W.SEND_UNBLOCKED]
)
STEPS = st.tuples(
    st.booleans(),
    st.lists(
        st.one_of(_COMMON, st.floats(0.0, 250.0), st.sampled_from(_EVENTS)),
        max_size=60,
    ),
).map(lambda t: ([W.ACCEPTED] if t[0] else []) + t[1])


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(STEPS)
    def test_invariants(self, steps: list[UpgradeInput | float]) -> None:
        """
        Whatever the inputs and however time passes: nothing raises; while
        the wait runs, a timer is armed no later than it runs out (no
        WebSocket lives on untimed); a timeout comes only after that long
        without a byte (or without the answer); the user side is told of
        the end at most once (an error answer before the answer, a loss
        after it), and a normal end only with both directions ended (or a
        refusal relayed); nothing once ended.
        """
        c = Clocked()
        last_byte = 0.0
        answered = False
        ends = 0
        for step in steps:
            was_ended = c.m.ended
            state = c.m.state
            if isinstance(step, float):
                actions = c.advance(step)
            else:
                actions = c.feed(step)
                if step in (W.DATA_SENT, W.DATA_RECEIVED, W.RESUMED, W.SEND_UNBLOCKED):
                    last_byte = c.now
                if step in (W.ACCEPTED, W.REFUSED) and state is U.OPENING:
                    answered = True
                    last_byte = c.now
            if was_ended:
                self.assertEqual(actions, [])
                continue
            for a in actions:
                if isinstance(a, Lost | AnswerError):
                    ends += 1
                    if isinstance(a, AnswerError):
                        self.assertIs(state, U.OPENING)
                    else:
                        self.assertTrue(answered)
                    if a in (Lost("idle for 100 seconds"),):
                        self.assertGreaterEqual(c.now - last_byte, IDLE - 1e-6)
                    if isinstance(a, AnswerError) and a.status == 504:
                        self.assertGreaterEqual(c.now, ANSWER - 1e-6)
                if isinstance(a, Finished):
                    self.assertTrue(
                        state in (U.RESPONDING, U.OPENING) or (c.m.remote_ended and c.m.local_ended)
                    )
            self.assertLessEqual(ends, 1)
            if not c.m.ended:
                due = c.m.due()
                if due is not None:
                    self.assertIsNotNone(c.armed)
                    assert c.armed is not None
                    self.assertLessEqual(c.armed, due + 1e-6)
            else:
                self.assertIsNone(c.armed)
