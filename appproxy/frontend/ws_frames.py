"""
Frame boundaries in the app's byte stream to a WebSocket client, so that the
service can put a close frame of its own between two of the app's frames
(a control frame may come between the fragments of a message, RFC 6455
section 5.4, but never inside a frame).

The bytes are read by wsproto's frame parser (C{FrameDecoder}, the frame
layer of its C{FrameProtocol}), never by a codec of our own.  Not its
message layer: that one checks the UTF-8 of text messages, which it cannot
do for a message compressed by C{permessage-deflate} (the extension browsers
offer by default); the frames themselves are all this needs, and every
reserved bit is let through for whatever extension the app and the client
agreed on.  Bytes that are not WebSocket frames make the boundary unknown
for good: the service then closes without a close frame.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

from wsproto.extensions import Extension
from wsproto.frame_protocol import (
    CloseReason,
    FrameDecoder,
    FrameProtocol,
    Opcode,
    ParseFailed,
    RsvBits,
)

__all__ = ["GOING_AWAY", "POLICY_VIOLATION", "FrameBoundaries", "close_frame"]

#: Close codes the service sends (RFC 6455 7.4.1): the session ended; the
#: service, the tunnel or the app's connector going away (or an idle timeout).
POLICY_VIOLATION = int(CloseReason.POLICY_VIOLATION)
GOING_AWAY = int(CloseReason.GOING_AWAY)


class _AnyExtension(Extension):
    """Whatever extension the app and the client agreed on: any reserved bit."""

    name = "appproxy-any"

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:  # never offered: this end takes part in no handshake
        return False

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> RsvBits:
        return RsvBits(True, True, True)


def close_frame(code: int = POLICY_VIOLATION, reason: str = "session ended") -> bytes:
    """A close frame from the server (unmasked), by wsproto; C{reason} at most 123 bytes."""
    return bytes(FrameProtocol(client=False, extensions=[]).close(code, reason))


class FrameBoundaries:
    """
    Reads the server-to-client (or client-to-server) frames of one WebSocket
    and says whether the bytes so far end between two frames, and whether a
    close frame passed.
    """

    def __init__(self, *, from_client: bool = False) -> None:
        # The client's frames are masked, the server's are not.
        self._decoder = FrameDecoder(client=not from_client, extensions=[_AnyExtension()])
        #: The bytes were not WebSocket frames: no boundary is known any more.
        self.lost = False
        #: The code of the first close frame read (1005: it had none).
        self.close_code: int | None = None

    @property
    def at_boundary(self) -> bool:
        """Whether the bytes read so far end exactly after a whole frame."""
        decoder = self._decoder
        return not self.lost and decoder.header is None and len(decoder.buffer) == 0

    def feed(self, data: bytes, *, stop_at_boundary: bool = False) -> int:
        """
        Read C{data}; how many of its bytes were read: all of them, or with
        C{stop_at_boundary} those up to the first frame boundary in it (the
        rest is then left unread: the caller stops the stream there).
        """
        if self.lost or not data:
            return len(data)
        if stop_at_boundary and self.at_boundary:
            return 0
        decoder = self._decoder
        decoder.receive_bytes(data)
        try:
            while (frame := decoder.process_buffer()) is not None:
                if frame.opcode is Opcode.CLOSE and self.close_code is None:
                    # A control frame comes whole: its payload starts with the code.
                    payload = frame.payload
                    assert isinstance(payload, bytes)  # the frame layer: raw payload
                    self.close_code = 1005 if len(payload) < 2 else int.from_bytes(payload[:2])
                if stop_at_boundary and frame.frame_finished:
                    return len(data) - len(decoder.buffer)
        except ParseFailed:
            self.lost = True
        return len(data)
