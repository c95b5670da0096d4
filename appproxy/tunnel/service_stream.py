"""
One user request travelling over the tunnel, as the service's end holds it: the
L{ExchangeStream} the web front end writes the request body to and pauses, and
the stream L{appproxy.tunnel.service.ServiceTunnelProtocol} feeds the response.
What it shares with an upgraded stream is L{appproxy.tunnel.service_flow}'s.
"""

from __future__ import annotations

import attrs
from h2.errors import ErrorCodes

from appproxy.tunnel.machine import CutResponse, StreamInput, StreamMachine
from appproxy.tunnel.service_flow import FlowStream


@attrs.define(eq=False)
class ServiceStream(FlowStream):
    """
    One user request travelling over the tunnel.
    """

    machine: StreamMachine | None = attrs.field(init=False, default=None)
    """The stream's state and timing, once its request headers went out."""

    SENT = StreamInput.BODY_SENT
    SEND_BLOCKED = StreamInput.SEND_BLOCKED
    SEND_UNBLOCKED = StreamInput.SEND_UNBLOCKED
    CANCELLED = StreamInput.CANCELLED
    PAUSED = StreamInput.RESPONSE_PAUSED
    RESUMED = StreamInput.RESPONSE_RESUMED
    PEER_RESET = StreamInput.PEER_RESET
    TIMER_FIRED = StreamInput.TIMER_FIRED
    INVALID_LOG = "Stream {sid} (request {rid}): {input} is not allowed in {state}"

    def start(self, limit: float) -> None:
        """The request headers went out: the machine takes over the timing."""
        self.machine = StreamMachine(limit, self.job.has_body, self.proto.clock.seconds())
        self._act(self.machine.start())

    def _carry_out(self, action: object, later: bool) -> None:
        if isinstance(action, CutResponse):
            self._answer(later, self.job.exchange.stream_lost, self.job, action.reason)

    def _release(self, code: ErrorCodes) -> None:
        self.proto.stream_finished(self, code)
