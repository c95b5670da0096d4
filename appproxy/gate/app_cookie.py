"""
The app's session cookie on the app's own host: L{AppCookie.hand_off} sets
it from the single-use, short-lived, sealed hand-off the login host made, in
the browser that began the sign-in only (L{appproxy.gate.binding});
L{AppCookie.sign_out} clears it and sends the browser on to the provider's
end-session endpoint when there is one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from appproxy.access.cookie import InvalidCookie
from appproxy.access.redirects import safe_redirect_target
from appproxy.config import AppConfig
from appproxy.gate.binding import BrowserBinding
from appproxy.gate.context import GateContext
from appproxy.gate.paths import HAND_OFF_LIFETIME
from appproxy.gate.replies import Header, Reply, Requester, redirect, signed_out
from appproxy.http.cookies import clear_cookie, set_cookie

__all__ = ["AppCookie"]

log = Logger()


@attrs.frozen(slots=False)  # no slots: SignIn joins it with the other parts
class AppCookie:
    """The hand-off and sign-out paths of every app that signs users in."""

    context: GateContext

    def hand_off(
        self,
        app: AppConfig,
        args: Mapping[str, str],
        cookies: Mapping[str, str],
        *,
        client_ip: str,
        request_id: str,
        accept: bytes | None,
    ) -> defer.Deferred[Reply]:
        """
        C{/.appproxy/session?h=...} on the app's host: set the app's cookie
        from a single-use hand-off, then go to the URL first asked for; only
        in the browser that began the sign-in (the hand-off's binding cookie
        among C{cookies}, then cleared).
        """
        context = self.context
        requester = Requester(client_ip, request_id, accept)
        now = context.now()

        def fail(reason: str, *headers: Header) -> Reply:
            return context.failed(
                "hand-off", reason, app=app.name, user=None, requester=requester, headers=headers
            )

        try:
            payload = context.sealer.unseal(args.get("h", ""), purpose="hand-off", now=now)
        except InvalidCookie:
            return defer.succeed(
                fail("The link that brings you back to the app is invalid or has expired.")
            )
        if payload.get("app") != app.name:
            return defer.succeed(fail("The sign-in was for another app."))
        binding = BrowserBinding.from_text(payload.get("binding"))
        if binding is None or not binding.presented_by(cookies):
            return defer.succeed(
                fail(
                    "This sign-in was not started in this browser, or it took too long, so it"
                    f" cannot be completed here. Open {app.external_url} to sign in."
                )
            )
        clear_binding = clear_cookie(binding.cookie_name)
        jti = str(payload.get("jti", ""))
        cookie = str(payload.get("cookie", ""))
        target = safe_redirect_target(str(payload.get("target", "")), app.external_url)
        max_age = payload.get("max_age")

        def used(first: bool) -> Reply:
            if not first:
                return fail(
                    "This sign-in link was already used."
                    f" Open {app.external_url} to sign in again.",
                    clear_binding,
                )
            return redirect(
                target,
                set_cookie(
                    app.cookie_name,
                    cookie,
                    http_only=app.http_only_cookie,
                    max_age=max_age if isinstance(max_age, int) else None,
                ),
                clear_binding,
            )

        using = context.database.use_once("hand-off", jti, now + HAND_OFF_LIFETIME, now)
        return using.addCallback(used)

    def sign_out(
        self,
        app: AppConfig,
        cookies: Mapping[str, str],
        *,
        client_ip: str,
        request_id: str,
        accept: bytes | None,
    ) -> defer.Deferred[Reply]:
        """
        C{/.appproxy/sign-out}: end the app's session, for every copy of its
        cookie (its id is revoked before the answer), and clear it; send the
        browser to the provider's end-session endpoint when it has one.
        """
        context = self.context
        requester = Requester(client_ip, request_id, accept)
        now = context.now()
        session = context.session(app, cookies, now)
        clear = clear_cookie(app.cookie_name)
        if session is not None and context.sessions.standing(session, now) != "revoked":
            # Only a session this ends is a sign-out: a request without one
            # (or with one ended before) would only fill the sign-in log.
            context.record("signed-out", app.name, session.user, requester)
        page = signed_out(app.name, clear)
        ended = context.sessions.end(session, now) if session else defer.succeed(False)
        token: defer.Deferred[object | None]
        if session is not None and session.token_ref is not None:
            token_ref = session.token_ref
            token = ended.addCallback(
                lambda _: context.database.load_reference("id-token", token_ref, now)
            )
        else:
            token = ended.addCallback(lambda _: None)

        def with_token(id_token: object | None) -> defer.Deferred[Reply]:
            hint = id_token if isinstance(id_token, str) else None
            ending = defer.maybeDeferred(context.relying_party.end_session_url, hint, None)

            def to_provider(url: str | None) -> Reply:
                return redirect(url, clear) if url else page

            def no_provider(failure: Any) -> Reply:
                log.info("Sign-out: the provider's metadata is unavailable: {e}", e=failure.value)
                return page

            return ending.addCallbacks(to_provider, no_provider)

        return token.addCallback(with_token)
