"""
Scenarios played between two HTTP/2 endpoints, for the differential tests
of the tunnel's connection (L{tests.test_tunnel_h2_differential}).

A scenario is a list of steps (open a stream, queue body bytes, answer,
finish, reset, acknowledge, PING, change SETTINGS, carry the bytes one way
cut at arbitrary points, ...).  L{play} runs it between a client end and a
server end, made by any pair of factories (the tunnel's L{TunnelConnection}
or plain h2), the way the tunnel drives its connection (DATA sent as the
window and the frame size allow, H2Error from a stream closed under us
dropped), and records what each end observes: every event, normalised to
plain values, every H2Error an action raised, and the state the tunnel's
protocols read (L{TunnelProtocol.stream_open}, L{TunnelProtocol.sent_end}).
Played between any two conforming implementations, the records are equal.

Along the way it checks flow control at both ends: no DATA frame beyond the
sender's view of the window or the peer's SETTINGS_MAX_FRAME_SIZE, the
sender's view equal to what the receiver granted, no grant for bytes not
acknowledged.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    PingAckReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from h2.stream import StreamState

from appproxy.tunnel.connection import TunnelConnection
from tests.h2_wire import TUNNEL_SETTINGS, ack_ends

Field = tuple[bytes, bytes]
Step = tuple[Any, ...]
Endpoint = Any  # TunnelConnection or H2Connection: the same public interface


def tunnel(client_side: bool) -> Endpoint:
    return TunnelConnection(client_side)


def plain(client_side: bool) -> Endpoint:
    """Plain h2, validating and normalising as it does by default."""
    return H2Connection(H2Configuration(client_side=client_side, header_encoding=None))


Factory = Callable[[bool], Endpoint]


@dataclass
class StreamPlan:
    """What one stream carries: both header blocks, both bodies, trailers."""

    request: list[Field]
    request_body: bytes
    request_trailers: list[Field] | None
    informational: bool
    response: list[Field]
    response_body: bytes
    response_trailers: list[Field] | None


@dataclass
class Scenario:
    stream_window: int
    connection_window: int
    max_frame_size: int
    streams: list[StreamPlan]
    steps: list[Step]
    goaway: str | None  # which end says GOAWAY at the end, if one does


class FlowError(AssertionError):
    """Flow control was broken (L{Side.check_windows})."""


@dataclass
class Side:
    name: str
    conn: Endpoint
    log: list[tuple[Any, ...]] = field(default_factory=list)
    wire: bytearray = field(default_factory=bytearray)
    #: Body bytes queued and not yet sent, per stream; whether END_STREAM
    #: (or the trailers) follows them.
    outbound: dict[int, bytearray] = field(default_factory=dict)
    finishing: dict[int, list[Field] | None] = field(default_factory=dict)
    queued: dict[int, int] = field(default_factory=dict)
    received: dict[int, bytearray] = field(default_factory=dict)
    unacked: dict[int, int] = field(default_factory=dict)
    acked: dict[int, int] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)
    granted: dict[int, int] = field(default_factory=dict)
    seen_headers: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)  # reset or ended: no more sending
    closed: bool = False
    #: SETTINGS frames sent (two as the tunnel starts) and acknowledged.
    settings_sent: int = 2
    settings_acked: int = 0
    #: Streams this end reset.
    resets: set[int] = field(default_factory=set)

    def change_settings(self, new: dict[SettingCodes | int, int]) -> None:
        """
        Send C{new}, if no SETTINGS of ours is awaiting its ACK: h2 applies
        our settings one ACK early while several are outstanding (see
        L{tests.test_tunnel_h2_tolerated}), which a correct implementation
        does not; scenarios keep clear of that bug.
        """
        if self.closed or self.settings_acked != self.settings_sent:
            return
        if self.attempt("settings", 0, self.conn.update_settings, new):
            self.settings_sent += 1
        self.collect()

    def collect(self) -> None:
        self.wire += self.conn.data_to_send()

    def attempt(self, what: str, sid: int, call: Callable[..., object], *args: Any) -> bool:
        """C{call(*args)}; an H2Error it raises recorded, C{sid} given up."""
        try:
            call(*args)
        except H2Error as e:
            self.log.append(("raised", what, sid, type(e).__name__))
            self.done.add(sid)
            self.outbound.pop(sid, None)
            self.finishing.pop(sid, None)
            return False
        return True

    def pump(self, sid: int) -> None:
        """Send what the windows allow of C{sid}'s queue, as the tunnel does."""
        if sid in self.done or self.closed:
            return
        buffer = self.outbound.get(sid)
        conn = self.conn
        try:
            while buffer:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = bytes(buffer[:window])
                if len(chunk) > conn.remote_settings.max_frame_size:
                    raise FlowError(f"{self.name}: a DATA frame over the peer's max frame size")
                end = len(chunk) == len(buffer) and sid in self.finishing
                end = end and self.finishing[sid] is None
                conn.send_data(sid, chunk, end_stream=end)
                self.sent[sid] = self.sent.get(sid, 0) + len(chunk)
                self.sent[0] = self.sent.get(0, 0) + len(chunk)
                del buffer[: len(chunk)]
                if end:
                    self.finishing.pop(sid)
                    self.done.add(sid)
            if not buffer and sid in self.finishing:
                trailers = self.finishing.pop(sid)
                if trailers is None:
                    conn.end_stream(sid)
                else:
                    conn.send_headers(sid, trailers, end_stream=True)
                self.done.add(sid)
        except H2Error as e:
            self.log.append(("raised", "send", sid, type(e).__name__))
            self.done.add(sid)
            self.outbound.pop(sid, None)
            self.finishing.pop(sid, None)

    def pump_all(self) -> None:
        for sid in sorted(set(self.outbound) | set(self.finishing)):
            self.pump(sid)

    def record(self, events: list[Event]) -> None:
        for event in events:
            entry = normalised(event)
            self.log.append(entry)
            sid = getattr(event, "stream_id", None)
            if isinstance(event, DataReceived):
                assert sid is not None
                self.received.setdefault(sid, bytearray()).extend(event.data)
                self.unacked[sid] = self.unacked.get(sid, 0) + event.flow_controlled_length
            elif isinstance(event, WindowUpdated):
                assert sid is not None
                self.granted[sid] = self.granted.get(sid, 0) + event.delta
            elif isinstance(event, (RequestReceived, ResponseReceived)):
                assert sid is not None
                self.seen_headers.add(sid)
            elif isinstance(event, StreamReset):
                assert sid is not None
                self.done.add(sid)
                self.outbound.pop(sid, None)
                self.finishing.pop(sid, None)
            elif isinstance(event, ConnectionTerminated):
                self.closed = True
            elif isinstance(event, SettingsAcknowledged):
                self.settings_acked += 1

    def acknowledge(self, share: float) -> None:
        for sid in sorted(self.unacked):
            length = int(self.unacked[sid] * share) if share < 1 else self.unacked[sid]
            if not length:
                continue
            self.unacked[sid] -= length
            self.acked[sid] = self.acked.get(sid, 0) + length
            self.acked[0] = self.acked.get(0, 0) + length
            try:
                self.conn.acknowledge_received_data(length, sid)
            except H2Error as e:
                self.log.append(("raised", "acknowledge", sid, type(e).__name__))

    def observe(self, sids: list[int]) -> None:
        """What the tunnel's protocols read of each stream's state."""
        conn = self.conn
        state = []
        for sid in sids:
            stream = conn.streams.get(sid)
            stream_open = stream is not None and not stream.closed
            sent_end = stream is None or stream.state_machine.state in (
                StreamState.HALF_CLOSED_LOCAL,
                StreamState.CLOSED,
            )
            state.append((sid, stream_open, sent_end))
        self.log.append(
            ("state", tuple(state), conn.open_outbound_streams, conn.open_inbound_streams)
        )


def normalised(event: Event) -> tuple[Any, ...]:
    """An event as plain values: everything a receiver may act on."""
    sid = getattr(event, "stream_id", None)
    if isinstance(event, DataReceived):
        ended = event.stream_ended is not None
        return ("data", sid, bytes(event.data), event.flow_controlled_length, ended)
    if isinstance(
        event,
        (RequestReceived, ResponseReceived, TrailersReceived, InformationalResponseReceived),
    ):
        fields = [(bytes(n), bytes(v)) for n, v in event.headers]
        ended = getattr(event, "stream_ended", None) is not None
        return (type(event).__name__, sid, fields, ended)
    if isinstance(event, StreamEnded):
        return ("ended", sid)
    if isinstance(event, StreamReset):
        return ("reset", sid, int(event.error_code), event.remote_reset)
    if isinstance(event, WindowUpdated):
        return ("window", sid, event.delta)
    if isinstance(event, RemoteSettingsChanged):
        changed = sorted((int(k), v.new_value) for k, v in event.changed_settings.items())
        return (type(event).__name__, changed)
    if isinstance(event, SettingsAcknowledged):
        # Not what changed: h2 reports our settings one ACK early (the ACK
        # of its first SETTINGS frame reports the second's).
        return (type(event).__name__,)
    if isinstance(event, (PingReceived, PingAckReceived)):
        return (type(event).__name__, event.ping_data)
    if isinstance(event, ConnectionTerminated):
        code = None if event.error_code is None else int(event.error_code)
        return ("goaway", code, event.last_stream_id, event.additional_data)
    return (type(event).__name__,)


def start(factory: Factory, client_side: bool, scenario: Scenario) -> Side:
    """An end started as TunnelProtocol.connectionMade starts it."""
    conn = factory(client_side)
    conn.initiate_connection()
    local = dict(TUNNEL_SETTINGS)
    local[SettingCodes.INITIAL_WINDOW_SIZE] = scenario.stream_window
    local[SettingCodes.MAX_FRAME_SIZE] = scenario.max_frame_size
    conn.update_settings(local)
    if scenario.connection_window > 65535:
        conn.increment_flow_control_window(scenario.connection_window - 65535)
    side = Side("client" if client_side else "server", conn)
    side.collect()
    return side


def deliver(source: Side, target: Side, cuts: list[float]) -> None:
    """All of C{source}'s bytes to C{target}, cut at the given fractions."""
    data = bytes(source.wire)
    source.wire.clear()
    if not data or (target.closed and data):
        return
    cut_at = {int(len(data) * cut) for cut in cuts} | {0, len(data)}
    # h2 applies a SETTINGS ACK's larger SETTINGS_MAX_FRAME_SIZE only from
    # its next receive_data call (see tests.test_tunnel_h2_tolerated): each
    # ACK ends a piece, which keeps the scenarios clear of that bug.
    points = sorted(cut_at | set(ack_ends(data)))
    for at, end in itertools.pairwise(points):
        try:
            events = target.conn.receive_data(data[at:end])
        except H2Error as e:
            target.log.append(("raised", "receive", 0, type(e).__name__))
            target.closed = True
            target.collect()
            return
        target.record(events)
    target.pump_all()
    target.collect()


def play(client_factory: Factory, server_factory: Factory, scenario: Scenario) -> Played:
    client = start(client_factory, True, scenario)
    server = start(server_factory, False, scenario)
    sides = {"client": client, "server": server}
    peer = {"client": server, "server": client}
    opened: list[int] = []
    plans: dict[int, StreamPlan] = {}

    def body_of(side: Side, sid: int) -> bytes:
        plan = plans[sid]
        return plan.request_body if side is client else plan.response_body

    for step in scenario.steps:
        kind = step[0]
        if kind == "open" and len(opened) < len(scenario.streams) and not client.closed:
            plan = scenario.streams[len(opened)]
            sid = client.conn.get_next_available_stream_id()
            plans[sid] = plan
            opened.append(sid)
            end = not plan.request_body and plan.request_trailers is None
            if client.attempt("open", sid, client.conn.send_headers, sid, plan.request, end):
                client.queued[sid] = 0
                if end:
                    client.done.add(sid)
            client.collect()
        elif kind == "respond" and opened:
            respond(server, opened[step[1] % len(opened)], plans)
        elif kind == "send" and opened:
            side = sides[step[1]]
            sid = opened[step[2] % len(opened)]
            if sid in side.queued and sid not in side.done:
                body = body_of(side, sid)
                at = side.queued[sid]
                size = max(1, int(len(body) * step[3]))
                chunk = body[at : at + size]
                side.queued[sid] = at + len(chunk)
                side.outbound.setdefault(sid, bytearray()).extend(chunk)
                side.pump(sid)
                side.collect()
        elif kind == "finish" and opened:
            side = sides[step[1]]
            sid = opened[step[2] % len(opened)]
            finish(side, sid, body_of(side, sid), plans[sid], side is client)
        elif kind == "ack":
            sides[step[1]].acknowledge(step[2])
            sides[step[1]].collect()
        elif kind == "deliver":
            deliver(sides[step[1]], peer[step[1]], list(step[2]))
        elif kind == "reset" and opened:
            side = sides[step[1]]
            sid = opened[step[2] % len(opened)]
            if sid in side.queued or sid in side.seen_headers:
                side.outbound.pop(sid, None)
                side.finishing.pop(sid, None)
                side.attempt("reset", sid, side.conn.reset_stream, sid, step[3])
                side.done.add(sid)
                side.resets.add(sid)
                side.collect()
        elif kind == "ping":
            side = sides[step[1]]
            side.attempt("ping", 0, side.conn.ping, step[2])
            side.collect()
        elif kind == "settings":
            sides[step[1]].change_settings({step[2]: step[3]})
        for side in (client, server):
            side.observe(opened)
    # Drain: everything queued, finished, acknowledged and carried until
    # both ends are quiet; then the scenario's settings back, and again.
    drain(client, server, opened, plans)
    restore: dict[SettingCodes | int, int] = {
        SettingCodes.INITIAL_WINDOW_SIZE: scenario.stream_window,
        SettingCodes.MAX_FRAME_SIZE: scenario.max_frame_size,
    }
    for side in (client, server):
        side.change_settings(restore)
    drain(client, server, opened, plans)
    if scenario.goaway is not None:
        closer = sides[scenario.goaway]
        closer.attempt("goaway", 0, closer.conn.close_connection)
        closer.closed = True
        closer.collect()
        deliver(closer, peer[scenario.goaway], [])
    for side in (client, server):
        side.observe(opened)
    return Played(client, server, opened, plans)


def drain(client: Side, server: Side, opened: list[int], plans: dict[int, StreamPlan]) -> None:
    for _ in range(400):
        for sid in opened:
            respond(server, sid, plans)
        for side in (client, server):
            for sid in opened:
                if sid in side.queued and sid not in side.done:
                    plan = plans[sid]
                    body = plan.request_body if side is client else plan.response_body
                    finish(side, sid, body, plan, side is client)
            side.acknowledge(1)
            side.collect()
        if not client.wire and not server.wire:
            return
        deliver(client, server, [])
        deliver(server, client, [])
    raise AssertionError("the ends never went quiet")


def respond(server: Side, sid: int, plans: dict[int, StreamPlan]) -> None:
    """The server answers C{sid}, once it has its request and if it can."""
    plan = plans[sid]
    if sid not in server.seen_headers or sid in server.queued or sid in server.done:
        return
    if server.closed:
        return
    if plan.informational:
        server.attempt("informational", sid, server.conn.send_headers, sid, [(b":status", b"103")])
    end = not plan.response_body and plan.response_trailers is None
    if server.attempt("respond", sid, server.conn.send_headers, sid, plan.response, end):
        server.queued[sid] = 0
        if end:
            server.done.add(sid)
    server.collect()


def finish(side: Side, sid: int, body: bytes, plan: StreamPlan, client_side: bool) -> None:
    """Queue the rest of C{sid}'s body, then END_STREAM or the trailers."""
    if sid not in side.queued or sid in side.done or sid in side.finishing:
        return
    at = side.queued[sid]
    side.outbound.setdefault(sid, bytearray()).extend(body[at:])
    side.queued[sid] = len(body)
    side.finishing[sid] = plan.request_trailers if client_side else plan.response_trailers
    side.pump(sid)
    side.collect()


@dataclass
class Played:
    client: Side
    server: Side
    opened: list[int]
    plans: dict[int, StreamPlan]


def body(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


__all__ = ["ErrorCodes", "Played", "Scenario", "StreamPlan", "body", "plain", "play", "tunnel"]
