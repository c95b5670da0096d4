"""
The tunnel's HTTP/2 connection (L{TunnelConnection}) against plain h2,
differentially: random scenarios of many streams (tunnel-style header
blocks with cookies and never-indexed fields, bodies of random sizes and
chunkings larger than the windows, trailers, informational responses,
resets from either end mid-body, PINGs, SETTINGS changes of the initial
window and the frame size mid-transfer, bytes carried in arbitrary pieces,
GOAWAY) are played (L{tests.h2_scenario.play}) between a service-like
client end and a connector-like server end: tunnel to tunnel, tunnel to
plain h2 either way, and plain h2 to plain h2.  Each end must observe the
same events in the same order (types, streams, header fields, DATA bytes
and flow-controlled lengths, END_STREAM, error codes, WINDOW_UPDATE
increments, SETTINGS, PINGs, GOAWAY) and raise the same H2Errors, whoever
it talks to; the bytes delivered on each stream are exactly a prefix of
what was sent, all of it when the stream ended normally; and flow control
adds up at both ends.

WINDOW_UPDATE increments and hence DATA frame boundaries are compared
exactly: they pin h2's policy of sending a WINDOW_UPDATE once half a window
has been consumed, which is behaviour the tunnel's throughput depends on.
"""

from __future__ import annotations

from typing import Any

from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.h2_scenario import Played, Scenario, Side, StreamPlan, body, plain, play, tunnel

Field = tuple[bytes, bytes]

_RESERVED = {
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"transfer-encoding",
    b"upgrade",
    b"te",
    b"host",
    b"content-length",
    b"cookie",
}
names = st.from_regex(rb"\A[a-z][a-z0-9-]{0,14}\Z").filter(lambda n: n not in _RESERVED)
values = st.one_of(st.from_regex(rb"\A[!-~]([ !-~]{0,30}[!-~])?\Z"), st.just(b""))
# Over the default SETTINGS_MAX_FRAME_SIZE: the block goes in CONTINUATION frames.
big_fields = st.lists(st.integers(16_000, 24_000).map(lambda n: (b"x-big", b"v" * n)), max_size=1)
crumbs = st.from_regex(rb"\A[a-z]{1,8}=[!#-+\--:<-\[\]-~]{0,20}\Z")
plain_fields = st.lists(st.tuples(names, values), max_size=6)
secret_fields = st.lists(
    st.tuples(
        st.sampled_from([b"authorization", b"x-request-id", b"x-appproxy-jwt-assertion"]),
        st.from_regex(rb"\A[!-~]{1,40}\Z"),
    ),
    max_size=2,
)


@st.composite
def requests(draw: st.DrawFn, body_size: int) -> list[Field]:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]))
    path = draw(st.from_regex(rb"\A/[!-~]{0,40}\Z"))
    fields = [
        (b":method", method),
        (b":scheme", b"https"),
        (b":path", path),
        (b":authority", draw(st.sampled_from([b"app.example", b"a:8443"]))),
    ]
    fields += draw(plain_fields) + draw(secret_fields) + draw(big_fields)
    cookies = draw(st.lists(crumbs, max_size=3))
    fields += [(b"cookie", c) for c in cookies]
    joined = draw(st.booleans())
    if cookies and joined:
        fields.append((b"cookie", b"; ".join(cookies)))
    if draw(st.booleans()):
        fields.append((b"content-length", str(body_size).encode()))
    return fields


@st.composite
def responses(draw: st.DrawFn, body_size: int) -> list[Field]:
    fields = [(b":status", draw(st.sampled_from([b"200", b"204", b"302", b"404", b"500"])))]
    fields += draw(plain_fields) + draw(big_fields)
    fields += [(b"set-cookie", c) for c in draw(st.lists(crumbs, max_size=3))]
    if draw(st.booleans()):
        fields.append((b"content-length", str(body_size).encode()))
    return fields


sizes = st.one_of(st.integers(0, 64), st.integers(0, 5_000), st.integers(0, 100_000))
trailers = st.one_of(st.none(), st.lists(st.tuples(names, values), min_size=1, max_size=2))


@st.composite
def stream_plans(draw: st.DrawFn) -> StreamPlan:
    seed = draw(st.integers(0, 2**32))
    request_size, response_size = draw(sizes), draw(sizes)
    return StreamPlan(
        request=draw(requests(request_size)),
        request_body=body(seed, request_size),
        request_trailers=draw(trailers),
        informational=draw(st.booleans()),
        response=draw(responses(response_size)),
        response_body=body(seed + 1, response_size),
        response_trailers=draw(trailers),
    )


ends = st.sampled_from(["client", "server"])
stream_index = st.integers(0, 15)
share = st.sampled_from([0.001, 0.1, 0.5, 1.0])
steps = st.one_of(
    st.tuples(st.just("open")),
    st.tuples(st.just("open")),
    st.tuples(st.just("send"), ends, stream_index, share),
    st.tuples(st.just("deliver"), ends, st.lists(st.floats(0, 1), max_size=4)),
    st.tuples(st.just("respond"), stream_index),
    st.tuples(st.just("send"), ends, stream_index, share),
    st.tuples(st.just("finish"), ends, stream_index),
    st.tuples(st.just("ack"), ends, share),
    st.tuples(st.just("deliver"), ends, st.lists(st.floats(0, 1), max_size=4)),
    st.tuples(
        st.just("reset"),
        ends,
        stream_index,
        st.sampled_from(
            [
                ErrorCodes.CANCEL,
                ErrorCodes.INTERNAL_ERROR,
                ErrorCodes.NO_ERROR,
                ErrorCodes.REFUSED_STREAM,
            ]
        ),
    ),
    st.tuples(st.just("ping"), ends, st.binary(min_size=8, max_size=8)),
    st.tuples(
        st.just("settings"),
        ends,
        st.just(SettingCodes.INITIAL_WINDOW_SIZE),
        st.sampled_from([0, 1, 1_000, 16_384, 65_535, 1 << 20]),
    ),
    st.tuples(
        st.just("settings"),
        ends,
        st.just(SettingCodes.MAX_FRAME_SIZE),
        st.sampled_from([16_384, 16_385, 1 << 17, 1 << 18]),
    ),
)
scenarios = st.builds(
    Scenario,
    stream_window=st.sampled_from([16_384, 16_384, 65_535, 1 << 20]),
    connection_window=st.sampled_from([65_535, 65_535, 1 << 17, 1 << 24]),
    max_frame_size=st.sampled_from([16_384, 1 << 18]),
    streams=st.lists(stream_plans(), min_size=2, max_size=6),
    steps=st.lists(steps, min_size=10, max_size=60),
    goaway=st.sampled_from([None, None, None, "client", "server"]),
)

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    # No shrinking: a failure is reported as generated (the same every run),
    # in seconds, not after minutes of replaying scenarios four times over.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class DifferentialTests(SynchronousTestCase):
    def assertSameAsH2(self, scenario: Scenario) -> Played:
        """Play C{scenario} in the four pairings: each end's record the same."""
        reference = play(plain, plain, scenario)
        ours = None
        for pairing, (client, server) in {
            "tunnel/tunnel": (tunnel, tunnel),
            "tunnel/h2": (tunnel, plain),
            "h2/tunnel": (plain, tunnel),
        }.items():
            played = play(client, server, scenario)
            self.assertEqual(played.client.log, reference.client.log, f"{pairing}: client")
            self.assertEqual(played.server.log, reference.server.log, f"{pairing}: server")
            ours = ours or played
        assert ours is not None
        return ours

    def assertBytesExact(self, played: Played) -> None:
        """Each stream's bytes: a prefix of what was sent; all of it if it ended."""
        for sid in played.opened:
            plan = played.plans[sid]
            for receiver, sent in (
                (played.server, plan.request_body),
                (played.client, plan.response_body),
            ):
                got = bytes(receiver.received.get(sid, b""))
                self.assertEqual(got, sent[: len(got)], f"stream {sid}: not a prefix")
                if ("ended", sid) in receiver.log:
                    self.assertEqual(len(got), len(sent), f"stream {sid}: ended short")

    def assertFlowAddsUp(self, played: Played, scenario: Scenario) -> None:
        """
        Both ends quiet: each sender's view of every window is what the
        receiver granted less what it sent; no receiver granted more than
        was acknowledged (or, for the connection, its announced window).
        """
        for sender, receiver in ((played.client, played.server), (played.server, played.client)):
            if sender.closed or receiver.closed:
                continue
            connection = 65535 + sender.granted.get(0, 0) - sender.sent.get(0, 0)
            self.assertGreaterEqual(connection, 0)
            self.assertLessEqual(connection, scenario.connection_window)
            for sid in played.opened:
                self.assertLessEqual(sender.granted.get(sid, 0), receiver.acked.get(sid, 0))
                window = self.window(sender, sid)
                if window is None:
                    continue
                initial = sender.conn.remote_settings.initial_window_size
                stream = initial + sender.granted.get(sid, 0) - sender.sent.get(sid, 0)
                self.assertEqual(window, min(connection, stream), f"{sender.name} stream {sid}")

    def window(self, side: Side, sid: int) -> Any:
        try:
            return side.conn.local_flow_control_window(sid)
        except H2Error:
            return None

    @SETTINGS
    @given(scenarios)
    def test_same_as_h2(self, scenario: Scenario) -> None:
        played = self.assertSameAsH2(scenario)
        self.assertBytesExact(played)
        if scenario.goaway is None:
            self.assertFlowAddsUp(played, scenario)
            self.assertAllEnded(played)

    def assertAllEnded(self, played: Played) -> None:
        """
        Every stream neither end reset came to its end both ways: nothing
        stalled for want of a WINDOW_UPDATE.
        """
        logs = played.client.log + played.server.log
        if any(entry[0] == "raised" and entry[1] != "reset" for entry in logs):
            return
        reset = {entry[1] for entry in logs if entry[0] == "reset"}
        reset |= {entry[2] for entry in logs if entry[0] == "raised"}
        reset |= played.client.resets | played.server.resets
        for sid in played.opened:
            if sid not in reset:
                self.assertIn(("ended", sid), played.server.log, f"request {sid} stalled")
                self.assertIn(("ended", sid), played.client.log, f"response {sid} stalled")

    def test_big_bodies_through_small_windows(self) -> None:
        """
        Bodies many times the windows, both ways, on several streams: all
        bytes arrive, exactly, through WINDOW_UPDATEs that follow the
        acknowledgements.
        """
        plans = [
            StreamPlan(
                request=[
                    (b":method", b"POST"),
                    (b":scheme", b"https"),
                    (b":path", b"/"),
                    (b":authority", b"a"),
                ],
                request_body=body(n, 300_000 + n),
                request_trailers=[(b"x-sum", b"1")] if n % 2 else None,
                informational=False,
                response=[(b":status", b"200"), (b"set-cookie", b"a=b")],
                response_body=body(n + 7, 200_000 + n),
                response_trailers=None,
            )
            for n in range(4)
        ]
        scenario = Scenario(16_384, 65_535, 16_384, plans, [("open",)] * 4, None)
        played = self.assertSameAsH2(scenario)
        self.assertBytesExact(played)
        self.assertFlowAddsUp(played, scenario)
        for sid in played.opened:
            self.assertIn(("ended", sid), played.server.log)
            self.assertIn(("ended", sid), played.client.log)
        self.assertGreater(sum(1 for entry in played.client.log if entry[0] == "window"), 20)
