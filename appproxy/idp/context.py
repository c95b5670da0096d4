"""
What every endpoint of the built-in provider works with: its settings, its
store, the users file, the signing key and the clock; and the pieces several
endpoints share (the browser's SSO session, a new sign-in, finishing a
response later).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Final

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request

from appproxy.http.render import NOT_DONE_YET
from appproxy.idp._http import cookie, message, set_cookie
from appproxy.idp.settings import ProviderSettings, SignInAttemptHook
from appproxy.idp.signing import SigningKey
from appproxy.idp.store import AuthRequest, Identity, Login, ProviderStore, can_sign_in, new_token
from appproxy.idp.users import UserStore

__all__ = [
    "BROWSER_COOKIE",
    "MESSAGE_STALE",
    "SSO_COOKIE",
    "ProviderContext",
    "UsersFile",
]

#: The provider's SSO session cookie (login host only).
SSO_COOKIE: Final = "__Host-appproxy-idp"
#: Binds a pending sign-in to the browser that started it (anti-forgery).
BROWSER_COOKIE: Final = "__Host-appproxy-idp-browser"

#: The page of a sign-in form that is no longer (or never was) pending.
MESSAGE_STALE: Final = (
    "This sign-in page has expired or was already used. "
    "Go back to the application and sign in again."
)

_log = Logger(namespace="appproxy.idp")


@attrs.define(eq=False)
class UsersFile:
    """
    C{users.json}, re-read whenever it changes on disk.

    @raise ValueError: if the file is unusable when this is made (a bad file
        stops the service at start).
    """

    path: Path
    _stamp: tuple[int, ...] | None = attrs.field(init=False)
    _store: UserStore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._stamp = self._stat()
        self._store = UserStore.load(self.path)

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode)

    def current(self) -> UserStore:
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._store = UserStore.load(self.path)
            except ValueError as e:
                # Fail closed: nobody signs in until the file is fixed.
                _log.error("Cannot read the users file, no one can sign in: {error}", error=str(e))
                self._store = UserStore()
        return self._store


@attrs.define(kw_only=True, eq=False)
class ProviderContext:
    """
    The built-in provider's parts, as its endpoints use them.

    @ivar clock: the time source (POSIX seconds).
    @ivar reactor: runs password checks in its thread pool.
    @ivar on_sign_in_attempt: a L{SignInAttemptHook}, or L{None}.
    @ivar app_names: the names of the apps the provider's own service signs
        users in to, now; an authorization request naming one of them
        (C{appproxy_app}) has the sign-in page name it, and any other name
        is ignored, so a crafted link cannot put its own words on the page.
    """

    settings: ProviderSettings
    store: ProviderStore
    users: UsersFile
    signing_key: SigningKey
    clock: IReactorTime
    reactor: IReactorThreads
    on_sign_in_attempt: SignInAttemptHook | None = None
    app_names: Callable[[], Collection[str]] = tuple

    def now(self) -> float:
        return float(self.clock.seconds())

    def report(self, user: str, address: str, ok: bool, step: str) -> None:
        """Tell L{on_sign_in_attempt} about a checked sign-in step."""
        hook = self.on_sign_in_attempt
        if hook is None:
            return
        try:
            hook(user, address, ok, step)
        except Exception:
            _log.failure("The sign-in attempt hook failed")

    def sso_session(self, request: Request, users: UserStore) -> Identity | None:
        """The identity of the browser's SSO session, if it is still valid."""
        session_id = cookie(request, SSO_COOKIE)
        if session_id is None:
            return None
        identity = self.store.session(session_id, self.now())
        if identity is None:
            return None
        if not can_sign_in(users.get(identity.user), identity.credential):
            self.store.end_session(session_id, self.now())
            return None
        return identity

    def new_login(
        self,
        request: Request,
        *,
        step: str,
        auth: AuthRequest | None = None,
        device_code: str | None = None,
        identity: Identity | None = None,
    ) -> tuple[str, Login]:
        """
        Start a sign-in in this browser, at C{step}; with C{identity}, the
        user, what they proved and with which password are that session's.
        """
        login_id = new_token()
        login = Login(
            csrf=new_token(),
            browser=self._browser(request),
            auth=auth,
            device_code=device_code,
            step=step,
            user=identity.user if identity is not None else None,
            amr=identity.amr if identity is not None else (),
            credential=identity.credential if identity is not None else None,
        )
        self.store.add_login(login_id, login, self.now())
        return login_id, login

    def _browser(self, request: Request) -> str:
        browser = cookie(request, BROWSER_COOKIE)
        if browser is None or len(browser) < 32:
            browser = new_token()
            set_cookie(request, BROWSER_COOKIE, browser)
        return browser

    def later(self, request: Request, deferred: Deferred[bytes]) -> object:
        """Finish C{request} with what C{deferred} gives, unless it has gone."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def failed(failure: Failure) -> bytes:
            _log.failure("Sign-in step failed", failure)
            return message(request, 500, "Sign-in failed", "Something went wrong. Try again.")

        def write(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        deferred.addErrback(failed).addCallback(write).addErrback(
            lambda failure: _log.failure("Cannot send the response", failure)
        )
        return NOT_DONE_YET
