"""
A strict regular expression of RFC 5424's ABNF (section 6), for the tests of
the admin API's syslog export: one C{SYSLOG-MSG} (with C{MSG-UTF8}) and its
LF.
"""

from __future__ import annotations

import re

__all__ = ["RFC5424", "check_rfc5424"]

_PRINTUSASCII = r"[\x21-\x7e]"
_SD_NAME = r"[\x21\x23-\x3c\x3e-\x5c\x5e-\x7e]{1,32}"
_PARAM_VALUE = r'(?:[^"\\\]]|\\["\\\]])*'
_SD_ELEMENT = rf'\[{_SD_NAME}(?: {_SD_NAME}="{_PARAM_VALUE}")*\]'
_TIMESTAMP = (
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)

#: HEADER SP STRUCTURED-DATA [SP MSG], then LF.
RFC5424 = re.compile(
    rf"<(?P<pri>[0-9]{{1,3}})>(?P<version>[1-9][0-9]{{0,2}})"
    rf" (?P<timestamp>-|{_TIMESTAMP})"
    rf" (?P<hostname>-|{_PRINTUSASCII}{{1,255}})"
    rf" (?P<app>-|{_PRINTUSASCII}{{1,48}})"
    rf" (?P<procid>-|{_PRINTUSASCII}{{1,128}})"
    rf" (?P<msgid>-|{_PRINTUSASCII}{{1,32}})"
    rf" (?P<sd>-|(?:{_SD_ELEMENT})+)"
    r"(?: \ufeff(?P<msg>[^\n]*))?\n\Z",
    re.DOTALL,
)


def check_rfc5424(line: str) -> re.Match[str]:
    """The match of C{line}; raises AssertionError if it is not RFC 5424."""
    match = RFC5424.match(line)
    if match is None:
        raise AssertionError(f"not an RFC 5424 line: {line!r}")
    if not 0 <= int(match["pri"]) <= 191:
        raise AssertionError(f"PRI out of range: {line!r}")
    line.encode("utf-8")  # MSG-UTF8 / PARAM-VALUE: valid UTF-8 (no lone surrogates)
    return match
