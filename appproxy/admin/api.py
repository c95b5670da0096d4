"""
The admin API's twisted.web resource: C{GET /admin/v1/sign-ins},
C{/admin/v1/audit} (a page of events as JSON: C{events}, C{next}, C{more})
and their C{/export} (a stream of every event), for administrators only
(L{appproxy.admin.auth}).  Errors are JSON C{{"error", "message"}}; a 401
carries C{WWW-Authenticate: Bearer} (RFC 6750).
"""

from __future__ import annotations

import json
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from appproxy.admin import records
from appproxy.admin.auth import AdminAuth, Unauthorized, actor
from appproxy.admin.cursor import Cursor, encode_cursor
from appproxy.admin.export import Export
from appproxy.admin.filters import QueryError, parse_query
from appproxy.state.database import StateDatabase

__all__ = ["PREFIX", "AdminResource"]

log = Logger()

#: The API's paths start with this.
PREFIX: Final = b"/admin/v1/"
_REALM: Final = 'Bearer realm="appproxy admin"'
_EXPORT_TYPES: Final = {
    "jsonl": b"application/x-ndjson; charset=utf-8",
    "syslog": b"text/plain; charset=utf-8",
}


def _route(path: bytes) -> tuple[str, bool] | None:
    """(list, export?) of a path, or L{None}."""
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :].decode("ascii", "replace").rstrip("/")
    kind, _, tail = rest.partition("/")
    if kind not in records.TABLES or tail not in ("", "export"):
        return None
    return kind, tail == "export"


def _args(request: server.Request) -> dict[str, list[str]]:
    return {
        key.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in values]
        for key, values in (request.args or {}).items()
    }


class AdminResource(Resource):
    """Every path of the admin listener."""

    isLeaf = True

    def __init__(self, auth: AdminAuth, database: StateDatabase) -> None:
        super().__init__()
        self.auth = auth
        self.database = database

    def render(self, request: server.Request) -> Any:
        request.setHeader(b"cache-control", b"no-store")
        path = (request.uri or b"").split(b"?", 1)[0]
        route = _route(path)
        if route is None:
            return self._error(request, 404, "not_found", "no such path; see /admin/v1/sign-ins")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._error(request, 405, "method_not_allowed", "use GET")
        d = Deferred.fromCoroutine(self._answer(request, *route))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    async def _answer(self, request: server.Request, kind: str, export: bool) -> None:
        try:
            claims = await self.auth.verify(request.getHeader(b"authorization"))
        except Unauthorized as e:
            # RFC 6750 section 3: no error code when the request had no token.
            challenge = _REALM if e.error == "invalid_request" else f'{_REALM}, error="{e.error}"'
            request.setHeader(b"www-authenticate", challenge.encode("ascii"))
            self._finish(request, self._error(request, e.status, e.error, e.message))
            return
        try:
            query = parse_query(kind, _args(request), export=export)
        except QueryError as e:
            self._finish(request, self._error(request, 400, "invalid_request", str(e)))
            return
        log.info(
            "Admin API: {who} {what}",
            who=actor(claims),
            what=request.uri.decode("ascii", "replace"),
        )
        if export:
            request.setHeader(b"content-type", _EXPORT_TYPES[query.format])
            await Export(self.database, request, query).start()
            return
        events = await self.database.run_interaction(records.select_events, query, query.limit)
        after = int(events[-1]["id"]) if events else query.after
        body = {
            "events": events,
            "next": encode_cursor(Cursor(kind, after)),
            "more": len(events) == query.limit,
        }
        self._finish(request, self._json(request, 200, body))

    @staticmethod
    def _json(request: server.Request, status: int, value: object) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _error(self, request: server.Request, status: int, error: str, message: str) -> bytes:
        return self._json(request, status, {"error": error, "message": message})

    @staticmethod
    def _finish(request: server.Request, body: bytes) -> None:
        if request.finished or request.channel is None:
            return
        request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: server.Request) -> None:
        log.failure("The admin API failed", failure)
        if not request.startedWriting:
            self._finish(
                request,
                self._error(request, 503, "unavailable", "the API could not answer; try again"),
            )
        elif request.channel is not None:
            request.loseConnection()
