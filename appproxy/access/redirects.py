"""
Where to send the browser after sign-in.

The URL a user first asked for travels through the identity provider and back
(in the sealed sign-in state).  Before appproxy redirects to it, it must be
shown to be a URL of the app being signed in to: anything that could take the
browser to another host (an open redirect) or out of the app's path prefix
lands on the app's root instead.

Pure functions: no reactor, no I/O.  The rules are deliberately stricter than
any URL parser: a target is kept only if browsers (WHATWG URL parsing, which
treats C{\\} as C{/} and drops tabs and newlines) and servers (RFC 3986,
percent-decoding, C{;} path parameters) cannot disagree about where it leads.
"""

from __future__ import annotations

import re
import string
from urllib.parse import unquote

from appproxy.http.authority import parse_authority
from appproxy.http.paths import segment_is_dot

__all__ = ["MAX_TARGET_LENGTH", "safe_redirect_target"]

#: Longer targets are not kept: they land on the app's root.
MAX_TARGET_LENGTH = 2000

# RFC 3986 "pchar" and "query" characters, with "%" (escapes are validated
# separately).  Any other printable ASCII character in the path or query is
# percent-encoded in the result.
_URI_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?%")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _split_app_url(app_external_url: str) -> tuple[str, str]:
    """
    The normalised authority and the path prefix of an app's external URL.

    @raise ValueError: if C{app_external_url} is not of the form
        C{https://host[:port]/prefix/}.
    """
    if not app_external_url.startswith("https://"):
        raise ValueError(f"{app_external_url!r} is not an https URL")
    rest = app_external_url[len("https://") :]
    authority, slash, path = rest.partition("/")
    normalised = _normalise_authority(authority)
    if (
        normalised is None
        or normalised != authority
        or not slash
        or not (path == "" or path.endswith("/"))
        or "?" in path
        or "#" in path
        or not _is_clean(app_external_url)
    ):
        raise ValueError(f"{app_external_url!r} is not a normalised https://host/prefix/ URL")
    return authority, "/" + path


def _is_clean(text: str) -> bool:
    """ASCII, no whitespace, no control characters, no backslash."""
    return text.isascii() and all(" " < char < "\x7f" and char != "\\" for char in text)


def _normalise_authority(authority: str) -> str | None:
    """
    C{host[:port]} lowercased with the default port (443) elided, or L{None}
    if it is malformed (see L{parse_authority}) or not written plainly: an
    empty port (C{host:}) or one with leading zeros (C{host:0443}) is
    refused here, though RFC 3986 allows both.  A trailing dot is kept.
    """
    parsed = parse_authority(authority)
    if parsed is None or str(parsed) != authority.lower():
        return None
    return parsed.normalised(443)


def _path_is_safe(path: str) -> bool:
    """Is C{path} (starting with C{/}) free of traversal and of host-like starts?"""
    if path.startswith("//"):
        return False
    segments = path[1:].split("/")
    # "/%2F%2Fevil.example" and "/%5Cevil.example": one decode away from a
    # scheme-relative URL.
    first = unquote(unquote(segments[0]))
    if first.startswith(("/", "\\")):
        return False
    return not any(segment_is_dot(segment) for segment in segments)


def _encode(text: str) -> str:
    """Percent-encode printable ASCII characters that RFC 3986 does not allow here."""
    return "".join(char if char in _URI_CHARS else f"%{ord(char):02X}" for char in text)


def safe_redirect_target(target: str, app_external_url: str) -> str:
    """
    The absolute URL to redirect to after sign-in: C{target} if it is safely
    inside the app, else the app's root.

    C{target} may be a path (C{/prefix/page?q}) or an absolute C{https} URL
    on the app's host (compared case-insensitively, the default port
    elided).  It is kept only if its path is within the app's path prefix
    and none of these is present anywhere: control characters, whitespace,
    non-ASCII characters, C{\\}, userinfo, malformed percent escapes, C{.}
    or C{..} segments (also percent-encoded, or as C{..;param}), and, at the
    start of the path, C{//} or an encoded C{/} or C{\\}.  Targets longer
    than L{MAX_TARGET_LENGTH} are not kept.

    The query is kept; the fragment is dropped.  Characters RFC 3986 does not
    allow in a path or query (C{"<>^`{|}[]}) are percent-encoded.

    @param target: the URL the user first asked for (untrusted).
    @param app_external_url: the app's external URL, normalised:
        C{https://host[:port]/prefix/} (lowercase host, default port elided,
        path ending with C{/}).

    @return: an absolute URL starting with C{app_external_url}.

    @raise ValueError: if C{app_external_url} is not normalised (a
        programming error, never caused by C{target}).
    """
    app_authority, prefix = _split_app_url(app_external_url)
    if len(target) > MAX_TARGET_LENGTH or not _is_clean(target):
        return app_external_url
    if _BAD_ESCAPE.search(target):
        return app_external_url
    target = target.partition("#")[0]
    if target.startswith("/"):
        reference = target
    elif target[: len("https://")].lower() == "https://":
        rest = target[len("https://") :]
        end = len(rest)
        for delimiter in "/?":
            index = rest.find(delimiter)
            if index >= 0:
                end = min(end, index)
        if _normalise_authority(rest[:end]) != app_authority:
            return app_external_url
        reference = rest[end:]
        if not reference.startswith("/"):
            # "https://host" or "https://host?q": the root of the host.
            reference = "/" + reference
    else:
        return app_external_url
    path, question, query = reference.partition("?")
    if not path.startswith(prefix) or not _path_is_safe(path):
        return app_external_url
    return app_external_url + _encode(path[len(prefix) :] + question + query)
