"""
The service's control channel on a tunnel connection: the settings push.

The settings of the group's apps (backend TLS, timeouts) go to the connector
on a control stream at connect and after each reload.  The stream is marked
by L{CONTROL_FIELD}, which the service removes from every user request, so
no user request, whatever its path or fields, can reach it.  A push that
fails (refused, reset, unanswered within L{SETTINGS_TIMEOUT}) closes the
connection cleanly once its streams in flight have ended: the connector
dials again and gets its settings afresh.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
from twisted.internet.interfaces import IDelayedCall

from appproxy.config import AppConfig
from appproxy.tunnel.connection_machine import ConnectionInput, ConnectionState
from appproxy.tunnel.fields import CONTROL_FIELD, SETTINGS_CONTROL, Field
from appproxy.tunnel.service_upgrades import upgrade_capacity
from appproxy.tunnel.stream import TunnelStream

if TYPE_CHECKING:
    from appproxy.tunnel.service import ServiceTunnelProtocol

#: Seconds the connector has to acknowledge a settings push.
SETTINGS_TIMEOUT = 30.0


def connector_settings(apps: Sequence[AppConfig]) -> bytes:
    """
    The per-app settings a connector needs, as the JSON pushed to it.
    """
    return json.dumps(
        {
            "apps": {
                app.name: {
                    "verify_tls": app.verify_backend_tls,
                    "ca_pem": app.backend_ca_pem.decode("ascii") if app.backend_ca_pem else None,
                    "timeout": app.backend_timeout,
                }
                for app in apps
            }
        }
    ).encode("utf-8")


@attrs.define(eq=False)
class SettingsChannel:
    """
    The settings pushes of one L{ServiceTunnelProtocol}.
    """

    proto: ServiceTunnelProtocol
    timers: dict[int, IDelayedCall | None] = attrs.field(init=False, factory=dict)
    """The settings streams in flight, each with its deadline until answered."""

    def __contains__(self, stream_id: int) -> bool:
        return stream_id in self.timers

    def __len__(self) -> int:
        return len(self.timers)

    def push(self) -> None:
        """
        Send the connector the settings of its group's apps (at connect, and
        again after a reload).  The connection's machine decides when: it
        waits for a free stream if the connection is at capacity, and sends
        nothing while draining (it then calls L{send}).
        """
        proto = self.proto
        if proto.group is None or not proto.connected:
            return
        if proto.machine.state is ConnectionState.CONNECTING:
            proto.feed(ConnectionInput.HANDSHAKE_DONE)
        else:
            proto.feed(ConnectionInput.SETTINGS_CHANGED)

    def send(self) -> None:
        """Open a control stream and push the settings on it."""
        proto = self.proto
        assert proto.group is not None
        apps = [a for a in proto.factory.apps if a.connector_group == proto.group.name]
        sid = proto.conn.get_next_available_stream_id()
        self.timers[sid] = proto.clock.callLater(
            SETTINGS_TIMEOUT, self.failed, sid, "no answer in time"
        )
        stream = TunnelStream(sid)
        proto.streams[sid] = stream
        # A push that fails at once fails like one refused (stream_failed).
        proto.within_stream(sid, self._send, stream, connector_settings(apps))

    def _send(self, stream: TunnelStream, document: bytes) -> None:
        proto = self.proto
        proto.conn.send_headers(
            stream.stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"appproxy"),
                (b":path", b"/"),
                (CONTROL_FIELD, SETTINGS_CONTROL),
                (b"content-type", b"application/json"),
            ],
        )
        proto.send_data(stream, document)
        proto.end_stream(stream)

    def answered(self, stream_id: int, headers: Sequence[Field]) -> None:
        """
        The connector answered settings stream C{stream_id}; its answer says
        how many upgraded streams (WebSockets) it takes, if any.
        """
        status = dict(headers).get(b":status", b"")
        if status != b"204":
            self.failed(stream_id, f"refused with status {status.decode('latin-1')}")
            return
        self._cancel(stream_id)
        proto = self.proto
        connect = proto.conn.remote_settings.enable_connect_protocol == 1
        proto.feed(ConnectionInput.SETTINGS_ACKED, upgrade_capacity(headers, connect))

    def ended(self, stream_id: int) -> None:
        """Settings stream C{stream_id} is over: its room is free again."""
        self._forget(stream_id)

    def failed(self, stream_id: int, why: str) -> None:
        """
        A settings push failed (refused, reset, unanswered): the connection
        closes cleanly once its streams in flight have ended, and the
        connector dials again.
        """
        proto = self.proto
        if stream_id in self.timers and proto.connected and not proto.terminated:
            # Unanswered: reset it, so that h2 counts it closed too.
            proto.reset_stream(stream_id)
        self._forget(stream_id)
        if proto.machine.state not in (ConnectionState.READY, ConnectionState.AWAITING_SETTINGS):
            return
        proto.log.error(
            "Connector {connector}: settings push failed ({why}); closing the connection",
            connector=proto.connector_id,
            why=why,
        )
        proto.feed(ConnectionInput.SETTINGS_FAILED)

    def stop(self) -> None:
        """The connection is gone: cancel the deadlines."""
        for stream_id in list(self.timers):
            self._cancel(stream_id)
        self.timers.clear()

    def _cancel(self, stream_id: int) -> None:
        timer = self.timers.get(stream_id)
        if timer is not None and timer.active():
            timer.cancel()
        if stream_id in self.timers:
            self.timers[stream_id] = None

    def _forget(self, stream_id: int) -> None:
        self._cancel(stream_id)
        self.proto.streams.pop(stream_id, None)
        if self.timers.pop(stream_id, False) is not False:
            # Its room is free again.
            self.proto.feed(ConnectionInput.STREAM_CLOSED)
