"""
Translate the C{Domain} and C{Path} attributes of a C{Set-Cookie} value from
the internal application's host and path to the external ones.

Used by L{appproxy.http.translate} for the C{Set-Cookie} response header.
Pure functions: no reactor, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import attrs

__all__ = ["CookieScope", "translate_set_cookie"]

_OWS = " \t"


@attrs.frozen
class CookieScope:
    """Where an application's cookies live: its host and its path prefix."""

    host: str
    """Lowercase; an IPv6 address without brackets (as in C{Domain})."""
    path: str
    """Starts and ends with C{/}."""


def _bare(prefix_path: str) -> str:
    """A prefix path without its trailing slash; C{/} stays C{/}."""
    return prefix_path[:-1] or "/"


def _translate_path(path: str, internal: CookieScope, external: CookieScope) -> str:
    """
    A C{Path} under the internal prefix moves under the external one with
    its remainder (and so its trailing slash) kept: C{/int/} becomes
    C{/ext/}, and the cookie covers the same pages as it did inside.  The
    prefix without its slash (C{/int}: the whole application, C{/int} and
    C{/int/...}) becomes the external prefix without it, and so does C{/}
    when it is the internal prefix: it is the whole application too, and
    the one path that can stand for it (no internal path is the root
    without its slash), so that the cookie also reaches C{/ext}, which is
    routed to the application.
    """
    if internal.path == external.path:
        return path
    if path == "/" == internal.path:
        return _bare(external.path)
    if path.startswith(internal.path):
        return external.path + path[len(internal.path) :]
    if path and path == internal.path[:-1]:
        return _bare(external.path)
    return path


def _is_host(domain: str, scope: CookieScope) -> bool:
    """Is C{domain} (no leading dot) the scope's host, IPv6 brackets or not?"""
    if not domain.isascii():
        return False
    return domain.lower().removeprefix("[").removesuffix("]") == scope.host


def _translate_domain(domain: str, internal: CookieScope, external: CookieScope) -> str:
    dot = "." if domain.startswith(".") else ""
    if _is_host(domain[len(dot) :], internal):
        return dot + external.host
    return domain


def _cookie_domain(parts: Sequence[str]) -> str | None:
    """
    The C{Domain} a cookie's attributes set, as a user agent reads it
    (RFC 6265 section 5.2.3): the last non-empty one, one leading dot
    dropped; None if there is none.
    """
    domain: str | None = None
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        if equals and name.strip(_OWS).lower() == "domain":
            core = value.strip(_OWS)
            if core:
                domain = core.removeprefix(".")
    return domain


def _reaches(domain: str, scope: CookieScope) -> bool:
    """
    Does a cookie with C{Domain=domain} reach the scope's host: is C{domain}
    the host or (for a host name, not an address) a parent domain of it
    (RFC 6265 section 5.1.3, domain-match)?
    """
    if _is_host(domain, scope):
        return True
    try:
        ipaddress.ip_address(scope.host)
    except ValueError:
        return domain.isascii() and scope.host.endswith("." + domain.lower())
    return False  # an address has no parent domain


def translate_set_cookie(value: str, internal: CookieScope, external: CookieScope) -> str:
    """
    Translate a C{Set-Cookie} value: a C{Domain} that is the internal host
    becomes the external host, a C{Path} under the internal prefix moves
    under the external one (see L{_translate_path}).  A cookie whose
    C{Domain} does not reach the internal host (another site's) is returned
    unchanged, and so is everything but those attribute values: the
    whitespace around them, other attributes, the name and value.
    """
    parts = value.split(";")
    domain = _cookie_domain(parts)
    if domain is not None and not _reaches(domain, internal):
        return value
    for index in range(1, len(parts)):
        name, equals, attribute_value = parts[index].partition("=")
        if not equals:
            continue
        key = name.strip(_OWS).lower()
        if key == "domain":
            translate: Callable[[str, CookieScope, CookieScope], str] = _translate_domain
        elif key == "path":
            translate = _translate_path
        else:
            continue
        core = attribute_value.strip(_OWS)
        if not core:
            continue
        start = attribute_value.index(core[0])
        parts[index] = (
            name
            + equals
            + attribute_value[:start]
            + translate(core, internal, external)
            + attribute_value[start + len(core) :]
        )
    return ";".join(parts)
