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
  - twisted.web's priority tree (about 450 bytes with its root stream)
    holds no stream while idle: a small stand-in (L{_IdleTree}) takes its
    place, and a new tree its own at the next stream (a new tree is what
    an idle one is: its root alone).
  - twisted.web's sending loop waits for the next response on a
    L{Deferred} (about 500 bytes with its callback).  When the connection
    goes idle a small object that runs the loop the same way when called
    (L{_Wake}) takes its place.
"""

from __future__ import annotations

from typing import Any

from h2.config import DummyLogger, H2Configuration
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from priority import PriorityTree  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from appproxy.frontend.idle import settle_idle

__all__ = ["h2_settle_idle", "h2_still_idle", "share_h2_parts"]

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
    An idle connection's priority tree: at its first use the connection
    gets a new L{PriorityTree}, which does what was asked.
    """

    __slots__ = ("_channel",)

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def _tree(self) -> PriorityTree:
        tree = self._channel.priority = PriorityTree()
        return tree

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tree(), name)

    def __iter__(self) -> PriorityTree:
        return self._tree()

    def __next__(self) -> int:
        return next(self._tree())


def _idle_tree(channel: Any) -> None:
    tree = getattr(channel, "priority", None)
    if type(tree) is PriorityTree and len(getattr(tree, "_streams", ())) == 1:
        channel.priority = _IdleTree(channel)  # its root stream alone


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
    settle_idle(channel)
