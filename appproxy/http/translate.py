"""
Translate internal URLs in response headers into external ones.

An internal application published at C{http://10.1.2.3:8080/wiki/} as
C{https://wiki.example.com/} knows only its internal URL; redirects, cookies
and links it sends must be rewritten before they reach the user.

Pure functions: no reactor, no I/O.  Header values are bytes; they are decoded
as latin-1 (lossless), translated as text and encoded back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import attrs

from appproxy.http.authority import Authority, parse_authority
from appproxy.http.headers import is_valid_header_value
from appproxy.http.set_cookie import CookieScope, translate_set_cookie

__all__ = ["UrlMapping", "translate_response_headers", "translate_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_OWS = " \t"


@attrs.frozen
class _Prefix:
    """A parsed, validated C{scheme://host[:port]/path/} prefix."""

    url: str  # as configured
    scheme: str  # lowercase
    host: str  # lowercase
    port: int  # defaulted
    path: str  # starts and ends with "/"

    @property
    def scheme_relative(self) -> str:
        """The prefix as a scheme-relative reference: C{//host[:port]/path/}."""
        return self.url[len(self.scheme) + 1 :]

    @property
    def cookie_scope(self) -> CookieScope:
        """The host (as a cookie C{Domain} value: no port, no brackets) and path."""
        return CookieScope(self.host.removeprefix("[").removesuffix("]"), self.path)


@attrs.frozen
class _SplitUrl:
    scheme: str | None  # lowercase; None for a scheme-relative reference
    authority: Authority  # host lowercase as written; port None if absent or empty
    path_start: int  # index in the URL where the path starts
    path_end: int  # index where the path ends (first "?" or "#", or the end)


def _find_any(text: str, chars: str, start: int) -> int:
    """Index of the first of C{chars} in C{text} from C{start}, or C{len(text)}."""
    for index in range(start, len(text)):
        if text[index] in chars:
            return index
    return len(text)


def _split_url(url: str) -> _SplitUrl | None:
    """Split an absolute or scheme-relative URL; None for anything else."""
    scheme: str | None
    if url.startswith("//"):
        scheme = None
        authority_start = 2
    else:
        match = _SCHEME.match(url)
        if match is None or url[match.end() : match.end() + 2] != "//":
            return None
        scheme = url[: match.end() - 1].lower()
        authority_start = match.end() + 2
    path_start = _find_any(url, "/?#", authority_start)
    authority = parse_authority(url[authority_start:path_start])
    if authority is None:
        return None
    return _SplitUrl(scheme, authority, path_start, _find_any(url, "?#", path_start))


def _parse_prefix(url: str, what: str) -> _Prefix:
    split = _split_url(url)
    if split is None or split.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{what} URL {url!r} is not an absolute http or https URL")
    path = url[split.path_start : split.path_end]
    if split.path_end != len(url):
        raise ValueError(f"{what} URL {url!r} has a query or fragment")
    if not path.endswith("/"):
        raise ValueError(f"{what} URL {url!r} does not end with '/'")
    if any(char <= " " or char == "\x7f" for char in url):
        raise ValueError(f"{what} URL {url!r} contains whitespace or control characters")
    default = _DEFAULT_PORTS[split.scheme]
    port = split.authority.port if split.authority.port is not None else default
    return _Prefix(url, split.scheme, split.authority.host, port, path)


@attrs.frozen
class UrlMapping:
    """
    An internal URL prefix and the external URL prefix it is published at.

    Both are absolute C{http}/C{https} URLs ending with C{/}, without query,
    fragment or userinfo.

    @raise ValueError: on construction, if either URL is not of that form.
    """

    internal: str
    external: str
    _internal_prefix: _Prefix = attrs.field(init=False, repr=False, eq=False)
    _external_prefix: _Prefix = attrs.field(init=False, repr=False, eq=False)

    @_internal_prefix.default
    def _parse_internal(self) -> _Prefix:
        return _parse_prefix(self.internal, "internal")

    @_external_prefix.default
    def _parse_external(self) -> _Prefix:
        return _parse_prefix(self.external, "external")

    def reversed(self) -> UrlMapping:
        """The mapping the other way round: external to internal."""
        return UrlMapping(internal=self.external, external=self.internal)


def _bare(prefix_path: str) -> str:
    """A prefix path without its trailing slash; C{/} stays C{/}."""
    return prefix_path[:-1] or "/"


def translate_url(url: str, mapping: UrlMapping) -> str:
    """
    Translate an absolute (or scheme-relative) URL under C{mapping.internal}
    into the corresponding external URL.

    A URL is under the internal prefix when its scheme and host are equal
    case-insensitively, its port is equal after defaulting (http 80,
    https 443) and its path starts with the prefix's path.  The remainder
    (rest of the path, query, fragment) is kept byte for byte after the
    external prefix as configured.  A URL whose path is the prefix path
    without its trailing slash (C{http://h/wiki?x}) becomes the external
    prefix without its trailing slash (C{https://e/app?x}), or with the slash
    when the external path is C{/}.

    A scheme-relative reference (C{//host/...}) is compared as if it had the
    internal prefix's scheme, and stays scheme-relative.  Anything else
    (foreign URLs, relative references, URLs with userinfo) is returned
    unchanged.
    """
    internal = mapping._internal_prefix
    external = mapping._external_prefix
    split = _split_url(url)
    if split is None:
        return url
    scheme = internal.scheme if split.scheme is None else split.scheme
    if scheme != internal.scheme or split.authority.host != internal.host:
        return url
    port = split.authority.port
    if (_DEFAULT_PORTS[scheme] if port is None else port) != internal.port:
        return url
    path = url[split.path_start : split.path_end]
    if path.startswith(internal.path):
        new_prefix = external.url
        rest = url[split.path_start + len(internal.path) :]
    elif path == internal.path[:-1]:
        new_prefix = external.url[: -len(external.path)] + _bare(external.path)
        rest = url[split.path_end :]
    else:
        return url
    if split.scheme is None:
        new_prefix = new_prefix[len(external.scheme) + 1 :]
    return new_prefix + rest


def _translate_absolute_path(reference: str, mapping: UrlMapping) -> str:
    internal_path = mapping._internal_prefix.path
    external = mapping._external_prefix
    if internal_path == external.path:
        return reference
    path_end = _find_any(reference, "?#", 0)
    path = reference[:path_end]
    if path.startswith(internal_path):
        translated = external.path + reference[len(internal_path) :]
    elif path == internal_path[:-1]:
        translated = _bare(external.path) + reference[path_end:]
    else:
        return reference
    if translated.replace("\t", "")[:2] in ("//", "/\\"):
        # "/wiki//evil.example/" must not become "//evil.example/", which a
        # browser reads as a scheme-relative reference (likewise "/\\" and
        # "/<TAB>/"): spell out the external origin instead.
        return external.url[: -len(external.path)] + translated
    return translated


def _translate_reference(reference: str, mapping: UrlMapping) -> str:
    """Translate a URI reference: absolute URL, C{//host/...} or C{/path}."""
    core = reference.strip(_OWS)
    if not core:
        return reference
    start = reference.index(core[0])
    before, after = reference[:start], reference[start + len(core) :]
    if core.startswith("/") and not core.startswith("//"):
        translated = _translate_absolute_path(core, mapping)
    else:
        translated = translate_url(core, mapping)
    return before + translated + after


# "5; url=http://...": delay, separator, optional "url=", then the URL,
# possibly quoted.
_REFRESH = re.compile(r"[ \t]*[0-9]+(?:\.[0-9]*)?[ \t]*[;,][ \t]*(?:[Uu][Rr][Ll][ \t]*=[ \t]*)?")


def _translate_refresh(value: str, mapping: UrlMapping) -> str:
    match = _REFRESH.match(value)
    if match is None:
        return value
    head, rest = value[: match.end()], value[match.end() :]
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        close = rest.find(quote, 1)
        if close < 0:
            close = len(rest)
        url, tail = rest[1:close], rest[close:]
        return head + quote + _translate_reference(url, mapping) + tail
    return head + _translate_reference(rest, mapping)


def _translate_link(value: str, mapping: UrlMapping) -> str:
    """Translate each C{<URI-reference>} in a Link value, skipping quoted strings."""
    out: list[str] = []
    index = 0
    in_quotes = False
    while index < len(value):
        char = value[index]
        if in_quotes:
            if char == "\\":
                out.append(value[index : index + 2])
                index += 2
                continue
            if char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == "<":
            close = value.find(">", index + 1)
            if close < 0:
                out.append(value[index:])
                break
            out.append("<" + _translate_reference(value[index + 1 : close], mapping) + ">")
            index = close + 1
            continue
        out.append(char)
        index += 1
    return "".join(out)


def _translate_set_cookie(value: str, mapping: UrlMapping) -> str:
    internal = mapping._internal_prefix.cookie_scope
    return translate_set_cookie(value, internal, mapping._external_prefix.cookie_scope)


_TRANSLATORS: dict[bytes, Callable[[str, UrlMapping], str]] = {
    b"location": _translate_reference,
    b"content-location": _translate_reference,
    b"refresh": _translate_refresh,
    b"link": _translate_link,
    b"set-cookie": _translate_set_cookie,
}


def translate_response_headers(
    headers: Sequence[tuple[bytes, bytes]], mapping: UrlMapping
) -> list[tuple[bytes, bytes]]:
    """
    Translate internal URLs in response headers into external ones.

    C{Location}, C{Content-Location} (the whole value; absolute-path
    references are translated too when the internal and external paths
    differ), C{Refresh} (the URL after C{url=}), C{Link} (each C{<...>}) and
    C{Set-Cookie} (C{Domain} and C{Path} attributes, unless the cookie's
    C{Domain} is neither the internal host nor a parent domain of it) are
    translated; other
    headers pass through.  Names and order are unchanged.  A translated value
    that would contain a control character (other than HTAB) is discarded in
    favour of the original value.
    """
    result: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        translator = _TRANSLATORS.get(name.lower())
        if translator is not None:
            original = value.decode("latin-1")
            translated = translator(original, mapping)
            if translated != original:
                try:
                    encoded = translated.encode("latin-1")
                except UnicodeEncodeError:
                    pass
                else:
                    if is_valid_header_value(encoded):
                        value = encoded
        result.append((name, value))
    return result
