"""
One user request travelling over the tunnel, as the service's end holds it: the
L{ExchangeStream} the web front end writes the request body to and pauses, and
the stream L{appproxy.tunnel.service.ServiceTunnelProtocol} feeds the response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from h2.errors import ErrorCodes
from twisted.internet.interfaces import IDelayedCall

from appproxy.tunnel.base import TunnelStream
from appproxy.tunnel.queue import ProxyJob

if TYPE_CHECKING:
    from appproxy.tunnel.service import ServiceTunnelProtocol


@attrs.define(eq=False)
class ServiceStream(TunnelStream):
    """
    One user request travelling over the tunnel.
    """

    proto: ServiceTunnelProtocol
    job: ProxyJob
    paused: bool = attrs.field(init=False, default=False)
    """The user side asked for no more response data for now."""
    held: bool = attrs.field(init=False, default=False)
    """No window is reopened until C{release}, whatever C{paused} says."""
    unacked: int = attrs.field(init=False, default=0)
    """Response bytes received but not yet acknowledged to the connector."""
    responded: bool = attrs.field(init=False, default=False)
    finished: bool = attrs.field(init=False, default=False)
    timer: IDelayedCall | None = attrs.field(init=False, default=None)
    """Gives up on the stream if the connector does not answer in time."""

    def __attrs_post_init__(self) -> None:
        self.request_id = self.job.request_id

    # ExchangeStream: called by the user side

    def write_body(self, data: bytes) -> bool:
        self.job.body_sent = True
        return self.proto.send_data(self, data)

    def end_body(self) -> None:
        self.proto.end_stream(self)

    def cancel(self) -> None:
        if self.finished:
            return
        self._done(ErrorCodes.CANCEL)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._ack_pending()

    def hold(self) -> None:
        """
        Stop reopening the window, whatever the consumer says (see
        L{appproxy.frontend.exchange.ExchangeRequest.response_data}).
        """
        self.held = True

    def release(self) -> None:
        self.held = False
        self._ack_pending()

    def _ack_pending(self) -> None:
        if self.unacked and not self.paused and not self.held:
            unacked, self.unacked = self.unacked, 0
            self.proto.acknowledge(self.stream_id, unacked)

    def stopProducing(self) -> None:
        self.cancel()

    # TunnelStream

    def outbound_drained(self) -> None:
        self.job.exchange.body_drained()

    def stream_aborted(self, reason: str) -> None:
        if self.finished:
            return
        self._done()
        self.job.exchange.stream_lost(self.job, reason)

    # from the protocol

    def timed_out(self) -> None:
        self.timer = None
        if self.finished:
            return
        self._done(ErrorCodes.CANCEL)
        self.job.exchange.upstream_error(
            504,
            "timeout",
            f"The connector did not answer within {self.job.app.backend_timeout:g} seconds.",
        )

    def _done(self, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """
        The stream is over for us: the protocol resets it with C{code} if h2
        still counts it open, then gives its room to the next job.
        """
        self.finished = True
        self.closed = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.proto.stream_finished(self, code)
