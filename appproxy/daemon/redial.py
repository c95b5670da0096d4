"""
The connector's redialling: when a tunnel connection counts as made, how
long to wait after a failure, and what the operator is told.

L{ClientService} counts a connection as made when TCP connects, and resets
its backoff then: a service that refuses our TLS (wrong name, unknown CA, a
refused certificate) would be redialled at the first delay for ever, and
nobody told why.  Here:

  - L{Redial}, the retry policy of one L{ClientService}, keeps its own count
    of failures, reset only when a tunnel is I{established}: TLS done and
    the service's HTTP/2 preface and SETTINGS received (the service sends
    nothing before it has accepted our certificate);
  - L{DialReport} logs why connections fail, once per distinct reason until a
    tunnel is established again;
  - L{watched_factory} wraps the tunnel factory to tell both.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from appproxy.daemon.tls_failures import CA_HINT, describe_tunnel_failure

__all__ = ["DialReport", "Redial", "watched_factory"]

#: What the service (the HTTP/2 client) sends first: the connection preface,
#: then a SETTINGS frame (9-byte header, type 4).
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS_TYPE = 4


@attrs.define(eq=False)
class Redial:
    """
    A L{ClientService} retry policy: exponential backoff with jitter over
    the failures since the last established tunnel (not since the last TCP
    connection, which is what the C{attempt} given counts).
    """

    initial: float
    maximum: float
    factor: float = 2.0
    jitter: Callable[[], float] = random.random
    failures: int = attrs.field(init=False, default=0)

    def __call__(self, attempt: int) -> float:
        """The delay before the next attempt: between 0.8 and 1.2 times
        C{initial * factor ** (failures - 1)}, at most C{maximum} times 1.2."""
        self.failures += 1
        base = min(self.initial * self.factor ** min(self.failures - 1, 64), self.maximum)
        return float(base * (0.8 + 0.4 * self.jitter()))

    def established(self) -> None:
        self.failures = 0


#: What L{DialReport} says by default: of tunnel connections.
TUNNEL_FAILED = "Tunnel connection to {service} failed: {reason}; retrying with backoff"
TUNNEL_ESTABLISHED = "Tunnel connection to {service} established"


@attrs.define(eq=False)
class DialReport:
    """
    Tells the operator why tunnel connections fail: each distinct reason
    once, until a tunnel is established again.  With other messages, the
    same for other calls to the service (the connector's configuration
    pull, its renewal).
    """

    log: Logger
    service: str
    """The service, as the log names it (host:port)."""
    service_host: str
    failed_message: str = TUNNEL_FAILED
    """Logged once per reason (a format over C{service} and C{reason})."""
    established_message: str | None = TUNNEL_ESTABLISHED
    """Logged when it works again after failures (over C{service}), if given."""
    error: bool = False
    """Failures are logged as errors (else as warnings)."""
    ca_hint: str = CA_HINT
    """Where an untrusted service certificate sends the operator (L{describe_tls_failure})."""
    refused: Callable[[], object] | None = None
    """Called when the service closed a connection before the tunnel was set
    up (its registry refused the certificate: the connector asks why)."""
    reported: set[str] = attrs.field(init=False, factory=set)

    def failed(self, description: str) -> None:
        if description in self.reported:
            return
        if len(self.reported) >= 64:
            self.reported.clear()
        self.reported.add(description)
        (self.log.error if self.error else self.log.warn)(
            self.failed_message, service=self.service, reason=description
        )

    def connection_failed(self, reason: Failure) -> None:
        """TCP did not connect (refused, unreachable, no such host)."""
        self.failed(f"cannot connect: {reason.getErrorMessage().rstrip('.')}")

    def lost_before_tunnel(self, reason: Failure, connection: Any) -> None:
        self.failed(describe_tunnel_failure(reason, connection, self.service_host, self.ca_hint))
        if self.refused is not None and reason.check(ConnectionDone, ConnectionLost):
            self.refused()

    def established(self) -> None:
        if self.reported and self.established_message is not None:
            self.log.info(self.established_message, service=self.service)
        self.reported.clear()


class _Watched:
    """
    Stands between the TLS layer and one tunnel protocol, watching for the
    tunnel to be established or the connection to fail first.  The protocol
    gets the TLS transport itself; everything else is forwarded.
    """

    def __init__(self, protocol: IProtocol, redial: Redial, report: DialReport) -> None:
        self._protocol = protocol
        self._redial = redial
        self._report = report
        self._received = b""
        self._established = False
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self._protocol.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self._protocol.dataReceived(data)
        if not self._established:
            self._received = (self._received + data)[: len(_PREFACE) + 9]
            if (
                len(self._received) == len(_PREFACE) + 9
                and self._received.startswith(_PREFACE)
                and self._received[-6] == _SETTINGS_TYPE
                and not getattr(self.transport, "disconnecting", False)
            ):
                self._established = True
                self._received = b""
                self._redial.established()
                self._report.established()
                # Out of the hot path from now on: the TLS layer's calls go
                # straight to the tunnel protocol (nothing is left to watch
                # here, and connectionLost only forwards once established).
                vars(self)["dataReceived"] = self._protocol.dataReceived

    def connectionLost(self, reason: Failure) -> None:
        try:
            if not self._established:
                # Still there: TLS forgets its connection only afterwards.
                handle = getattr(self.transport, "getHandle", lambda: None)()
                self._report.lost_before_tunnel(reason, handle)
        except Exception:
            self._report.log.failure("Reporting a failed tunnel connection")
        finally:
            self._protocol.connectionLost(reason)

    def __getattr__(self, name: str) -> Any:
        # Interfaces too (zope reads __providedBy__): TLS asks whether the
        # protocol is an IHandshakeListener.
        protocol = self.__dict__.get("_protocol")
        if protocol is None:
            raise AttributeError(name)
        return getattr(protocol, name)


@implementer(IProtocolFactory)
class _WatchedFactory:
    def __init__(self, factory: Any, redial: Redial, report: DialReport) -> None:
        self.factory = factory
        self.redial = redial
        self.report = report

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        protocol = self.factory.buildProtocol(addr)
        if protocol is None:
            return None
        watched: IProtocol = _Watched(protocol, self.redial, self.report)  # type: ignore[assignment]
        return watched

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def __getattr__(self, name: str) -> Any:
        factory = self.__dict__.get("factory")
        if factory is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(factory, name)


def watched_factory(factory: Any, redial: Redial, report: DialReport) -> IProtocolFactory:
    """C{factory}, its connections reporting to C{redial} and C{report}."""
    return _WatchedFactory(factory, redial, report)
