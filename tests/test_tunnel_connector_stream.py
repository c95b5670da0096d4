"""
The connector's request stream machine (L{appproxy.tunnel.connector_stream}),
driven directly: every (state, input) pair of the table, the backend's idle
timing per direction (a backend that never reads the upload times out, a
slow user does not count), and random input sequences against its
invariants (answered at most once, exactly once when done; nothing after
the end; no timer left armed).
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.connector_stream import (
    TRANSITIONS,
    Abort,
    Action,
    CancelTimer,
    ConnectorStreamInput,
    ConnectorStreamMachine,
    ConnectorStreamState,
    Invalid,
    SetTimer,
    TimedOut,
)

S = ConnectorStreamState
I = ConnectorStreamInput  # noqa: E741
LIMIT = 10.0

_PATHS: dict[ConnectorStreamState, tuple[bool, list[ConnectorStreamInput]]] = {
    S.HEADERS_RECEIVED: (True, []),
    S.BACKEND_REQUESTING: (True, [I.REQUEST_SENT]),
    S.UPLOADING: (True, [I.REQUEST_SENT, I.UPLOAD_STARTED]),
    S.AWAITING_BACKEND_RESPONSE: (False, [I.REQUEST_SENT]),
    S.RESPONDING: (False, [I.REQUEST_SENT, I.RESPONSE_STARTED]),
    S.DONE: (False, [I.REQUEST_SENT, I.RESPONSE_STARTED, I.RESPONSE_ENDED]),
    S.RESET: (False, [I.PEER_RESET]),
}


def machine_in(state: ConnectorStreamState) -> ConnectorStreamMachine:
    has_body, inputs = _PATHS[state]
    machine = ConnectorStreamMachine(LIMIT, has_body)
    for event in inputs:
        machine.feed(event, 0.0)
    assert machine.state is state, (state, machine.state)
    return machine


class TableTests(SynchronousTestCase):
    def test_every_pair(self) -> None:
        """
        Each (state, input) pair goes where the table says; a pair the table
        lacks is a defined error: logged, the stream aborted, nothing raised.
        """
        for state, event in itertools.product(ConnectorStreamState, ConnectorStreamInput):
            with self.subTest(state=state, event=event):
                machine = machine_in(state)
                armed = machine.armed
                actions = machine.feed(event, 1.0)
                entry = TRANSITIONS.get((state, event))
                if entry is None:
                    self.assertEqual(actions[0], Invalid(state, event))
                    self.assertIsInstance(actions[-1], Abort)
                    self.assertIs(machine.state, S.RESET)
                    self.assertIsNone(machine.armed)
                    continue
                self.assertFalse(any(isinstance(a, Invalid | Abort) for a in actions))
                if event is I.TIMER_FIRED and state in (
                    S.BACKEND_REQUESTING,
                    S.AWAITING_BACKEND_RESPONSE,
                ):
                    self.assertEqual(actions, [SetTimer(LIMIT)])  # early: again at the deadline
                elif event is I.TIMER_FIRED and state is S.UPLOADING:
                    self.assertEqual(actions, [])  # nothing to give: the clock is stopped
                elif state in (S.DONE, S.RESET) or entry[1] is None:
                    self.assertEqual(actions, [])
                if event is I.REQUEST_SENT and state is S.HEADERS_RECEIVED:
                    self.assertIs(machine.state, S.BACKEND_REQUESTING)  # has_body
                    self.assertEqual(actions, [SetTimer(1.0 + LIMIT)])
                else:
                    self.assertIs(machine.state, entry[0])
                if machine.ended:
                    self.assertIsNone(machine.armed)
                    if armed is not None and state not in (S.DONE, S.RESET):
                        self.assertIn(CancelTimer(), actions)

    def test_no_body_awaits_response(self) -> None:
        machine = ConnectorStreamMachine(LIMIT, False)
        self.assertEqual(machine.feed(I.REQUEST_SENT, 2.0), [SetTimer(2.0 + LIMIT)])
        self.assertIs(machine.state, S.AWAITING_BACKEND_RESPONSE)


class TimingTests(SynchronousTestCase):
    def uploading(self) -> ConnectorStreamMachine:
        machine = ConnectorStreamMachine(LIMIT, True)
        machine.feed(I.REQUEST_SENT, 0.0)
        machine.feed(I.UPLOAD_STARTED, 1.0)
        return machine

    def test_backend_not_reading_times_out(self) -> None:
        """
        Bytes wait and the backend takes none for the limit: a 504-kind
        timeout (the gap: it was timed only while awaiting the response).
        """
        machine = self.uploading()
        self.assertEqual(machine.feed(I.BODY_QUEUED, 5.0), [])  # the first timer comes first
        self.assertEqual(machine.feed(I.TIMER_FIRED, LIMIT), [SetTimer(5.0 + LIMIT)])
        [timed_out] = machine.feed(I.TIMER_FIRED, 5.0 + LIMIT)
        assert isinstance(timed_out, TimedOut)
        self.assertIn("did not read the request body", timed_out.detail)
        self.assertIs(machine.state, S.DONE)
        self.assertTrue(machine.responded)

    def test_slow_user_not_counted(self) -> None:
        """Nothing to give (the backend took all): the clock is stopped."""
        machine = self.uploading()
        machine.feed(I.BODY_TAKEN, 2.0)
        self.assertEqual(machine.feed(I.TIMER_FIRED, LIMIT), [])
        self.assertEqual(machine.feed(I.BODY_QUEUED, 100.0), [SetTimer(100.0 + LIMIT)])
        machine.feed(I.BODY_TAKEN, 105.0)
        self.assertEqual(machine.feed(I.TIMER_FIRED, 100.0 + LIMIT), [])
        self.assertIs(machine.state, S.UPLOADING)

    def test_backend_taking_slowly_not_timed_out(self) -> None:
        machine = self.uploading()
        machine.feed(I.BODY_QUEUED, 1.0)
        for t in range(2, 60, 8):
            machine.feed(I.BODY_TAKEN, float(t))
            machine.feed(I.BODY_QUEUED, float(t))
            actions = machine.feed(I.TIMER_FIRED, float(t))
            self.assertFalse(any(isinstance(a, TimedOut) for a in actions))
        self.assertIs(machine.state, S.UPLOADING)

    def test_response_timed_from_end_of_body(self) -> None:
        machine = self.uploading()
        machine.feed(I.BODY_QUEUED, 1.0)
        machine.feed(I.BODY_TAKEN, 9.0)
        self.assertEqual(machine.feed(I.BODY_DELIVERED, 9.0), [])  # the armed timer is earlier
        self.assertEqual(machine.feed(I.TIMER_FIRED, 11.0), [SetTimer(9.0 + LIMIT)])
        [timed_out] = machine.feed(I.TIMER_FIRED, 9.0 + LIMIT)
        assert isinstance(timed_out, TimedOut)
        self.assertIn("did not answer within 10 seconds", timed_out.detail)

    def test_response_started_stops_the_clock(self) -> None:
        machine = ConnectorStreamMachine(LIMIT, False)
        machine.feed(I.REQUEST_SENT, 0.0)
        self.assertEqual(machine.feed(I.RESPONSE_STARTED, 3.0), [CancelTimer()])
        self.assertEqual(machine.feed(I.TIMER_FIRED, 100.0), [])
        self.assertIs(machine.state, S.RESPONDING)


_ANSWERING = {I.RESPONSE_STARTED, I.ERROR_ANSWERED}


class PropertyTests(SynchronousTestCase):
    @given(
        st.booleans(),
        st.lists(
            st.tuples(
                st.sampled_from(list(ConnectorStreamInput)),
                st.floats(min_value=0, max_value=2 * LIMIT),
            ),
            max_size=40,
        ),
    )
    def test_invariants(
        self, has_body: bool, steps: list[tuple[ConnectorStreamInput, float]]
    ) -> None:
        """
        The service gets at most one answer (headers, an error, a timeout,
        an abort's 502), exactly one if the stream is done; after the end,
        nothing; an ended stream holds no timer; a timeout only once the
        limit has passed since the backend last made progress.
        """
        machine = ConnectorStreamMachine(LIMIT, has_body)
        now = 0.0
        answers = 0
        for event, dt in steps:
            now += dt
            before = machine.state
            was_responded = machine.responded
            last = machine.last
            actions: list[Action] = machine.feed(event, now)
            if before in (S.DONE, S.RESET):
                self.assertEqual(actions, [])
                self.assertIs(machine.state, before)
                continue
            for action in actions:
                if isinstance(action, TimedOut):
                    answers += 1
                    self.assertGreaterEqual(now + 1e-6, last + LIMIT)
                elif isinstance(action, Abort) and not was_responded:
                    answers += 1
            if event in _ANSWERING and machine.responded and not was_responded:
                answers += 1
            self.assertLessEqual(answers, 1)
            if machine.ended:
                self.assertIsNone(machine.armed)
                self.assertFalse(any(isinstance(a, SetTimer) for a in actions))
        if machine.state is S.DONE:
            self.assertEqual(answers, 1)
