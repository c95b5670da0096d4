"""
twisted.web's HTTP/2 sending loop, sending up to L{FRAMES_PER_TURN} DATA
frames per turn of the reactor instead of one.

twisted.web's loop (C{H2Connection._sendPrioritisedData}) takes the next
stream from the priority tree, sends one frame of its queue, and calls
itself again on the reactor's next turn (C{callLater(0)}).  A download then
costs a turn of the reactor per 16 KiB frame (the client's
C{SETTINGS_MAX_FRAME_SIZE} is usually the default): a timer made and run,
an C{epoll} call, and a TLS record and a C{send} of 16 KiB each; the
service spent most of its CPU on that rather than on the data.

L{send_prioritised} makes the same steps, in the same order and with the
same priority, window and end-of-stream handling, but goes on to the next
frame in the same turn, up to L{FRAMES_PER_TURN} (256 KiB of 16 KiB
frames), and finds in that turn too that nothing is left to send (it waits
on its Deferred then, as twisted.web's loop does on its next turn).  The
daemons' TLS transport (L{appproxy.daemon.tls_transport}) writes the
frames of one turn as one TLS write and one C{send}.  The client is still
paced by its windows and the transport by its back pressure: the loop
stops as soon as the transport says it is full.

And it waits when a client's flow-control window is closed.  twisted.web's
loop kept the stream in its priority tree and went round again on every
turn of the reactor, sending nothing, for as long as the window stayed
closed, and restarted the idle timeout each time: one client that asked
for a large response and stopped reading held a core of the service busy
for as long as it liked.  Here such a stream leaves the priority tree;
L{window_opened}, after every read from the client, puts it back and wakes
the loop once its window opens, and the idle timeout runs meanwhile.
"""

from __future__ import annotations

from typing import Any

import priority  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred
from twisted.web._http2 import _END_STREAM_SENTINEL

__all__ = ["FRAMES_PER_TURN", "hold_for_window", "send_prioritised", "window_opened"]

#: DATA frames sent per turn of the reactor, at most.
FRAMES_PER_TURN = 16


def send_prioritised(channel: Any, frames: int = FRAMES_PER_TURN) -> None:
    """
    One turn of C{channel}'s (twisted.web's C{H2Connection}) sending loop:
    up to C{frames} frames.  Woken by a Deferred (new data, a window or
    the transport open again) inside whatever caused it, the loop sends
    one, as twisted.web's does, and the rest on its own turns.
    """
    if not channel._stillProducing:
        return
    conn = channel.conn
    queues = channel._outboundStreamQueues
    for _ in range(frames):
        try:
            stream = next(channel.priority)
        except priority.DeadlockError:
            # Nothing can be sent: wait for a stream to have data or window.
            assert channel._sendingDeferred is None
            channel._sendingDeferred = Deferred()
            channel._sendingDeferred.addCallback(channel._sendPrioritisedData)
            return
        # Wait behind the transport.
        if channel._consumerBlocked is not None:
            channel._consumerBlocked.addCallback(channel._sendPrioritisedData)
            return
        queue = queues[stream]
        frame_data = queue.popleft()
        if frame_data is _END_STREAM_SENTINEL:
            channel.resetTimeout()
            conn.end_stream(stream)
            channel.transport.write(conn.data_to_send())
            channel._requestDone(stream)
        else:
            most = min(conn.max_outbound_frame_size, conn.local_flow_control_window(stream))
            if most <= 0:
                # The client's window is closed: wait for it to open (see
                # window_opened), not for the next turn.
                queue.appendleft(frame_data)
                hold_for_window(channel, stream)
                channel.streams[stream].flowControlBlocked()
                continue
            if len(frame_data) > most:
                queue.appendleft(frame_data[most:])
                frame_data = frame_data[:most]
            if frame_data:
                channel.resetTimeout()
                conn.send_data(stream, frame_data)
                channel.transport.write(conn.data_to_send())
            if not queue:
                channel.priority.block(stream)
            if channel.remainingOutboundWindow(stream) <= 0:
                channel.streams[stream].flowControlBlocked()
        if not channel._stillProducing:
            return
    channel._reactor.callLater(0, channel._sendPrioritisedData)


def hold_for_window(channel: Any, stream: int) -> None:
    """
    C{stream} has data queued and its window is closed: out of the priority
    tree until L{window_opened} finds it open.  (twisted.web queues data
    that arrives for a closed window without waking its loop, and a
    WINDOW_UPDATE puts the stream back in the tree without waking it either:
    a loop asleep then stayed asleep, the response stalled.)
    """
    channel.priority.block(stream)
    blocked = channel._window_blocked
    if blocked is None:
        blocked = channel._window_blocked = set()
    blocked.add(stream)


def window_opened(channel: Any) -> None:
    """
    After C{channel} read frames: the streams held for a closed window that
    can send again (a WINDOW_UPDATE, or SETTINGS with a larger initial
    window) go back in the priority tree, and the loop is woken.
    """
    blocked = channel._window_blocked
    if not blocked:
        return
    conn = channel.conn
    queues = channel._outboundStreamQueues
    woken = False
    for stream in list(blocked):
        if not queues.get(stream):
            blocked.discard(stream)  # ended or reset meanwhile
        elif conn.local_flow_control_window(stream) > 0:
            blocked.discard(stream)
            channel.priority.unblock(stream)
            woken = True
    waiting = channel._sendingDeferred
    if woken and waiting is not None:
        channel._sendingDeferred = None
        waiting.callback(None)
