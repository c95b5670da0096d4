"""
The streaming export: every event matching a query, from the first to the
last written when the export began, as JSON lines or RFC 5424 lines.

Read from the database a batch at a time (L{BATCH} rows) and written to the
connection as a push producer: while the client reads slowly the transport
pauses it and no further batch is read, so memory stays bounded by one
batch whatever the number of events.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Final

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from appproxy.admin import records
from appproxy.admin.filters import Query
from appproxy.admin.syslog import syslog_line
from appproxy.state.database import StateDatabase

__all__ = ["BATCH", "Export"]

log = Logger()

#: Rows read from the database at a time.
BATCH: Final = 500


def _jsonl(kind: str, event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"


@implementer(IPushProducer)
@attrs.define(eq=False)
class Export:
    """One export under way, writing to C{request} until done or the client goes."""

    database: StateDatabase
    request: Request
    query: Query
    _paused: Deferred[None] | None = attrs.field(default=None, init=False)
    _stopped: bool = attrs.field(default=False, init=False)
    _hostname: str = attrs.field(factory=socket.gethostname, init=False)

    def start(self) -> Deferred[None]:
        """Stream the events; fires when the answer is finished or abandoned."""
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        d = Deferred.fromCoroutine(self._run())
        d.addErrback(self._failed)
        return d

    async def _run(self) -> None:
        kind, query = self.query.kind, self.query
        up_to: int = await self.database.run_interaction(records.last_id, kind)
        line = _jsonl if query.format == "jsonl" else self._syslog
        while not self._stopped:
            batch: list[dict[str, Any]] = await self.database.run_interaction(
                records.select_events, query, BATCH, up_to
            )
            if not batch or self._stopped:
                break
            self.request.write("".join(line(kind, event) for event in batch).encode("utf-8"))
            query = attrs.evolve(query, after=int(batch[-1]["id"]))
            if len(batch) < BATCH:
                break
            while self._paused is not None and not self._stopped:
                await self._paused
        self._finish()

    def _syslog(self, kind: str, event: dict[str, Any]) -> str:
        return syslog_line(kind, event, hostname=self._hostname, procid=os.getpid())

    def _finish(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def _failed(self, failure: Failure) -> None:
        log.failure("The admin API's export failed", failure)
        if not self._stopped:
            self._stopped = True
            self.request.unregisterProducer()
            self.request.loseConnection()

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()
