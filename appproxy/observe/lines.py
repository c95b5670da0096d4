"""
L{LineLogger}: a C{twisted.logger.Logger} for lines the caller formats
itself (the access log), so that a text log observer may write them as they
are, without parsing a format (L{appproxy.daemon.text_log}).

The event is what C{Logger.info(line, **fields)} would emit, the line's
braces doubled (it is the event's C{log_format}, with no field to look up):
every other observer (JSON logs, tests) sees an ordinary event with its
fields.
"""

from __future__ import annotations

from time import time

from twisted.logger import Logger, LogLevel

__all__ = ["LineLogger", "line_of"]


class LineLogger(Logger):
    """A logger whose events' formats are whole lines, braces doubled."""

    def line(self, text: str, **fields: object) -> None:
        """
        Log C{text} (at level info) with C{fields} for structured observers:
        the event C{self.info} would emit, made here (no level check, no
        trace: a line is never traced).
        """
        fields.update(
            log_logger=self,
            log_level=LogLevel.info,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=text.replace("{", "{{").replace("}", "}}"),
            log_time=time(),
        )
        self.observer(fields)


def line_of(format: str) -> str:
    """The line of a L{LineLogger} event's C{log_format} (braces undoubled)."""
    return format.replace("{{", "{").replace("}}", "}")
