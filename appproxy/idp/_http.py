"""
The provider's endpoints' side of twisted.web: reading parameters and
cookies, writing HTML pages, JSON documents, OAuth errors and redirects, and
the leaf resource that dispatches a request to its method's handler.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs
from twisted.web import resource
from twisted.web.http import Request

from appproxy.idp import pages

__all__ = [
    "BadParameter",
    "Endpoint",
    "NotFound",
    "OAuthError",
    "allowed_methods",
    "clear_cookie",
    "client_address",
    "cookie",
    "has_query",
    "html",
    "json_response",
    "message",
    "method_not_allowed",
    "oauth_error",
    "param",
    "redirect",
    "set_cookie",
    "with_query",
]

_MAX_PARAMETER: Final = 2048


class BadParameter(Exception):
    """A request parameter is repeated, not UTF-8, or too long."""


@attrs.frozen
class OAuthError(Exception):
    """An RFC 6749 error (token endpoint style: JSON)."""

    error: str
    description: str
    status: int = 400
    challenge: bytes | None = None

    def __str__(self) -> str:
        return self.description


def param(request: Request, name: str) -> str | None:
    """
    One request parameter (query or form body); L{None} if absent or empty
    (RFC 6749 section 3.1: an empty parameter is an omitted one).

    @raise BadParameter: if it is repeated, not UTF-8, or too long.
    """
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise BadParameter(f"the {name} parameter is repeated")
    try:
        text: str = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadParameter(f"the {name} parameter is not UTF-8") from None
    if len(text) > _MAX_PARAMETER:
        raise BadParameter(f"the {name} parameter is too long")
    return text or None


def param_or_empty(request: Request, name: str) -> str:
    """L{param}, with an absent or bad parameter read as C{""}."""
    try:
        return param(request, name) or ""
    except BadParameter:
        return ""


def has_query(request: Request) -> bool:
    return b"?" in (request.uri or b"")


def cookie(request: Request, name: str) -> str | None:
    """The cookie C{name}, if it is there, ASCII and at most 128 characters."""
    value = request.getCookie(name.encode("ascii"))
    if not value:
        return None
    try:
        text: str = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if len(text) <= 128 else None


def set_cookie(request: Request, name: str, value: str) -> None:
    request.addCookie(name, value, path="/", secure=True, httpOnly=True, sameSite="lax")


def clear_cookie(request: Request, name: str) -> None:
    request.addCookie(
        name,
        "",
        path="/",
        secure=True,
        httpOnly=True,
        sameSite="lax",
        max_age="0",
        expires="Thu, 01 Jan 1970 00:00:00 GMT",
    )


def client_address(request: Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return str(host) if host else "unknown"


def _no_store(request: Request) -> None:
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"pragma", b"no-cache")


def html(request: Request, status: int, body: bytes) -> bytes:
    """Answer with the HTML page C{body}, framed by nothing, cached nowhere."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", pages.CONTENT_SECURITY_POLICY.encode("ascii"))
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    _no_store(request)
    return body


def message(request: Request, status: int, title: str, text: str) -> bytes:
    """Answer with a page of a title and one paragraph."""
    return html(request, status, pages.message_page(title, text))


def json_response(
    request: Request, status: int, document: Mapping[str, Any], *, cacheable: bool = False
) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"x-content-type-options", b"nosniff")
    if not cacheable:
        _no_store(request)
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def oauth_error(request: Request, error: OAuthError) -> bytes:
    if error.challenge is not None:
        request.setHeader(b"www-authenticate", error.challenge)
    return json_response(
        request, error.status, {"error": error.error, "error_description": error.description}
    )


def with_query(uri: str, parameters: Mapping[str, str | None]) -> str:
    """C{uri} with C{parameters} (those not L{None}) added to its query."""
    query = urllib.parse.urlencode({k: v for k, v in parameters.items() if v is not None})
    if not query:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}{query}"


def redirect(request: Request, location: str, status: int = 302) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"location", location.encode("utf-8"))
    request.setHeader(b"referrer-policy", b"no-referrer")
    _no_store(request)
    return b""


def _not_found(request: Request) -> bytes:
    return message(request, 404, "Not found", "There is nothing here.")


def allowed_methods(methods: Iterable[bytes]) -> bytes:
    """An C{Allow} field's value: C{methods}, and HEAD wherever GET is."""
    allowed = set(methods)
    if b"GET" in allowed:
        allowed.add(b"HEAD")
    return b", ".join(sorted(allowed))


def method_not_allowed(request: Request, methods: Iterable[bytes]) -> bytes:
    """A 405 page naming the methods the endpoint serves (RFC 9110 15.5.6)."""
    request.setHeader(b"allow", allowed_methods(methods))
    verb = request.method.decode("latin-1")
    return message(request, 405, "Method not allowed", f"{verb} is not allowed here.")


class Endpoint(resource.Resource):
    """A leaf resource dispatching on the method (HEAD is served as GET)."""

    isLeaf = True

    def __init__(self, handlers: Mapping[bytes, Callable[[Request], Any]]) -> None:
        super().__init__()
        self._handlers = dict(handlers)

    def render(self, request: Request) -> Any:
        # Set by whoever traversed to here (the public listener's request).
        if request.postpath not in ([], [b""]):  # type: ignore[attr-defined]
            return _not_found(request)
        method = request.method
        if method == b"HEAD" and method not in self._handlers:
            method = b"GET"
        handler = self._handlers.get(method)
        if handler is None:
            return method_not_allowed(request, self._handlers)
        return handler(request)


class NotFound(resource.Resource):
    """A folder of endpoints: anything not put in it is not found."""

    def getChild(self, path: bytes, request: Request) -> resource.IResource:
        return Endpoint({b"GET": _not_found, b"POST": _not_found})

    def render(self, request: Request) -> bytes:
        return _not_found(request)
