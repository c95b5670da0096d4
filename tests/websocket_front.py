"""
The public front end in memory, for the WebSocket unit tests: the real
HTTP/1.1 channel (with its deadlines) and request over L{StringTransport}, a
L{MemoryReactorClock}, the real connector queues, and a stand-in for the
tunnel stream (L{FakeStream}) driven by the test through the job's exchange.
"""

from __future__ import annotations

import base64
from typing import Any, cast

import attrs
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.session import Session
from appproxy.config import AppConfig
from appproxy.config.model import ClientLimits
from appproxy.frontend.deadlines import ClientDeadlines, DeadlineHTTPChannel
from appproxy.frontend.front_end import FrontEnd
from appproxy.frontend.proxy import ProxyRequestFactory
from appproxy.tunnel.queue import ConnectorGroups, ProxyJob

KEY = base64.b64encode(b"0123456789abcdef")
ORIGIN = b"https://web.example"


def app(name: str = "web", **changes: Any) -> AppConfig:
    settings: dict[str, Any] = {
        "name": name,
        "external_url": f"https://{name}.example/",
        "internal_url": "http://127.0.0.1:8080/",
        "connector_group": "g",
        "pre_authentication": "passthrough",
        "headers": (("X-Remote-User", "user"),),
    }
    settings.update(changes)
    return AppConfig(**settings)


def handshake(host: bytes = b"web.example", **changes: bytes | None) -> bytes:
    """An HTTP/1.1 WebSocket handshake's head, with C{changes} to its fields."""
    fields: dict[bytes, bytes | None] = {
        b"Host": host,
        b"Upgrade": b"websocket",
        b"Connection": b"Upgrade",
        b"Sec-WebSocket-Version": b"13",
        b"Sec-WebSocket-Key": KEY,
        b"Origin": b"https://" + host,
    }
    fields.update({name.replace("_", "-").encode(): value for name, value in changes.items()})
    lines = [b"GET /chat?room=1 HTTP/1.1"]
    lines += [name + b": " + value for name, value in fields.items() if value is not None]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def session(user: str = "alice", app_name: str = "web", expires_at: int = 10_000) -> Session:
    return Session(
        app=app_name,
        user=user,
        subject=user,
        issuer="https://idp.example",
        auth_time=0,
        issued_at=0,
        expires_at=expires_at,
    )


@attrs.define
class FakeStream:
    """The tunnel side of an upgraded stream, as the exchange sees it."""

    accept: bool = True
    written: list[bytes] = attrs.field(factory=list)
    ended: bool = False
    cancelled: bool = False
    paused: bool = False

    def write_body(self, data: bytes) -> bool:
        self.written.append(data)
        return self.accept

    def end_body(self) -> None:
        self.ended = True

    def cancel(self) -> None:
        self.cancelled = True

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.cancelled = True

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


class Front:
    """One front end: its apps, queues, clock and access log lines."""

    def __init__(self, test: SynchronousTestCase, apps: list[AppConfig]) -> None:
        self.clock = MemoryReactorClock()
        self.groups = ConnectorGroups(self.clock, 30.0)
        self.frontend = FrontEnd(apps, self.groups, self.clock)
        # A tunnel connection is up (jobs wait for it rather than fail fast).
        self.groups["g"].connection_made(self)
        self.groups.upgrade_queue("g").connection_made(self)
        self.deadlines = ClientDeadlines(self.clock, ClientLimits())
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        test.addCleanup(globalLogPublisher.removeObserver, observer)

    def connect(self, data: bytes = b"") -> tuple[DeadlineHTTPChannel, StringTransport]:
        """A client connection (sending C{data}), its requests answered now."""
        channel = DeadlineHTTPChannel()
        channel.deadlines = self.deadlines
        channel.timeOut = 120
        channel.callLater = self.clock.callLater  # type: ignore[method-assign,assignment]
        channel.requestFactory = ProxyRequestFactory(self.frontend)  # type: ignore[assignment]
        transport = StringTransport()
        channel.makeConnection(transport)
        if data:
            channel.dataReceived(data)
        self.clock.advance(0)
        return channel, transport

    def waiting(self, group: str = "g") -> tuple[int, int]:
        """Jobs waiting: (requests, upgrades)."""
        return self.groups[group].waiting, self.groups.upgrade_queue(group).waiting

    def take(self, *, upgrade: bool = True, group: str = "g") -> ProxyJob:
        """The job waiting (as a tunnel connection takes it)."""
        queue = self.groups.upgrade_queue(group) if upgrade else self.groups[group]
        taken: list[ProxyJob] = []
        queue.get().addCallback(taken.append)
        assert taken, "nothing queued"
        return taken[0]

    def open(
        self, data: bytes = b"", fields: list[tuple[bytes, bytes]] | None = None
    ) -> tuple[DeadlineHTTPChannel, StringTransport, ProxyJob, FakeStream]:
        """A WebSocket through the front end, open (the app said 101)."""
        channel, transport = self.connect(handshake() + data)
        job = self.take()
        stream = FakeStream()
        job.exchange.stream_opened(stream)
        job.exchange.response_started(101, fields or [(b"sec-websocket-accept", b"acc")])
        return channel, transport, job, stream

    def access_lines(self) -> list[LogEvent]:
        return [
            e
            for e in self.events
            if e.get("log_system") == "access" and "WebSocket" in e.get("log_format", "")
        ]


def status_of(transport: StringTransport) -> bytes:
    """The status line the client got."""
    return transport.value().split(b"\r\n", 1)[0]
