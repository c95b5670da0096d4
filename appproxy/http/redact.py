"""
Query strings out of log lines.

A request's query may carry secrets (C{?access_token=...}, C{&password=...}):
the access log leaves it out, and so must every other line that names a URL
(a backend's failure, the service's record of it).  L{redact_query} keeps
each parameter's name, for the operator, and hides its value.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "redact_query"]

#: What a parameter's value is replaced with (ASCII: details also travel in
#: an HTTP header).
REDACTED = "..."

# A query: from "?" up to whitespace, a fragment or a quote.
_QUERY = re.compile(r"\?([^\s#\"'<>]*)")
_SEPARATORS = re.compile(r"([&;])")


def _redact_parameters(match: re.Match[str]) -> str:
    query = match.group(1)
    if not query:
        return match.group(0)
    out = []
    for part in _SEPARATORS.split(query):
        if part in ("&", ";") or not part:
            out.append(part)
            continue
        name, equals, _value = part.partition("=")
        # A parameter without "=" is all value (C{?SECRET}): hidden whole.
        out.append(f"{name}={REDACTED}" if equals else REDACTED)
    return "?" + "".join(out)


def redact_query(text: str) -> str:
    """
    C{text} with the value of every query parameter of every URL or path in
    it replaced by L{REDACTED}: C{/down?access_token=s&x} becomes
    C{/down?access_token=...&...}.  Text with no C{?} is returned as it is.
    """
    if "?" not in text:
        return text
    return _QUERY.sub(_redact_parameters, text)
