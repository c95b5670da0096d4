"""
The tunnel stream's state machine (L{appproxy.tunnel.machine}), driven
directly: every (state, input) pair of the table, the idle timing in each
direction, and random input sequences against its invariants.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.machine import (
    TRANSITIONS,
    Action,
    AnswerError,
    CancelTimer,
    CutResponse,
    Invalid,
    ResetStream,
    SetTimer,
    StreamInput,
    StreamMachine,
    StreamState,
)

S = StreamState
I = StreamInput  # noqa: E741
LIMIT = 10.0

#: How to reach each state from a new machine: (has_body, inputs).
_PATHS: dict[StreamState, tuple[bool, list[StreamInput]]] = {
    S.AWAITING_DISPATCH: (True, []),
    S.UPLOADING: (True, [I.DISPATCHED]),
    S.AWAITING_RESPONSE: (False, []),
    S.RESPONDING: (False, [I.RESPONSE_STARTED]),
    S.DONE: (False, [I.RESPONSE_STARTED, I.RESPONSE_ENDED]),
    S.RESET: (False, [I.CANCELLED]),
}


def machine_in(state: StreamState) -> StreamMachine:
    has_body, inputs = _PATHS[state]
    machine = StreamMachine(LIMIT, has_body, 0.0)
    machine.start()
    for event in inputs:
        machine.feed(event, 0.0)
    assert machine.state is state, (state, machine.state)
    return machine


def answers(actions: list[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, AnswerError | CutResponse)]


class TableTests(SynchronousTestCase):
    def test_every_pair(self) -> None:
        """
        Each (state, input) pair does what the table says, and a pair the
        table lacks is a defined error: that stream is reset and answered,
        nothing raised.
        """
        for state, event in itertools.product(StreamState, StreamInput):
            with self.subTest(state=state, event=event):
                machine = machine_in(state)
                actions = machine.feed(event, 1.0)
                entry = TRANSITIONS.get((state, event))
                if entry is None:
                    self.assertEqual(actions[0], Invalid(state, event))
                    self.assertIn(ResetStream("INTERNAL_ERROR"), actions)
                    self.assertEqual(len(answers(actions)), 1)
                    self.assertIs(machine.state, S.RESET)
                    self.assertIsNone(machine.armed)
                elif event is I.TIMER_FIRED and state not in (S.DONE, S.RESET):
                    # Early: asks for the timer again at the deadline.
                    self.assertEqual(actions, [SetTimer(LIMIT)])
                    self.assertIs(machine.state, state)
                else:
                    self.assertIs(machine.state, entry[0])
                    self.assertFalse(any(isinstance(a, Invalid) for a in actions))
                if state in (S.DONE, S.RESET):
                    self.assertEqual(actions, [])

    def test_ended_states_take_everything(self) -> None:
        for state in (S.DONE, S.RESET):
            for event in StreamInput:
                self.assertIn((state, event), TRANSITIONS)

    def test_invalid_examples(self) -> None:
        """Response body before its headers; a second response; body before dispatch."""
        for state, event in [
            (S.AWAITING_RESPONSE, I.RESPONSE_DATA),
            (S.RESPONDING, I.RESPONSE_STARTED),
            (S.AWAITING_DISPATCH, I.BODY_SENT),
            (S.RESPONDING, I.DISPATCHED),
        ]:
            self.assertNotIn((state, event), TRANSITIONS)
        actions = machine_in(S.RESPONDING).feed(I.RESPONSE_STARTED, 1.0)
        self.assertIsInstance(answers(actions)[0], CutResponse)
        actions = machine_in(S.AWAITING_RESPONSE).feed(I.RESPONSE_DATA, 1.0)
        self.assertEqual(answers(actions)[0].status, 502)  # type: ignore[union-attr]


class Clocked:
    """A machine with a timer that fires the way a reactor's would."""

    def __init__(self, has_body: bool) -> None:
        self.now = 0.0
        self.timer: float | None = None
        self.answers: list[Action] = []
        self.resets: list[str] = []
        self.machine = StreamMachine(LIMIT, has_body, 0.0)
        self.act(self.machine.start())

    def act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SetTimer):
                assert action.at >= self.now
                self.timer = action.at
            elif isinstance(action, CancelTimer):
                self.timer = None
            elif isinstance(action, ResetStream):
                self.resets.append(action.code)
            elif isinstance(action, AnswerError | CutResponse):
                self.answers.append(action)

    def feed(self, event: StreamInput) -> None:
        self.act(self.machine.feed(event, self.now))

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self.timer is not None and self.timer <= end:
            self.now, self.timer = self.timer, None
            self.feed(I.TIMER_FIRED)
        self.now = end


class TimingTests(SynchronousTestCase):
    def test_slow_steady_upload(self) -> None:
        """An upload that takes ten limits but never stops for one succeeds."""
        c = Clocked(has_body=True)
        c.advance(1)
        c.feed(I.DISPATCHED)
        for _ in range(100):
            c.advance(LIMIT * 0.9)
            c.feed(I.BODY_SENT)
        c.feed(I.BODY_ENDED)
        c.advance(LIMIT - 1)
        c.feed(I.RESPONSE_STARTED)
        c.feed(I.RESPONSE_ENDED)
        self.assertEqual(c.answers, [])
        self.assertIs(c.machine.state, S.DONE)
        self.assertIsNone(c.timer)

    def test_upload_stall(self) -> None:
        c = Clocked(has_body=True)
        c.feed(I.DISPATCHED)
        c.feed(I.BODY_SENT)
        c.advance(LIMIT - 0.5)
        self.assertEqual(c.answers, [])
        c.advance(1)
        self.assertEqual([a.status for a in c.answers], [504])  # type: ignore[union-attr]
        self.assertIn("body stalled", c.answers[0].detail)  # type: ignore[union-attr]
        self.assertEqual(c.resets, ["CANCEL"])

    def test_upload_held_back_by_connector_not_counted(self) -> None:
        c = Clocked(has_body=True)
        c.feed(I.DISPATCHED)
        c.feed(I.BODY_SENT)
        c.feed(I.SEND_BLOCKED)
        c.advance(LIMIT * 5)
        self.assertEqual(c.answers, [])
        c.feed(I.SEND_UNBLOCKED)
        c.advance(LIMIT - 0.5)
        self.assertEqual(c.answers, [])
        c.advance(1)
        self.assertEqual(len(c.answers), 1)

    def test_response_headers_timed_from_end_of_body(self) -> None:
        c = Clocked(has_body=True)
        c.feed(I.DISPATCHED)
        c.advance(LIMIT - 1)
        c.feed(I.BODY_ENDED)
        c.advance(LIMIT - 1)
        self.assertEqual(c.answers, [])
        c.advance(2)
        self.assertIn("did not answer", c.answers[0].detail)  # type: ignore[union-attr]

    def test_dispatch_wait_is_bounded(self) -> None:
        c = Clocked(has_body=True)
        c.advance(LIMIT + 1)
        self.assertEqual([a.status for a in c.answers], [504])  # type: ignore[union-attr]

    def test_response_stall_cuts(self) -> None:
        c = Clocked(has_body=False)
        c.feed(I.RESPONSE_STARTED)
        for _ in range(10):
            c.advance(LIMIT / 2)
            c.feed(I.RESPONSE_DATA)
        self.assertEqual(c.answers, [])
        c.advance(LIMIT + 1)
        self.assertEqual(len(c.answers), 1)
        self.assertIsInstance(c.answers[0], CutResponse)
        self.assertIs(c.machine.state, S.RESET)

    def test_response_paused_by_user_not_counted(self) -> None:
        c = Clocked(has_body=False)
        c.feed(I.RESPONSE_STARTED)
        c.feed(I.RESPONSE_PAUSED)
        c.advance(LIMIT * 5)
        self.assertEqual(c.answers, [])
        c.feed(I.RESPONSE_RESUMED)
        c.advance(LIMIT + 1)
        self.assertEqual(len(c.answers), 1)


_LIVE_INPUTS = [i for i in StreamInput if i is not I.TIMER_FIRED]


class PropertyTests(SynchronousTestCase):
    @given(
        st.booleans(),
        st.lists(
            st.tuples(st.sampled_from(_LIVE_INPUTS), st.floats(0, LIMIT * 1.5)),
            max_size=40,
        ),
    )
    def test_invariants(self, has_body: bool, steps: list[tuple[StreamInput, float]]) -> None:
        """
        Whatever the inputs and their timing: nothing raises, the user is
        answered at most once, nothing is asked once the stream has ended,
        and a live stream has a timer armed unless the other side holds it
        back.
        """
        c = Clocked(has_body)
        for event, wait in steps:
            ended_before = c.machine.ended
            c.advance(wait)
            before = len(c.answers), c.timer
            c.feed(event)
            if ended_before:
                self.assertEqual((len(c.answers), c.timer), before)
            self.assertLessEqual(len(c.answers), 1)
            if c.machine.ended:
                self.assertIsNone(c.timer)
            elif c.machine.due() is not None:
                self.assertIsNotNone(c.timer)
            self.assertEqual(c.timer, c.machine.armed)
