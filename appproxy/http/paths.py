"""
Dot segments in a request path, however they are hidden.

Browsers remove C{.} and C{..} segments before they send a request, so a path
that still has one is suspicious: forwarded as it is, C{/wiki/../admin} lets a
request climb out of the app's published path prefix.  Servers differ in what
they take for a dot segment: Tomcat, Spring and IIS decode C{%2e} and C{%2f}
before they resolve the path, take C{\\} for C{/}, and drop C{;} path
parameters (C{..;x} is C{..} to Tomcat).  The one check here, used for request
targets and for redirect targets alike, is the union of them all.

Pure functions: no reactor, no I/O.
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = ["DECODE_ROUNDS", "has_dot_segments", "segment_is_dot"]

#: Rounds of percent-decoding looked through (C{%252e} is C{.} to a server
#: that decodes twice); a segment still changing after them is refused.
DECODE_ROUNDS = 3


def segment_is_dot(segment: str) -> bool:
    """
    Could a server read this path segment as C{.} or C{..}, or as several
    segments one of which is?  Checked through several rounds of
    percent-decoding, with C{\\} taken as C{/} and C{;} path parameters
    removed.
    """
    if "." not in segment and "%" not in segment:
        return False
    for _ in range(DECODE_ROUNDS):
        parts = segment.replace("\\", "/").split("/")
        if any(part.split(";", 1)[0] in (".", "..") for part in parts):
            return True
        decoded = unquote(segment, encoding="latin-1")
        if decoded == segment:
            return False
        segment = decoded
    # Still changing after several rounds: nobody needs that.
    return True


def has_dot_segments(path: str) -> bool:
    """
    Does C{path} (its query string, if any, ignored) have a segment that a
    server could read as C{.} or C{..}?  See L{segment_is_dot}.
    """
    path = path.partition("?")[0]
    if "." not in path and "%" not in path:
        # Neither a dot nor an escape that could decode to one (as in
        # segment_is_dot, for the whole path at once).
        return False
    return any(segment_is_dot(segment) for segment in path.split("/"))
