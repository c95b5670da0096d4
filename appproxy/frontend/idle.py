"""
What a public connection gives back once it is idle: its last request is
done and it stays open for the next one (keep-alive), maybe for minutes.

  - TLS buffers.  pyOpenSSL's memory BIOs (the connection's bytes in and
    out of OpenSSL) keep the largest buffer they ever held: OpenSSL's
    C{BUF_MEM} grows and never shrinks.  The daemons' TLS transport gives
    back what the handshake grew them to as soon as it is done; a response
    grows them again, by a few kilobytes, or far more for a download.
    When both are empty they are replaced by new, empty ones
    (L{appproxy.daemon.tls_transport.swap_empty_bios}); a BIO that still
    holds bytes is left alone.  The transport's writes held for this turn
    go first: the response is complete, nothing more would join them.
  - The channel's attributes.  CPython keeps an object's attributes in a
    table shared with the other objects of its class, up to 30 names;
    twisted.web's channels with ours have more (about 35 for HTTP/1.1, 40
    for HTTP/2), so each channel's table becomes a dict of its own, grown
    from the shared table to 128 slots (1.5 KiB).  Once the channel has the
    names it keeps, its dict is copied into one sized for them (64 slots,
    0.8 KiB); that is done again only if it grows that large again.

And the listener's own address, which a channel asks once and keeps (its
requests all ask for it), is one object for all its connections
(L{shared_address}).

Both are done once a connection has stayed idle a while, not as soon as its
last request is done: a busy keep-alive connection goes idle between every
two requests, and swapping its buffers then (two allocations and two frees
in OpenSSL, and the response's last bytes written at once rather than with
the others of the reactor's turn) only for the next request to grow them
again cost the service about 5% of its CPU under load.  The HTTP/1.1
channel (when a request is done and none waits) and the HTTP/2 connection
(when its last stream is done) call L{went_idle}; L{IdleSweep} then calls
the connection's C{settle_idle} once it has been idle from one sweep to
the next (between L{IDLE_SETTLE} and twice that), if it still is
(C{still_idle}).  A sweep is scheduled only while some connection went
idle, so a quiet service has no timer running.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = [
    "IDLE_SETTLE",
    "IdleSweep",
    "compact_attributes",
    "lost",
    "release_tls_buffers",
    "settle_idle",
    "shared_address",
    "went_idle",
]

log = Logger()

#: Seconds between two sweeps: a connection idle from one sweep to the next
#: (between this and twice this) gives back what it holds.
IDLE_SETTLE = 0.1

#: A dict of more bytes than this (128 slots or more) is worth copying; one
#: of 64 slots (up to 42 names) is about 830 bytes.
_OVERSIZED_DICT = 1024


#: The addresses connections were accepted on (few: the listeners'), by value.
_ADDRESSES: dict[Any, Any] = {}
_ADDRESSES_KEPT = 64


def shared_address(address: Any) -> Any:
    """The one object equal to C{address} (the local end of connections)."""
    try:
        shared = _ADDRESSES.get(address)
    except TypeError:  # not hashable
        return address
    if shared is None:
        if len(_ADDRESSES) >= _ADDRESSES_KEPT:
            return address
        shared = _ADDRESSES[address] = address
    return shared


def release_tls_buffers(transport: Any) -> bool:
    """
    Give back what the memory BIOs of C{transport}'s TLS connection have
    grown to, if both are empty (the daemons' TLS transport,
    L{appproxy.daemon.tls_transport.LeanTLSProtocol.release_buffers}).
    Whether they were replaced: not for another transport.
    """
    release = getattr(transport, "release_buffers", None)
    return bool(release()) if release is not None else False


def compact_attributes(obj: Any) -> bool:
    """
    Copy C{obj}'s attribute dict into one sized for what it holds, if it
    is much larger than that.  Whether it was copied.
    """
    attributes = getattr(obj, "__dict__", None)
    if type(attributes) is not dict or sys.getsizeof(attributes) <= _OVERSIZED_DICT:
        return False
    copied = dict(attributes)
    if sys.getsizeof(copied) >= sys.getsizeof(attributes):
        return False
    obj.__dict__ = copied
    return True


def settle_idle(channel: Any) -> None:
    """C{channel} (twisted.web's HTTP/1.1 or HTTP/2 one) has stayed idle: give back what it can."""
    compact_attributes(channel)
    release_tls_buffers(getattr(channel, "transport", None))


class IdleConnection(Protocol):
    """A public connection as L{IdleSweep} sees it."""

    def still_idle(self) -> bool:
        """Whether it has no request under way and is not lost."""

    def settle_idle(self) -> None:
        """It has stayed idle: give back what it holds for a request."""


class IdleSweep:
    """
    The connections that went idle, each given back what it holds once it
    has stayed idle from one sweep to the next (see the module docstring).
    """

    def __init__(self, clock: IReactorTime, settle: float = IDLE_SETTLE) -> None:
        self._clock = clock
        self._settle = settle
        #: Each connection that went idle, with the sweep it went idle before.
        self._idle: dict[IdleConnection, int] = {}
        self._sweeps = 0
        self._call: IDelayedCall | None = None

    def went_idle(self, connection: IdleConnection) -> None:
        """C{connection} has no request left (it may go on with the next at once)."""
        self._idle[connection] = self._sweeps
        if self._call is None:
            self._call = self._clock.callLater(self._settle, self._sweep)

    def forget(self, connection: IdleConnection) -> None:
        """C{connection} is lost: no timer is left running for it."""
        if self._idle.pop(connection, None) is not None and not self._idle:
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = None

    def _sweep(self) -> None:
        self._call = None
        this = self._sweeps
        self._sweeps += 1
        idle, self._idle = self._idle, {}
        for connection, since in idle.items():
            try:
                if not connection.still_idle():
                    continue  # busy again (it comes back when idle), or lost
                if since == this:
                    self._idle[connection] = since  # idle for less than a sweep
                    continue
                connection.settle_idle()
            except Exception:
                log.failure("Settling an idle connection")
        if self._idle:
            self._call = self._clock.callLater(self._settle, self._sweep)

    def __len__(self) -> int:
        return len(self._idle)


#: The sweep of each clock (the reactor's, and tests' clocks).
_SWEEPS: dict[IReactorTime, IdleSweep] = {}


def _sweep_of(clock: IReactorTime | None) -> IdleSweep:
    if clock is None:
        clock = _reactor()
    sweep = _SWEEPS.get(clock)
    if sweep is None:
        sweep = _SWEEPS[clock] = IdleSweep(clock)
    return sweep


def went_idle(connection: IdleConnection, clock: IReactorTime | None = None) -> None:
    """
    C{connection} has no request left: the sweep of C{clock} (the reactor's
    by default) settles it if it stays so.
    """
    _sweep_of(clock).went_idle(connection)


def lost(connection: IdleConnection, clock: IReactorTime | None = None) -> None:
    """C{connection} is lost: the sweep of C{clock} forgets it (L{IdleSweep.forget})."""
    sweep = _SWEEPS.get(clock if clock is not None else _reactor())
    if sweep is not None:
        sweep.forget(connection)


def _reactor() -> IReactorTime:
    from twisted.internet import reactor

    return reactor
