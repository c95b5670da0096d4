"""
Deadlines for slow HTTP/1.1 clients on the public listener.

twisted.web's only timer is an idle timer that every byte restarts, so a
client sending one header byte every two seconds holds a connection as long
as it likes (slowloris).  L{DeadlineHTTPChannel} adds, from
L{appproxy.config.model.ClientLimits}:

  - a deadline on the header block, as nginx's C{client_header_timeout}
    and HAProxy's C{timeout http-request}: C{header_timeout} seconds from the
    connection (the TLS handshake included) for the first request, from its
    first byte for the next ones on a kept-alive connection;
  - a minimum rate for the body, as Apache's C{mod_reqtimeout} C{MinRate}:
    the body starts with C{header_timeout} seconds of credit, and each byte
    buys C{1 / body_min_rate} more, never more than C{header_timeout} ahead.
    Time the service itself stops reading (the tunnel is slow, the request
    waits for the connector's acknowledgement, the client does not read its
    response) is not counted against the client;
  - a bound on how many connections one address may have reading a header
    block at once (L{ClientDeadlines}); one more is closed at once, but for
    the front end's C{trusted_proxies}.  A connection counts from its TCP
    accept (L{appproxy.daemon.plain_http} until TLS starts, then here).

A client that misses a deadline gets C{408 Request Timeout} (when nothing
of a response was sent yet) and its connection is closed.  HTTP/2 clients
(ALPN h2) leave this channel before their first frame; the same limits
apply to them in L{appproxy.frontend.h2_deadlines}.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from appproxy.config.model import ClientLimits
from appproxy.frontend.channels import ProxyChannelProtocol, StrictHTTPChannel, Upgraded
from appproxy.frontend.idle import lost, settle_idle, shared_address, went_idle
from appproxy.frontend.peer import peer_text
from appproxy.http.forwarding import IPAddress, IPNetwork, unmapped
from appproxy.observe.metrics import LIMIT_HITS

__all__ = ["ClientDeadlines", "DeadlineHTTPChannel", "deadline_channel_protocol"]

log = Logger()

#: Sent to a client that missed a deadline before any response began.
_TIMEOUT_BODY = b"The request was not sent in time.\r\n"
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)
#: Seconds a timed-out client gets to read the 408 before it is cut off.
CLOSE_GRACE = 2.0

_IDLE, _HEADERS, _BODY, _HANDLING = "idle", "headers", "body", "handling"
#: A WebSocket: no deadline of this module applies.
_UPGRADED = "upgraded"


@functools.lru_cache(maxsize=1024)
def _parsed_ip(address: str) -> IPAddress | None:
    """C{address} parsed (IPv4-mapped as IPv4), L{None} if not an address:
    parsed once per address, not on every request of every connection."""
    try:
        return unmapped(ipaddress.ip_address(address))
    except ValueError:
        return None


@attrs.define(eq=False)
class ClientDeadlines:
    """
    What the connections of one public listener share: the limits (replaced
    on reload) and how many connections of each address are reading a
    header block.
    """

    clock: IReactorTime
    limits: ClientLimits = attrs.field(factory=ClientLimits)
    reading_headers: dict[str, int] = attrs.field(factory=dict)
    """Client address -> connections reading a header block."""
    trusted: Callable[[], Sequence[IPNetwork]] = lambda: ()
    """The reverse proxies in front of the service (not bounded per address)."""

    def exempt(self, address: str) -> bool:
        """Whether C{address} is a trusted proxy's."""
        proxies = self.trusted()
        if not proxies:
            return False
        ip = _parsed_ip(address)
        if ip is None:
            return False
        return any(ip in network for network in proxies)

    def enter(self, address: str) -> bool:
        """One more connection of C{address} reads a header block; C{False}: too many."""
        count = self.reading_headers.get(address, 0)
        if count >= self.limits.header_connections_per_address:
            return False
        self.reading_headers[address] = count + 1
        return True

    def leave(self, address: str) -> None:
        count = self.reading_headers.get(address, 0) - 1
        if count > 0:
            self.reading_headers[address] = count
        else:
            self.reading_headers.pop(address, None)


class DeadlineHTTPChannel(StrictHTTPChannel):
    """The public HTTP/1.1 channel, with the deadlines of the module docstring."""

    deadlines: ClientDeadlines | None = None
    _phase = _IDLE
    _address: str | None = None  # set while counted in ClientDeadlines.reading_headers
    _peer: str | None = None  # the client's address (the transport's peer)
    _timer: IDelayedCall | None = None
    """The deadline's timer: armed, or parked (still scheduled, ignored)."""
    _armed = False
    """Whether L{_timer} stands for a deadline now."""
    _cut_timer: IDelayedCall | None = None
    _deadline = 0.0
    _closing = _lost = False
    _peer_address: Any = None
    _host_address: Any = None  # the connection's addresses, asked once
    _idle_timer: IDelayedCall | None = None
    """twisted.web's idle timer (L{setTimeout}): running, or parked."""
    _idle_on = False
    """Whether L{_idle_timer} stands for the idle timeout now."""

    # -- twisted.web's hooks ----------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_headers()

    def dataReceived(self, data: bytes) -> None:
        if self._phase == _IDLE and data:
            self._start_headers()
        if not self._closing:
            super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        # Pipelined requests are replayed from a buffer, line by line.
        if self._phase == _IDLE:
            self._start_headers()
        if not self._closing:
            super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        self._leave_headers()
        self._park_timer()
        if self.length == 0:
            self._phase = _HANDLING
        else:
            self._phase = _BODY
            limits = self._limits()
            if limits is not None and limits.body_min_rate:
                self._deadline = self._now() + limits.header_timeout
                self._arm(self._deadline)
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        limits = self._limits()
        if self._phase == _BODY and limits is not None and limits.body_min_rate:
            self._deadline = min(
                self._deadline + len(data) / limits.body_min_rate,
                self._now() + limits.header_timeout,
            )
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._phase = _HANDLING
        self._park_timer()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # The next request's bytes (maybe buffered already) start its deadline.
        self._phase = _IDLE
        super().requestDone(request)
        if not self.requests and not self._lost:
            went_idle(self, None if self.deadlines is None else self.deadlines.clock)

    def still_idle(self) -> bool:
        """No request under way (nor upgraded), and not lost (L{went_idle})."""
        return not self.requests and not self._lost and self._phase == _IDLE

    settle_idle = settle_idle  # idle a while: give back what it holds

    def setTimeout(self, period: float | None) -> float | None:
        # twisted.web's idle timer (TimeoutMixin's), not made anew for every
        # request: stopped while a request is handled, it stays scheduled,
        # parked (a parked timer that comes due does nothing), and is moved
        # on lazily when the next idle time starts.
        previous, self.timeOut = self.timeOut, period  # type: ignore[assignment]
        if period is None:
            # twisted.web stops its idle timer when the request is complete,
            # the connection lost, or handed over to HTTP/2: no deadline then.
            self._idle_on = False
            self._leave_headers()
            if self._phase == _HANDLING and not self._lost:
                # The request is complete: the timers stay, parked.
                self._park_timer()
            else:
                # Lost, or handed over to HTTP/2 (this channel gets no
                # connectionLost then): nothing may stay scheduled.
                self._stop_timer()
                self._stop_idle()
            return previous
        self._idle_on = True
        idle = self._idle_timer
        if idle is not None and idle.active():
            idle.reset(period)
        else:
            self._idle_timer = self.callLater(period, self._idle_expired)
        return previous

    def resetTimeout(self) -> None:
        if self._idle_on and self._idle_timer is not None and self.timeOut is not None:
            self._idle_timer.reset(self.timeOut)

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self._idle_on:
            self._idle_on = False
            self.timeoutConnection()

    def _stop_idle(self) -> None:
        self._idle_on = False
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def getPeer(self) -> Any:
        # Asked by every request (twisted.web's Request.__init__): the
        # transport's answer is a new address object each time.
        peer = self._peer_address
        if peer is None:
            peer = self._peer_address = super().getPeer()
        return peer

    def getHost(self) -> Any:
        host = self._host_address
        if host is None:
            host = self._host_address = shared_address(super().getHost())
        return host

    def upgrade(self, upgraded: Upgraded) -> bytes:
        # A WebSocket: the tunnel's idle timeout governs it, not these deadlines.
        self._phase = _UPGRADED
        self._leave_headers()
        self._stop_timer()
        return super().upgrade(upgraded)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._lost = True
        self._leave_headers()
        self._stop_timer()
        if self._cut_timer is not None and self._cut_timer.active():
            self._cut_timer.cancel()
        self._cut_timer = None
        super().connectionLost(reason)
        self._stop_idle()
        lost(self, None if self.deadlines is None else self.deadlines.clock)

    # -- the deadlines -----------------------------------------------------------

    def _limits(self) -> ClientLimits | None:
        return None if self.deadlines is None else self.deadlines.limits

    def _now(self) -> float:
        assert self.deadlines is not None
        return self.deadlines.clock.seconds()

    def _start_headers(self) -> None:
        self._phase = _HEADERS
        deadlines = self.deadlines
        if deadlines is None or self._closing or self.transport is None:
            return
        address = self._peer
        if address is None:
            # The same for every request of the connection: asked once.
            address = self._peer = str(getattr(self.transport.getPeer(), "host", "?"))
        if not deadlines.exempt(address):
            if not deadlines.enter(address):
                LIMIT_HITS.labels(limit="client_header_connections_per_address").inc()
                log.info(
                    "Closing a connection from {address}: it already has {n} reading headers",
                    address=address,
                    n=deadlines.limits.header_connections_per_address,
                )
                self._closing = True
                self.transport.abortConnection()  # type: ignore[attr-defined]
                return
            self._address = address
        self._deadline = self._now() + deadlines.limits.header_timeout
        self._arm(self._deadline)

    def _leave_headers(self) -> None:
        if self._address is not None and self.deadlines is not None:
            self.deadlines.leave(self._address)
        self._address = None

    def _arm(self, when: float) -> None:
        self._armed = True
        timer = self._timer
        delay = max(0.0, when - self._now())
        if timer is not None and timer.active() and when >= timer.getTime():
            # One timer per connection, moved on from request to request: a
            # later time costs no scheduling (twisted reschedules it lazily).
            timer.reset(delay)
            return
        self._stop_timer()
        self._armed = True
        assert self.deadlines is not None
        self._timer = self.deadlines.clock.callLater(delay, self._expired)

    def _park_timer(self) -> None:
        """No deadline now; the timer stays scheduled for the next one."""
        self._armed = False

    def _stop_timer(self) -> None:
        self._armed = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self._armed:
            return  # parked: no deadline was running
        self._armed = False
        now = self._now()
        if self._phase == _BODY:
            if now < self._deadline:
                self._arm(self._deadline)
                return
            if self.input_paused():
                # The service stopped reading, not the client: fresh credit.
                assert self.deadlines is not None
                self._deadline = now + self.deadlines.limits.header_timeout
                self._arm(self._deadline)
                return
        elif self._phase != _HEADERS:
            return
        self._time_out()

    def _time_out(self) -> None:
        phase = self._phase
        self._leave_headers()
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        limits = self._limits()
        slow = "client_header_timeout" if phase == _HEADERS else "client_body_min_rate"
        LIMIT_HITS.labels(limit=slow).inc()
        log.info(
            "Client {peer} too slow sending its request {what} (limits: headers in {limit:g} s,"
            " body at {rate} bytes/s); closing",
            peer=peer_text(transport),
            what="headers" if phase == _HEADERS else "body",
            limit=0.0 if limits is None else limits.header_timeout,
            rate=0 if limits is None else limits.body_min_rate,
        )
        request = self.requests[-1] if self.requests else None
        if request is None or not getattr(request, "startedWriting", False):
            transport.write(REQUEST_TIMEOUT)
        transport.loseConnection()
        assert self.deadlines is not None
        self._cut_timer = self.deadlines.clock.callLater(CLOSE_GRACE, self._cut)

    def _cut(self) -> None:
        self._cut_timer = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


def deadline_channel_protocol(factory: Any) -> ProxyChannelProtocol:
    """
    The public listener's protocol (an C{HTTPFactory}'s C{protocol}) whose
    HTTP/1.1 channel keeps C{factory.client_deadlines}.
    """
    channel = DeadlineHTTPChannel()
    channel.deadlines = getattr(factory, "client_deadlines", None)
    frontend = getattr(factory, "frontend", None)
    if channel.deadlines is not None and frontend is not None:
        channel.deadlines.trusted = lambda: frontend.trusted_proxies
    return ProxyChannelProtocol(channel)
