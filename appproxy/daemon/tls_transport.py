"""
The daemons' TLS transport: Twisted's C{TLSMemoryBIOProtocol} with a lean
data path.

Twisted's transport (C{BufferingTLSTransport}, what C{TLSMemoryBIOFactory}
builds) moves every record through pyOpenSSL's wrappers: a fresh 32 KiB
buffer and a C{WantReadError} raised and caught at the end of every read
loop and of every drain of the outgoing BIO, three helper checks per call,
and one C{callLater(0)} per connection per turn to join small writes.
L{LeanTLSProtocol} keeps all of that transport's behaviour (the handshake,
verification, shutdown, abort, producers, C{getPeerCertificate},
C{negotiatedProtocol} are its own, unchanged) and replaces only the steady
data path:

  - received bytes go into the BIO and records are read out with OpenSSL's
    calls directly, into one shared buffer, until C{SSL_read} says it wants
    more (an error code, not an exception); anything but that goes through
    pyOpenSSL's own error translation, so failures are the same exceptions
    as before;
  - writes made during a turn of the reactor are held and joined: one
    C{SSL_write} and one write to the TCP transport per connection per turn
    (at most L{MAX_HELD} bytes held), flushed when the daemons' reactor is
    about to poll (L{appproxy.daemon.reactor}) or, on another reactor, by one
    C{callLater(0)} for all connections of the factory;
  - the outgoing BIO is drained with C{BIO_read} into the shared buffer;
  - the memory BIOs the handshake grew are given back as soon as it is
    done (L{swap_empty_bios}, once the first bytes after it are out).

L{LeanTLSFactory} is a C{TLSMemoryBIOFactory} that builds it; L{lean_client_tls}
is C{wrapClientTLS} with it.  With a pyOpenSSL whose connections lack the
attributes used here, the factory builds Twisted's transport instead; a connection that is not
pyOpenSSL's own C{Connection} (a subclass, a test's stand-in) goes through
Twisted's path, which calls its methods.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["MAX_HELD", "LeanTLSFactory", "LeanTLSProtocol", "lean_client_tls", "swap_empty_bios"]

#: Bytes a connection holds during a turn before it writes them at once.
MAX_HELD = 64_000

#: The shared buffer records are read into and the outgoing BIO drained
#: into (the reactor's thread only; its bytes are copied out at once).
_BUFSIZE = 65_536
_BUF = ffi.new("char[]", _BUFSIZE)

_SSL_read = lib.SSL_read
_SSL_write = lib.SSL_write
_SSL_get_error = lib.SSL_get_error
_BIO_read = lib.BIO_read
_BIO_write = lib.BIO_write
_WANT_READ = lib.SSL_ERROR_WANT_READ
_from_buffer = ffi.from_buffer
_BIO_new = lib.BIO_new
_BIO_s_mem = lib.BIO_s_mem
_BIO_free = lib.BIO_free
_BIO_get_mem_data = lib.BIO_get_mem_data
_SSL_set_bio = lib.SSL_set_bio
_NULL = ffi.NULL
#: The lean path is taken for pyOpenSSL's own connections only (a test's
#: stand-in, or a subclass, gets Twisted's path through its methods).
_Connection = SSL.Connection
_buffer = ffi.buffer


def _lean_supported() -> bool:
    """Whether pyOpenSSL's connections have what the lean path reads."""
    try:
        connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        return all(hasattr(connection, name) for name in ("_ssl", "_into_ssl", "_from_ssl")) and (
            callable(getattr(connection, "_raise_ssl_error", None))
        )
    except Exception:
        return False


def swap_empty_bios(connection: SSL.Connection) -> bool:
    """
    Replace the memory BIOs of C{connection} with new, empty ones if both
    are empty: what the old ones had grown to is freed.  Whether they were
    replaced.

    A memory BIO keeps the largest buffer it ever held (OpenSSL's
    C{BUF_MEM} grows and never shrinks): the handshake's flight with the
    certificate chain, a response, a whole download's worth of records.
    A BIO that still holds bytes is left alone.
    """
    into = getattr(connection, "_into_ssl", None)
    out = getattr(connection, "_from_ssl", None)
    ssl = getattr(connection, "_ssl", None)
    if into is None or out is None or ssl is None:
        return False  # a socket-backed connection, or another pyOpenSSL
    if _BIO_get_mem_data(into, _NULL) or _BIO_get_mem_data(out, _NULL):
        return False  # bytes still in flight
    new_into = _BIO_new(_BIO_s_mem())
    new_out = _BIO_new(_BIO_s_mem())
    if new_into == _NULL or new_out == _NULL:  # pragma: no cover - out of memory
        for bio in (new_into, new_out):
            if bio != _NULL:
                _BIO_free(bio)
        return False
    # What pyOpenSSL keeps for ALPN's answer until OpenSSL has copied it, in
    # the handshake (about 230 bytes): the handshake is over.
    if getattr(connection, "_alpn_select_callback_args", None) is not None:
        connection._alpn_select_callback_args = None
    # The SSL object owns its BIOs: this frees the old pair.
    _SSL_set_bio(ssl, new_into, new_out)
    connection._into_ssl = new_into
    connection._from_ssl = new_out
    return True


class _Turn:
    """
    The connections of one factory with writes held in this turn, and
    those whose handshake ended in it (their BIOs are given back once
    this turn's writes are out).
    """

    __slots__ = ("_defer", "fresh", "held")

    def __init__(self, clock: Any) -> None:
        self.held: list[LeanTLSProtocol] = []
        self.fresh: list[LeanTLSProtocol] = []
        before_poll = getattr(clock, "call_before_poll", None)
        if before_poll is not None:
            self._defer: Callable[[Callable[[], None]], object] = before_poll
        else:
            self._defer = lambda flush: clock.callLater(0, flush)

    def hold(self, protocol: LeanTLSProtocol) -> None:
        if not self.held and not self.fresh:
            self._defer(self.flush)
        self.held.append(protocol)

    def handshake_done(self, protocol: LeanTLSProtocol) -> None:
        if not self.held and not self.fresh:
            self._defer(self.flush)
        self.fresh.append(protocol)

    def flush(self) -> None:
        held, self.held = self.held, []
        for protocol in held:
            protocol.flush_held()
        fresh, self.fresh = self.fresh, []
        for protocol in fresh:
            protocol.give_back_handshake()


class LeanTLSProtocol(TLSMemoryBIOProtocol):
    """A C{TLSMemoryBIOProtocol} with a lean data path (see the module doc)."""

    factory: LeanTLSFactory

    def __init__(
        self,
        factory: LeanTLSFactory,
        wrappedProtocol: IProtocol,
        _connectWrapped: bool = True,
    ) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._held: list[bytes] = []
        self._held_bytes = 0

    # -- writing ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            data = bytes(data)  # a str fails here, as before; a bytearray is copied
        held = self._held
        if not held:
            self.factory.turn.hold(self)
        held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > MAX_HELD:
            self.flush_held()

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def flush_held(self) -> None:
        """Write what this turn's writes held, through TLS, at once."""
        held = self._held
        if not held:
            return
        self._held = []
        self._held_bytes = 0
        TLSMemoryBIOProtocol.write(self, held[0] if len(held) == 1 else b"".join(held))

    def release_buffers(self) -> bool:
        """
        Give back what the memory BIOs have grown to (L{swap_empty_bios}),
        this turn's writes sent first.  Whether they were replaced: not if
        bytes are still in flight, or the connection is closing.
        """
        if self.disconnecting or self._lostTLSConnection:
            return False
        self.flush_held()
        connection = self._tlsConnection
        return type(connection) is _Connection and swap_empty_bios(connection)

    def give_back_handshake(self) -> None:
        """
        The handshake ended in this turn, whose writes are out: give back
        what its flights grew the BIOs to.  (Bytes still in flight, a
        record half received, keep them: an idle public connection's sweep
        gives them back later, L{appproxy.frontend.idle}.)
        """
        connection = self._tlsConnection
        if not (self.disconnecting or self._lostTLSConnection) and type(connection) is _Connection:
            swap_empty_bios(connection)

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        if type(connection) is not _Connection:
            super()._write(data)
            return
        ssl = connection._ssl
        total = len(data)
        pointer = _from_buffer(data)
        sent = 0
        while sent < total:
            result = _SSL_write(ssl, pointer + sent, total - sent)
            if result > 0:
                sent += result
                continue
            if _SSL_get_error(ssl, result) == _WANT_READ:
                if sent:
                    self._flushSendBIO()
                self._bufferedWrite(data[sent:])
                return
            try:
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                if sent:
                    self._flushSendBIO()
                self._bufferedWrite(data[sent:])
            except SSL.Error:
                # As Twisted's: the error goes to the protocol's connectionLost.
                self._tlsShutdownFinished(Failure())
            return
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        connection = self._tlsConnection
        if type(connection) is not _Connection:
            super()._flushSendBIO()
            return
        bio = connection._from_ssl
        count = _BIO_read(bio, _BUF, _BUFSIZE)
        if count <= 0:
            return
        data = _buffer(_BUF, count)[:]
        if count == _BUFSIZE:
            chunks = [data]
            while count == _BUFSIZE:
                count = _BIO_read(bio, _BUF, _BUFSIZE)
                if count > 0:
                    chunks.append(_buffer(_BUF, count)[:])
            data = b"".join(chunks)
        self.transport.write(data)  # type: ignore[union-attr]

    # -- reading ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        connection = self._tlsConnection
        if type(connection) is not _Connection:
            super().dataReceived(data)
            return
        if not data or _BIO_write(connection._into_ssl, data, len(data)) != len(data):
            connection.bio_write(data)  # pyOpenSSL's own errors
        if not self._handshakeDone:
            self._checkHandshakeStatus()
            if not self._handshakeDone:
                return
            self.factory.turn.handshake_done(self)
        if self._appSendBuffer:
            self._unbufferPendingWrites()
        self._flushReceiveBIO()

    def _flushReceiveBIO(self) -> None:
        while not self._lostTLSConnection:
            connection = self._tlsConnection
            if type(connection) is not _Connection:
                super()._flushReceiveBIO()
                return
            ssl = connection._ssl
            result = _SSL_read(ssl, _BUF, _BUFSIZE)
            if result > 0:
                data = _buffer(_BUF, result)[:]
                if not self._aborted:
                    self.wrappedProtocol.dataReceived(data)
                continue
            if _SSL_get_error(ssl, result) == _WANT_READ:
                break
            try:
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # As Twisted's: TLS shut down; the reason comes from TCP.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                break
        self._flushSendBIO()

    # -- the connection's end --------------------------------------------

    def loseConnection(self) -> None:
        self.flush_held()
        super().loseConnection()

    def abortConnection(self) -> None:
        self._held = []
        self._held_bytes = 0
        super().abortConnection()

    def unregisterProducer(self) -> None:
        # What was written before goes out before any close_notify.
        self.flush_held()
        super().unregisterProducer()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._held = []
        self._held_bytes = 0
        super().connectionLost(reason)


class LeanTLSFactory(TLSMemoryBIOFactory):
    """A C{TLSMemoryBIOFactory} building L{LeanTLSProtocol}."""

    protocol = LeanTLSProtocol if _lean_supported() else BufferingTLSTransport

    @cached_property
    def turn(self) -> _Turn:
        """The connections with writes held in this turn."""
        return _Turn(self._clock)


@implementer(IStreamClientEndpoint)
class _LeanClientTLS:
    def __init__(self, creator: Any, endpoint: IStreamClientEndpoint) -> None:
        self._creator = creator
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = LeanTLSFactory(self._creator, True, protocolFactory)
        connecting: Deferred[Any] = self._endpoint.connect(factory)
        return connecting.addCallback(lambda protocol: protocol.wrappedProtocol)


def lean_client_tls(creator: Any, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
    """C{wrapClientTLS(creator, endpoint)}, with L{LeanTLSFactory}."""
    return _LeanClientTLS(creator, endpoint)
