"""
The service's end of the tunnel driven by random sequences (Hypothesis), in
memory against a raw h2 connector (L{tests.tunnel_memory}): jobs, answers,
error answers, resets, users leaving, the connector changing its capacity,
time passing.  Whatever happens, the machine's count of open streams is
h2's, no stream is opened beyond what the connector offers, and every job
is answered exactly once.
"""

from __future__ import annotations

from typing import Any

from h2.exceptions import H2Error
from h2.settings import SettingCodes
from h2.stream import StreamState
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.tunnel.queue import ProxyJob
from appproxy.tunnel.service import RESPONSE_GRACE
from tests.tunnel_memory import FakeExchange, ServiceEnd, job

LIMIT = job().app.backend_timeout + RESPONSE_GRACE
#: How a job ends: answered by the tunnel, timed out in the queue, or left
#: by its user (who needs no answer then, and must get none after).
ANSWERS = {"ended", "error", "lost", "queue-timeout", "left"}

steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 0)),
        st.tuples(st.just("answer"), st.integers(0, 20)),
        st.tuples(st.just("error"), st.integers(0, 20)),
        st.tuples(st.just("head"), st.integers(0, 20)),
        st.tuples(st.just("reset"), st.integers(0, 20)),
        st.tuples(st.just("leave"), st.integers(0, 20)),
        st.tuples(st.just("capacity"), st.integers(0, 4)),
        st.tuples(st.just("wait"), st.integers(0, int(LIMIT * 1.2))),
    ),
    max_size=30,
)


def _queue_timed_out(j: ProxyJob) -> None:
    exchange: Any = j.exchange
    exchange.events.append(("queue-timeout",))


def _peer_may_send(peer: Any, sid: int, headed: set[int]) -> bool:
    """
    Whether the raw h2 connector can send a response's head on that stream:
    h2 refuses a block on a stream it has ended, or a second block with a
    C{:status} (trailers of its own), only after encoding it, and its HPACK
    context then differs from the service's for the rest of the connection
    (a real connector's blocks never do that).
    """
    stream = peer.streams.get(sid)
    if stream is None or stream.state_machine.state in (
        StreamState.HALF_CLOSED_LOCAL,
        StreamState.CLOSED,
    ):
        return False
    return sid not in headed


class ServicePropertyTests(SynchronousTestCase):
    @settings(max_examples=60)
    @given(st.integers(1, 3), steps)
    def test_every_job_answered_once(self, capacity: int, plan: list[tuple[str, int]]) -> None:
        self.run_plan(capacity, plan)

    def run_plan(self, capacity: int, plan: list[tuple[str, int]]) -> None:
        end = ServiceEnd(capacity)
        end.answer_settings()
        exchanges: list[FakeExchange] = []
        offered = {capacity}
        #: Streams the connector has sent a response's head on.
        headed: set[int] = set()

        def live() -> list[FakeExchange]:
            return [
                e
                for e in exchanges
                if e.stream is not None and not ANSWERS & set(e.names()) and e.stream.machine
            ]

        def pick(n: int) -> Any:
            candidates = live()
            return candidates[n % len(candidates)] if candidates else None

        for action, n in plan:
            try:
                if action == "put":
                    ex = FakeExchange()
                    exchanges.append(ex)
                    end.group.put(job(b"/p", exchange=ex), _queue_timed_out)
                elif action == "capacity":
                    offered.add(n)
                    end.peer.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: n})
                elif action == "wait":
                    end.clock.advance(n)
                elif (ex := pick(n)) is not None:
                    sid = ex.stream.stream_id
                    if action == "answer" and sid in headed:
                        end.peer.end_stream(sid)  # the head's response, ended
                    elif action in ("answer", "head", "error") and not _peer_may_send(
                        end.peer, sid, headed
                    ):
                        pass
                    elif action == "answer":
                        end.peer.send_headers(sid, [(b":status", b"200")], end_stream=True)
                    elif action == "head":
                        end.peer.send_headers(sid, [(b":status", b"200")])
                        headed.add(sid)
                    elif action == "error":
                        end.peer.send_headers(
                            sid,
                            [(b":status", b"502"), (b"appproxy-error", b"backend-refused")],
                            end_stream=True,
                        )
                    elif action == "reset":
                        end.peer.reset_stream(sid)
                    elif action == "leave":
                        ex.events.append(("left",))
                        ex.stream.cancel()
            except H2Error:
                pass  # the peer's view of that stream is already closed
            end.pump()
            end.clock.advance(0)
            end.pump()
            proto = end.proto
            self.assertEqual(proto.machine.open, proto.conn.open_outbound_streams)
            self.assertLessEqual(proto.conn.open_outbound_streams, max(offered))
            for e in exchanges:
                self.assertLessEqual(len([x for x in e.names() if x in ANSWERS]), 1, e.events)
        # Time runs out for everything still waiting (streams opened as
        # others time out, jobs left in the queue): each job has its one answer.
        for _ in range(int(4000 / LIMIT) + 2):
            end.clock.advance(LIMIT)
            end.pump()
        for e in exchanges:
            self.assertEqual(len([x for x in e.names() if x in ANSWERS]), 1, e.events)
        self.assertEqual(end.factory.stream_errors, 0)
        self.assertFalse(end.transport.aborted)
        end.close()
