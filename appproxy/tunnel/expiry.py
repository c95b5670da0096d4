"""
A tunnel connection ends when the connector's certificate does.

TLS checks the connector's certificate once, in the handshake; a connection
made the minute before the certificate's notAfter could otherwise go on
serving for as long as it stays up.  Both ends watch the notAfter of the
certificate the connection was made with:

 - the service, at the peer certificate's notAfter, takes no new request on
   the connection (nor counts it as one of its group's), lets the requests in
   flight finish for up to L{EXPIRY_DRAIN} seconds, then closes it
   (L{watch_connector_certificate});
 - the connector, at its own certificate's notAfter, drains the connection the
   same way (capacity 0, GOAWAY once idle) and redials: with a renewed
   certificate if one was reloaded, else the service refuses the handshake.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

if TYPE_CHECKING:
    from appproxy.tunnel.service import ServiceTunnelProtocol

#: Seconds the requests in flight on an expired connection may take to finish
#: before the connection is cut (and those that can be retried are retried).
EXPIRY_DRAIN = 10.0

log = Logger()

#: The notAfter of expired certificates of this process already reported:
#: the connector redials with an expired certificate until it is renewed,
#: and says so once, not at every attempt.
_reported: set[float] = set()


def _timestamp(cert: Any) -> float | None:
    """The notAfter of a pyOpenSSL X509 certificate, in seconds since the epoch."""
    if cert is None:
        return None
    return float(cert.to_cryptography().not_valid_after_utc.timestamp())


def peer_not_after(transport: Any) -> float | None:
    """The notAfter of a TLS transport's peer certificate, or L{None}."""
    try:
        return _timestamp(transport.getPeerCertificate())
    except Exception:
        return None


def own_not_after(transport: Any) -> float | None:
    """The notAfter of the certificate a TLS transport presents, or L{None}."""
    try:
        return _timestamp(transport.getHandle().get_certificate())
    except Exception:
        return None


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


@attrs.define(eq=False)
class ExpiryWatch:
    """
    Calls C{expire} at C{not_after}, then C{cut} L{EXPIRY_DRAIN} seconds
    later unless stopped first (the connection closed): so a connection that
    does not finish its drain is closed all the same.
    """

    clock: IReactorTime
    not_after: float | None
    """When the certificate expires (seconds since the epoch); L{None}: never."""
    expire: Callable[[], object]
    """Stop taking requests and close once idle."""
    cut: Callable[[], object]
    """Close now."""
    expired: bool = attrs.field(init=False, default=False)
    _call: IDelayedCall | None = attrs.field(init=False, default=None)

    def start(self) -> ExpiryWatch:
        if self.not_after is not None:
            delay = max(0.0, self.not_after - self.clock.seconds())
            self._call = self.clock.callLater(delay, self._expire)
        return self

    def stop(self) -> None:
        """The connection is gone: forget it."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _expire(self) -> None:
        self.expired = True
        self._call = self.clock.callLater(EXPIRY_DRAIN, self._cut)
        self.expire()

    def _cut(self) -> None:
        self._call = None
        self.cut()


def watch_own_certificate(
    clock: IReactorTime, transport: Any, drain: Callable[[], object], abort: Callable[[], object]
) -> ExpiryWatch:
    """
    The connector's side: C{drain} the connection at the notAfter of the
    certificate it presents, C{abort} it if the drain takes too long.
    """
    not_after = own_not_after(transport)

    def expire() -> None:
        assert not_after is not None
        if not_after in _reported:
            # Redialled with the same expired certificate: said already.
            log.debug("Certificate still expired; closing the new tunnel connection")
        else:
            _reported.add(not_after)
            log.warn(
                "This connector's certificate expired at {when}: closing the tunnel"
                " connection; a renewed certificate, once reloaded, is used for the next one",
                when=_utc(not_after),
            )
        drain()

    return ExpiryWatch(clock, not_after, expire, abort).start()


def watch_connector_certificate(protocol: ServiceTunnelProtocol) -> ExpiryWatch:
    """
    The service's side: at the connector certificate's notAfter, C{protocol}
    takes no new job and leaves its group; it closes once its streams are
    done, or L{EXPIRY_DRAIN} seconds later.
    """
    not_after = peer_not_after(protocol.transport)

    def expire() -> None:
        assert not_after is not None
        log.warn(
            "Certificate of connector {connector} expired at {when}: closing its tunnel connection",
            connector=protocol.connector_id,
            when=_utc(not_after),
        )
        if protocol.group is not None:
            protocol.group.connection_lost(protocol)
        protocol.close_when_idle()

    return ExpiryWatch(protocol.factory.clock, not_after, expire, protocol.abort).start()
