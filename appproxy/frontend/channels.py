"""
The public listener's protocol: twisted.web's HTTP/1.1 or HTTP/2 (by ALPN),
each held to a stricter reading of the protocol than twisted.web's own.

  - L{StrictHTTPChannel} (HTTP/1.1, RFC 9112): at most 100 header lines and
    16 KiB of header block; an over-long line gets a 400 like too many header
    bytes (LineReceiver would just drop the connection); a line folded onto
    the previous one (obs-fold: a line starting with a space or a tab) gets a
    400 and a closed connection instead of being joined, as RFC 9112 section
    5.2 allows a server to do, because other servers read it differently.
  - L{appproxy.frontend.h2_guard.GuardedH2Connection} (HTTP/2): a bound on
    empty DATA frames.

twisted.web picks its HTTP/2 connection class itself once ALPN says h2
(C{_GenericHTTPChannelProtocol.dataReceived}); L{ProxyChannelProtocol} lets
it, then makes the new connection a guarded one before the first byte of
HTTP/2 reaches it.
"""

from __future__ import annotations

from typing import cast

from twisted.web._http2 import H2Connection
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol

from appproxy.frontend.h2_guard import GuardedH2Connection

__all__ = ["ProxyChannelProtocol", "StrictHTTPChannel", "proxy_channel_protocol"]


class StrictHTTPChannel(HTTPChannel):
    """twisted.web's HTTP/1.1 channel, stricter about the header block."""

    maxHeaders = 100
    totalHeadersSize = 16384

    def lineReceived(self, line: bytes) -> None:
        # No request line or header line starts with whitespace: in the
        # header block that is obs-fold, which twisted.web would join to
        # the previous line.
        if line[:1] in (b" ", b"\t"):
            self._respondToBadRequestAndDisconnect()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect()


class ProxyChannelProtocol(_GenericHTTPChannelProtocol):
    """
    twisted.web's HTTP/1.1-or-HTTP/2 protocol, whose HTTP/2 connection is a
    L{GuardedH2Connection}.
    """

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None:
            # Let twisted.web choose (and set up) the channel for what ALPN
            # said, then guard it before it parses anything.
            super().dataReceived(b"")
            channel = self._channel
            if type(channel) is H2Connection:
                channel.__class__ = GuardedH2Connection
                cast(GuardedH2Connection, channel).start_guard()
        super().dataReceived(data)


def proxy_channel_protocol(factory: object) -> ProxyChannelProtocol:
    """The public listener's protocol (an C{HTTPFactory}'s C{protocol})."""
    return ProxyChannelProtocol(StrictHTTPChannel())
