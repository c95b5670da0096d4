"""
What a public connection gives back once it is idle: its last request is
done and it stays open for the next one (keep-alive), maybe for minutes.

  - TLS buffers.  pyOpenSSL's memory BIOs (the connection's bytes in and
    out of OpenSSL) keep the largest buffer they ever held: OpenSSL's
    C{BUF_MEM} grows and never shrinks.  After the handshake's flight (the
    certificate chain) and a response that is a few kilobytes per idle
    connection, and after a large download far more.  When both are empty
    they are replaced by new, empty ones (C{SSL_set_bio} frees the old);
    a BIO that still holds bytes is left alone.  The bytes twisted holds
    back for a bigger TLS write (C{BufferingTLSTransport}) are written
    first: the response is complete, nothing more would join them.  And
    the bytes pyOpenSSL keeps for the protocol ALPN chose go: OpenSSL has
    its own copy since the handshake.
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

L{went_idle} does the first two; the HTTP/1.1 channel calls it when a request is
done and none waits, the HTTP/2 connection when its last stream is done.
"""

from __future__ import annotations

import sys
from typing import Any

from OpenSSL import SSL

__all__ = ["compact_attributes", "release_tls_buffers", "shared_address", "went_idle"]

try:  # pyOpenSSL's bindings (cryptography's): what a BIO swap needs.
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib

    _BIO_OK = all(
        hasattr(_lib, name) for name in ("BIO_new", "BIO_s_mem", "BIO_get_mem_data", "SSL_set_bio")
    )
except ImportError:  # pragma: no cover - another pyOpenSSL layout: keep the buffers
    _BIO_OK = False

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
    Replace the memory BIOs of C{transport}'s TLS connection (a
    C{TLSMemoryBIOProtocol}) with empty ones, if both are empty: what the
    old ones had grown to is freed.  Whether they were replaced.
    """
    if not _BIO_OK or transport is None:
        return False
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None or getattr(transport, "disconnecting", False):
        return False
    # twisted's BufferingTLSTransport holds small writes for the next turn
    # of the reactor: the response's last bytes would go into the new BIO.
    # The response is complete: they go now (the scheduled flush finds none).
    # So does the daemons' lean transport (appproxy.daemon.tls_transport)
    # for the writes of this turn.
    flush_held = getattr(transport, "flush_held", None)
    if flush_held is not None:
        flush_held()
    aggregator = getattr(transport, "_aggregator", None)
    if aggregator is not None:
        aggregator.flush()
    connection = get_handle()
    if not isinstance(connection, SSL.Connection):
        return False
    into = getattr(connection, "_into_ssl", None)
    out = getattr(connection, "_from_ssl", None)
    ssl = getattr(connection, "_ssl", None)
    if into is None or out is None or ssl is None:
        return False  # a socket-backed connection, or another pyOpenSSL
    pending = _ffi.new("char **")
    if _lib.BIO_get_mem_data(into, pending) or _lib.BIO_get_mem_data(out, pending):
        return False  # bytes still in flight: not idle at the TLS level
    new_into = _lib.BIO_new(_lib.BIO_s_mem())
    new_out = _lib.BIO_new(_lib.BIO_s_mem())
    if new_into == _ffi.NULL or new_out == _ffi.NULL:  # pragma: no cover - out of memory
        for bio in (new_into, new_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return False
    # What pyOpenSSL keeps for ALPN's answer until OpenSSL has copied it, in
    # the handshake (about 230 bytes): the handshake is long over.
    if getattr(connection, "_alpn_select_callback_args", None) is not None:
        connection._alpn_select_callback_args = None
    # The SSL object owns its BIOs: this frees the old pair.
    _lib.SSL_set_bio(ssl, new_into, new_out)
    connection._into_ssl = new_into
    connection._from_ssl = new_out
    return True


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


def went_idle(channel: Any) -> None:
    """C{channel} (twisted.web's HTTP/1.1 or HTTP/2 one) has no request left."""
    compact_attributes(channel)
    release_tls_buffers(getattr(channel, "transport", None))
