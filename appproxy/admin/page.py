"""
The admin listener's resource: the admin page (C{/admin/}, its script and
style, C{/admin/sign-in}, C{/admin/callback}, C{/admin/sign-out}), the
page's data (C{GET /admin/v1/overview}: the session cookie, or a bearer
token as the API takes), and every other path to the API
(L{appproxy.admin.api.AdminResource}).
"""

from __future__ import annotations

import json
from collections.abc import Coroutine, Mapping
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from appproxy.admin.api import AdminResource
from appproxy.admin.auth import Unauthorized
from appproxy.admin.overview import read_overview
from appproxy.admin.page_assets import (
    CSP,
    PAGE_CSS,
    PAGE_HTML,
    PAGE_JS,
    SIGNED_IN_JS,
    message_page,
)
from appproxy.admin.page_auth import (
    FLOW_COOKIE,
    SESSION_COOKIE,
    PageAuth,
    PageRefused,
    cookie_header,
)
from appproxy.http.cookies import parse_cookies

__all__ = ["AdminSite"]

log = Logger()

_ASSETS: Final = {
    b"/admin/": (b"text/html; charset=utf-8", PAGE_HTML),
    b"/admin/page.js": (b"text/javascript; charset=utf-8", PAGE_JS),
    b"/admin/page.css": (b"text/css; charset=utf-8", PAGE_CSS),
    b"/admin/signed-in.js": (b"text/javascript; charset=utf-8", SIGNED_IN_JS),
}
_PAGE_PATHS: Final = {b"/admin", b"/admin/sign-in", b"/admin/callback", b"/admin/sign-out"}
OVERVIEW: Final = b"/admin/v1/overview"


def _args(request: server.Request) -> dict[str, str]:
    return {
        key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
        for key, values in (request.args or {}).items()
        if values
    }


class AdminSite(Resource):
    """Every path of the admin listener: the page, its data, and the API."""

    isLeaf = True

    def __init__(self, api: AdminResource, page: PageAuth) -> None:
        super().__init__()
        self.api = api
        self.page = page

    def render(self, request: server.Request) -> Any:
        path = (request.uri or b"").split(b"?", 1)[0]
        if path not in _ASSETS and path not in _PAGE_PATHS and path != OVERVIEW:
            return self.api.render(request)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy", CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        cookies = parse_cookies(request.requestHeaders.getRawHeaders(b"cookie"))
        if path == b"/admin/sign-out":
            if request.method != b"POST":
                return self._allow(request, b"POST")
            request.setHeader(*cookie_header(SESSION_COOKIE, "", 0, "Strict"))
            return self._message(request, 200, "Signed out", "You are signed out.")
        if request.method not in (b"GET", b"HEAD"):
            return self._allow(request, b"GET, HEAD")
        if path == b"/admin":
            return self._redirect(request, b"/admin/")
        if path == b"/admin/sign-in":
            return self._later(request, self._sign_in(request))
        if path == b"/admin/callback":
            return self._later(request, self._callback(request, cookies))
        if path == OVERVIEW:
            return self._later(request, self._overview(request, cookies))
        if path == b"/admin/" and self.page.session(cookies) is None:
            return self._redirect(request, b"/admin/sign-in")
        kind, body = _ASSETS[path]
        request.setHeader(b"content-type", kind)
        return body

    # -- the sign-in

    async def _sign_in(self, request: server.Request) -> None:
        url, flow = await self.page.start()
        request.responseHeaders.addRawHeader(*flow)
        self._finish(request, self._redirect(request, url.encode("ascii")))

    async def _callback(self, request: server.Request, cookies: Mapping[str, str]) -> None:
        peer = request.getClientAddress()
        address = str(getattr(peer, "host", "")) or "-"
        who, session = await self.page.callback(_args(request), cookies, address)
        request.responseHeaders.addRawHeader(*session)
        request.responseHeaders.addRawHeader(*cookie_header(FLOW_COOKIE, "", 0, "Lax"))
        # A page whose script goes on, not a redirect (nor a Refresh): the provider
        # sent the browser here from another site, and a SameSite=Strict cookie is
        # sent only on a navigation this origin starts.
        body = message_page("Signed in", f"Signed in as {who}.", "/admin/", "Open the admin page")
        body = body.replace(b"</head>", b'<script src="/admin/signed-in.js"></script></head>')
        self._finish(request, self._reply(request, 200, b"text/html; charset=utf-8", body))

    # -- the data

    async def _overview(self, request: server.Request, cookies: Mapping[str, str]) -> None:
        session = self.page.session(cookies)
        if session is not None:
            who = str(session.get("who", ""))
        else:
            try:
                claims = await self.api.auth.verify(request.getHeader(b"authorization"))
            except Unauthorized as e:
                body = json.dumps({"error": e.error, "message": e.message}).encode()
                self._finish(request, self._reply(request, e.status, b"application/json", body))
                return
            who = str(claims.get("sub", ""))
        config = self.page.config
        inactive = config.connectors.inactive_after_days * 86400.0
        data = await self.api.database.run_interaction(
            read_overview, config.apps, self.page.reactor.seconds(), inactive
        )
        data["who"] = who
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self._finish(request, self._reply(request, 200, b"application/json", body))

    # -- answers

    def _later(self, request: server.Request, work: Coroutine[Any, Any, None]) -> Any:
        d = Deferred.fromCoroutine(work)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _failed(self, failure: Failure, request: server.Request) -> None:
        if failure.check(PageRefused):
            error = failure.value
            assert isinstance(error, PageRefused)
            title = "Not an administrator" if error.status == 403 else "Sign-in failed"
            link = None if error.status == 403 else "/admin/sign-in"
            self._finish(request, self._page(request, error.status, title, error.message, link))
            return
        log.failure("The admin page failed", failure)
        if not request.startedWriting:
            self._finish(
                request, self._page(request, 503, "Unavailable", "Try again.", "/admin/sign-in")
            )

    def _page(
        self, request: server.Request, status: int, title: str, text: str, link: str | None
    ) -> bytes:
        return self._reply(
            request, status, b"text/html; charset=utf-8", message_page(title, text, link)
        )

    def _message(self, request: server.Request, status: int, title: str, text: str) -> bytes:
        return self._page(request, status, title, text, "/admin/sign-in")

    @staticmethod
    def _reply(request: server.Request, status: int, kind: bytes, body: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", kind)
        return body

    def _allow(self, request: server.Request, methods: bytes) -> bytes:
        request.setHeader(b"allow", methods)
        return self._page(request, 405, "Method not allowed", "Use " + methods.decode(), None)

    @staticmethod
    def _redirect(request: server.Request, location: bytes) -> bytes:
        request.setResponseCode(303 if request.method == b"POST" else 302)
        request.setHeader(b"location", location)
        return b""

    @staticmethod
    def _finish(request: server.Request, body: bytes) -> None:
        if request.finished or request.channel is None:
            return
        request.write(body)
        request.finish()
