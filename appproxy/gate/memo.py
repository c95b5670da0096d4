"""
The gate's admissions of this second, for the next requests of the same
session from the same address.

A browser's page view is many requests within a second, each with the same
session cookie, and the gate's decision on each is a pure function of what
does not change between them: the app, the session (the cookie decodes to
the same L{Session} object, L{appproxy.access.cookie}), its groups, the
client's address, the time in whole seconds, the policies, the anonymizer
list and the failed sign-ins seen so far.  L{AdmitMemo} keeps the L{Admit}
made for those, and gives it again while all of them are the same: the
whole memo is forgotten when the second changes, an entry is used only for
the very same app, session and policy objects (a reload makes new ones),
and any failed sign-in recorded meanwhile (L{FailedSignIns.changes})
makes every entry stale.  What is checked per request whatever the memo
holds stays so: the cookie's expiry, and whether the session was ended
(revoked).

Only admissions are kept, never a refusal or a redirect (those log and
answer per request), and none that carries a signed assertion (each
request gets its own).
"""

from __future__ import annotations

from typing import Any

from appproxy.access.session import Session
from appproxy.config import AppConfig
from appproxy.gate.replies import Admit

__all__ = ["MEMO_LIMIT", "AdmitMemo"]

#: Admissions kept within one second, at most (one per session, address
#: and app): beyond it, the next ones are decided anew.
MEMO_LIMIT = 4096


class AdmitMemo:
    """The admissions of this second (see the module docstring)."""

    __slots__ = ("_entries", "_now")

    def __init__(self) -> None:
        self._now = -1
        #: (session id, client address, app id) -> the inputs and the Admit.
        self._entries: dict[tuple[int, str, int], tuple[Any, ...]] = {}

    def get(
        self,
        now: int,
        app: AppConfig,
        session: Session,
        groups: tuple[str, ...],
        client_ip: str,
        inputs: tuple[Any, ...],
    ) -> Admit | None:
        """
        The admission made this second (C{now}) for exactly these, if any.

        @param inputs: the other inputs of the decision: the policies, the
            anonymizer list and the failed sign-ins' count of changes.
        """
        if now != self._now:
            return None
        entry = self._entries.get((id(session), client_ip, id(app)))
        if (
            entry is None
            or entry[0] is not session
            or entry[1] is not app
            or entry[2] != groups
            or entry[3] != inputs
        ):
            return None
        admit: Admit = entry[4]
        return admit

    def put(
        self,
        now: int,
        app: AppConfig,
        session: Session,
        groups: tuple[str, ...],
        client_ip: str,
        inputs: tuple[Any, ...],
        admit: Admit,
    ) -> None:
        """Keep C{admit}, made at C{now} for these (see L{get})."""
        if now != self._now:
            self._entries = {}
            self._now = now
        elif len(self._entries) >= MEMO_LIMIT:
            return
        # The entry holds the session and the app: their ids name no other
        # objects meanwhile.
        self._entries[(id(session), client_ip, id(app))] = (session, app, groups, inputs, admit)

    def clear(self) -> None:
        """Forget every admission (a new configuration)."""
        self._entries = {}
        self._now = -1

    def __len__(self) -> int:
        return len(self._entries)
