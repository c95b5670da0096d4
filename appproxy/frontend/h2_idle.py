"""
What an HTTP/2 client connection keeps while idle, smaller: objects every
connection had its own copy of, though they hold the same for all, are
shared; what it keeps waiting for its next response is lighter.

  - h2's L{H2Configuration} (and its logger): twisted.web makes one per
    connection, all alike once the guard has set them up
    (L{appproxy.frontend.h2_guard}); a connection whose configuration is
    the usual one takes the shared one.  The guard's temporary switch for one
    header block (C{writeHeaders}) is undone before it returns, so sharing
    it is safe in the reactor's one thread.
  - hpack's Huffman coder: a table lookup with no state, one per encoder.
  - The stream scheduler (L{appproxy.frontend.h2_schedule.RoundRobin},
    about 250 bytes with its dict and list) holds no stream while idle: a
    small stand-in (L{_IdleTree}) takes its place, and a new scheduler its
    own at the next stream (a new one is what an idle one is: empty).
  - twisted.web's sending loop waits for the next response on a
    L{Deferred} (about 500 bytes with its callback).  When the connection
    goes idle a small object that runs the loop the same way when called
    (L{_Wake}) takes its place.
  - The connection's attribute dict: twisted.web's, h2's and the guard's
    attributes come to about 35, and CPython gives 22 to 42 entries a table
    of 832 bytes, 464 below that.  Many hold, while idle, a value that is
    the same for every connection (a count at zero, a flag down, a limit as
    configured by default, a full token bucket, the reactor's
    C{callLater}): L{IdleDefaults} holds those values on the class, and the
    instance's own copy is dropped when it is the same (set again, it is
    the instance's again).  A full bucket's time of last refill is dropped
    too: a bucket refills up to its burst and no further, so from full it
    does not matter when that was.
"""

from __future__ import annotations

from typing import Any

from h2.config import DummyLogger, H2Configuration
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from appproxy.config.model import ClientLimits
from appproxy.frontend.h2_schedule import RoundRobin
from appproxy.frontend.idle import settle_idle

__all__ = ["IdleDefaults", "h2_settle_idle", "h2_still_idle", "share_h2_parts"]

_LIMITS = ClientLimits()

log = Logger()

#: hpack's Huffman coder, shared by all encoders (it keeps no state).
_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)

#: The configuration the public HTTP/2 connections share, once one is set up.
_shared_config: H2Configuration | None = None


def _config_state(config: H2Configuration) -> dict[str, Any] | None:
    """C{config}'s settings, without its logger; L{None} if its logger is not h2's quiet one."""
    state = dict(vars(config))
    if type(state.pop("logger", None)) is not DummyLogger:
        return None
    return state


def share_h2_parts(conn: Any) -> None:
    """Give C{conn} (h2's connection, set up by the guard) the shared parts."""
    global _shared_config
    encoder: Any = getattr(conn, "encoder", None)
    if type(getattr(encoder, "huffman_coder", None)) is HuffmanEncoder:
        encoder.huffman_coder = _HUFFMAN
    config = conn.config
    state = _config_state(config)
    if state is None:
        return
    if _shared_config is None:
        _shared_config = config
    elif state == _config_state(_shared_config):
        conn.config = _shared_config


class _Wake:
    """
    What twisted.web's sending loop waits on while a connection is idle, in
    place of its L{Deferred}: C{callback} runs the loop, as the Deferred's
    one callback would.
    """

    __slots__ = ("_channel",)

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def callback(self, result: Any) -> None:
        try:
            self._channel._sendPrioritisedData(result)
        except Exception:
            # The Deferred would have logged it as an unhandled error.
            log.failure("HTTP/2 sending loop")


def _lighter_wait(channel: Any) -> None:
    # twisted.web makes this Deferred in one place only, with the loop as
    # its one callback (C{H2Connection._sendPrioritisedData}).
    waiting = getattr(channel, "_sendingDeferred", None)
    if type(waiting) is Deferred and not waiting.called:
        channel._sendingDeferred = _Wake(channel)


class _IdleTree:
    """
    An idle connection's stream scheduler: at its first use the connection
    gets a new L{RoundRobin}, which does what was asked.
    """

    __slots__ = ("_channel",)

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def _tree(self) -> RoundRobin:
        tree = self._channel.priority = RoundRobin()
        return tree

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tree(), name)

    def __iter__(self) -> RoundRobin:
        return self._tree()

    def __next__(self) -> int:
        return next(self._tree())


def _idle_tree(channel: Any) -> None:
    tree = getattr(channel, "priority", None)
    if type(tree) is RoundRobin and not tree:
        channel.priority = _IdleTree(channel)  # no stream


class _ReactorCallLater:
    """C{callLater} of a connection that holds none of its own: its reactor's."""

    def __get__(self, channel: Any, owner: type | None = None) -> Any:
        if channel is None:
            return self
        return channel._reactor.callLater


class IdleDefaults:
    """
    The values that a public HTTP/2 connection's attributes most often hold
    while it is idle, on the class (see the module docstring): the guard's
    connection class takes them first, before twisted.web's.
    """

    _bufferedControlFrameBytes = 0
    _consumerBlocked: Any = None
    _stillProducing = True
    _maxBufferedControlFrameBytes = 1024 * 17  # twisted.web's
    _resetTokenBurst = _LIMITS.h2_reset_burst
    _resetTokenRate: Any = _LIMITS.h2_reset_rate
    _empty_burst = _LIMITS.h2_empty_data_burst
    _empty_rate = _LIMITS.h2_empty_data_rate
    _corked = False
    _flooded = False
    _ending = 0
    _ended = 0
    _header_timer: Any = None
    _body_timer: Any = None
    site = None  # twisted.web's
    # Token buckets, full (when they were last refilled does not matter then).
    _resetTokens = _LIMITS.h2_reset_burst
    _resetTokenTimestamp = 0.0
    _empty_tokens = float(_LIMITS.h2_empty_data_burst)
    _empty_tokens_at = 0.0
    callLater: Any = _ReactorCallLater()


#: The token buckets: tokens, burst, time of the last refill.
_BUCKETS = (
    ("_resetTokens", "_resetTokenBurst", "_resetTokenTimestamp"),
    ("_empty_tokens", "_empty_burst", "_empty_tokens_at"),
)

#: The attributes L{IdleDefaults} holds a value for, dropped when the
#: instance holds the same (a bucket's time: when the bucket is full).
_DEFAULTED = tuple(
    name
    for name in vars(IdleDefaults)
    if not name.startswith("__")
    and name != "callLater"
    and name not in {stamp for _, _, stamp in _BUCKETS}
)

_MISSING = object()


def _drop_defaults(channel: Any) -> None:
    """Drop C{channel}'s own attributes that hold what its class holds."""
    attributes = getattr(channel, "__dict__", None)
    if type(attributes) is not dict:
        return
    cls = type(channel)
    for tokens, burst, stamp in _BUCKETS:
        if stamp in attributes and getattr(channel, tokens) >= getattr(channel, burst):
            del attributes[stamp]  # full: when it was last refilled does not matter
    for name in _DEFAULTED:
        value = attributes.get(name, _MISSING)
        if value is not _MISSING:
            default = getattr(cls, name, _MISSING)
            if type(value) is type(default) and value == default:
                del attributes[name]
    if attributes.get("_window_blocked", None) == set():
        del attributes["_window_blocked"]  # the class holds None: no stream waits
    call_later = attributes.get("callLater")
    reactor = attributes.get("_reactor")
    if call_later is not None and call_later == getattr(reactor, "callLater", None):
        del attributes["callLater"]


def h2_still_idle(channel: Any) -> bool:
    """Whether C{channel} (twisted.web's HTTP/2 connection) has no stream and is not lost."""
    return not channel.streams and bool(channel._stillProducing)


def h2_settle_idle(channel: Any) -> None:
    """C{channel} (twisted.web's HTTP/2 connection) has had no stream for a while."""
    # A dict keeps the table it grew to: with no stream left, start afresh
    # (an empty dict costs nothing).
    channel.streams = {}
    channel._outboundStreamQueues = {}
    channel._streamCleanupCallbacks = {}
    if not channel.conn.streams:
        channel.conn.streams = {}
    _lighter_wait(channel)
    _idle_tree(channel)
    _drop_defaults(channel)
    settle_idle(channel)
