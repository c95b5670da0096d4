"""
The daemons' text log observer: the same lines as the observer twistd makes
for C{--logfile} (or standard output with C{--nodaemon}), at less cost per
event, which matters for the access log's line per request:

  - the timestamp is formatted once per second, not per event (the same
    text: C{twisted.logger.formatTime}'s, asked once for each second);
  - the lines of a L{LineLogger} (the access log) are written as they are,
    not parsed as a format, and buffered: written out at most
    L{FLUSH_INTERVAL} seconds later, when any other event is logged (in
    order, before it), when the reactor shuts down, and at exit;
  - every other event is formatted by twisted's own classic formatter and
    written out at once, as before.

L{text_observer} makes it from twistd's own options (the ones that choose
where twistd logs); when they name an observer of their own (C{--logger},
C{--syslog}) it leaves the choice to twistd.
"""

from __future__ import annotations

import atexit
import signal
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.compat import ioType
from twisted.python.logfile import LogFile
from zope.interface import implementer

from appproxy.observe.lines import LineLogger, line_of

__all__ = ["FLUSH_INTERVAL", "TextLogObserver", "text_observer"]

#: Longest a buffered access log line waits before it is written out (s).
FLUSH_INTERVAL = 0.1
#: Within a second, how far a time may be and still show that second: beyond
#: it, rounded to microseconds, it may show the next one.
_LAST_SAFE = 0.999999


@implementer(ILogObserver)
class TextLogObserver:
    """
    Writes the events to C{out} as C{twisted.logger.textFileLogObserver}
    does, its timestamps cached per second, L{LineLogger} lines buffered.
    """

    def __init__(self, out: IO[Any], reactor: Any = None) -> None:
        self._out = out
        self._encoding = None if ioType(out) is str else "utf-8"
        self._reactor = reactor
        self._second = -1
        self._stamp = ""
        self._buffer: list[str] = []
        self._flush_call: IDelayedCall | None = None

    # -- formatting ---------------------------------------------------------------

    def _time(self, when: float | None) -> str:
        """C{formatTime(when)}, asked once per second."""
        if when is None or when < 0:
            return formatTime(when, timeFormatRFC3339)
        second = int(when)
        if when - second >= _LAST_SAFE:
            # Just below a second, datetime's rounding to microseconds may
            # make it the next one: formatted as it comes, not cached.
            return formatTime(when, timeFormatRFC3339)
        if second != self._second:
            self._second, self._stamp = second, formatTime(when, timeFormatRFC3339)
        return self._stamp

    def _format(self, event: LogEvent) -> str | None:
        return formatEventAsClassicLogText(event, formatTime=self._time)

    # -- writing ------------------------------------------------------------------

    def __call__(self, event: LogEvent) -> None:
        format, system = event.get("log_format"), event.get("log_system")
        if (
            event.get("log_logger").__class__ is LineLogger
            and isinstance(system, str)
            and isinstance(format, str)
            and format
            and "log_failure" not in event
        ):
            line = f"{self._time(event.get('log_time'))} [{system}] {line_of(format)}"
            self._buffer.append(line.replace("\n", "\n\t") + "\n")
            self._flush_soon()
            return
        text = self._format(event)
        if self._buffer:
            self._write("".join(self._buffer))
            del self._buffer[:]
        if text:
            self._write(text)
        self._out.flush()

    def _write(self, text: str) -> None:
        if self._encoding is None:
            self._out.write(text)
        else:
            self._out.write(text.encode(self._encoding))

    def _flush_soon(self) -> None:
        if self._flush_call is not None:
            return
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        if not getattr(reactor, "running", True):
            # Before the reactor runs and after it stopped: at once.
            self.flush()
            return
        self._flush_call = IReactorTime(reactor).callLater(FLUSH_INTERVAL, self._flushed)

    def _flushed(self) -> None:
        self._flush_call = None
        self.flush()

    def flush(self) -> None:
        """Write out the buffered lines."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._buffer:
            self._write("".join(self._buffer))
            del self._buffer[:]
            self._out.flush()


def text_observer(server_options: Mapping[str, Any] | None) -> ILogObserver | None:
    """
    A L{TextLogObserver} writing where twistd's own text observer would for
    C{server_options} (twistd's options), or L{None}: twistd makes its own
    (C{--logger}, C{--syslog}, or a daemon told to log to standard output,
    which twistd refuses).
    """
    if server_options is None or server_options.get("logger") or server_options.get("syslog"):
        return None
    name = server_options.get("logfile") or ""
    nodaemon = bool(server_options.get("nodaemon"))
    out: IO[Any]
    if name == "-" or (not name and nodaemon):
        if not nodaemon:
            return None
        out = sys.stdout
    else:
        logfile = LogFile.fromFullPath(name or "twistd.log")
        # As twistd: SIGUSR1 rotates the file, unless something else has it.
        if not signal.getsignal(signal.SIGUSR1):

            def rotate(signum: int, frame: Any) -> None:
                from twisted.internet import reactor

                reactor.callFromThread(logfile.rotate)  # type: ignore[attr-defined]

            signal.signal(signal.SIGUSR1, rotate)
        out = logfile
    observer = TextLogObserver(out)
    from twisted.internet import reactor

    IReactorCore(reactor).addSystemEventTrigger("after", "shutdown", observer.flush)
    atexit.register(observer.flush)
    return observer
