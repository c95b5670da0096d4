"""
The gate on an app's host, per request: read the app's session cookie,
evaluate assignment and conditional access, and either admit the request
with identity headers or reply (sign in first, sign in again, refused).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
from twisted.internet import defer

from appproxy.access.session import Session
from appproxy.config import AppConfig
from appproxy.gate.claims import next_step
from appproxy.gate.context import GateContext
from appproxy.gate.replies import Admit, Reply, Requester
from appproxy.http.forwarding import IPAddress, ip_text
from appproxy.identity.headers import UnsafeClaimValue, identity_headers
from appproxy.observe.requests import app_metrics

__all__ = ["Gate"]


@attrs.frozen(slots=False)  # no slots: SignIn joins it with the other parts
class Gate:
    """Admit or answer each request to an app that signs users in."""

    context: GateContext

    def admit(
        self,
        app: AppConfig,
        *,
        method: bytes,
        uri: bytes,
        cookies: Mapping[str, str],
        client_ip: IPAddress,
        request_id: str,
        accept: bytes | None,
        websocket: bool = False,
    ) -> Admit | Reply | defer.Deferred[Admit | Reply]:
        """
        Decide on one request to C{app}: go on (with identity headers), or a
        reply (sign in first, also when the session has been ended; refused
        by policy; 503 when ended sessions cannot be known).  A session whose groups are
        kept in the state database waits for them unless they are cached.

        @param websocket: the request is a WebSocket handshake, which cannot
            follow a redirect: without a valid session it gets a 401 page
            that says to sign in, not the way to the login host.
        """
        admitted = self._admit(app, method, uri, cookies, client_ip, request_id, accept)
        if not websocket:
            return admitted
        requester = Requester(ip_text(client_ip), request_id, accept)
        if isinstance(admitted, defer.Deferred):
            return admitted.addCallback(self._no_redirect, app, requester)
        return self._no_redirect(admitted, app, requester)

    def _no_redirect(
        self, decided: Admit | Reply, app: AppConfig, requester: Requester
    ) -> Admit | Reply:
        """A WebSocket handshake sent to sign in gets a 401 page instead."""
        if isinstance(decided, Admit) or decided.status not in (301, 302, 303, 307, 308):
            return decided
        return self.context.error_page(
            401,
            "Sign-in required",
            f"A WebSocket to {app.name} needs a signed-in session. Open {app.external_url}"
            " to sign in, then reload the page.",
            requester,
            headers=((b"www-authenticate", b'Cookie realm="appproxy"'),),
        )

    def _admit(
        self,
        app: AppConfig,
        method: bytes,
        uri: bytes,
        cookies: Mapping[str, str],
        client_ip: IPAddress,
        request_id: str,
        accept: bytes | None,
    ) -> Admit | Reply | defer.Deferred[Admit | Reply]:
        context = self.context
        requester = Requester(ip_text(client_ip), request_id, accept)
        now = context.now()
        session = context.session(app, cookies, now)
        if session is None:
            return context.send_to_sign_in(app, method, uri, requester, cookies=cookies)
        standing = context.sessions.standing(session, now)
        if standing == "revoked":
            return context.send_to_sign_in(app, method, uri, requester, cookies=cookies)
        if standing == "unknown":
            return context.error_page(
                503,
                "Sessions cannot be checked",
                "The list of ended sessions cannot be read, so no signed-in request is let"
                " through. Try again in a minute.",
                requester,
            )

        def decide(groups: tuple[str, ...]) -> Admit | Reply:
            return self._decide(
                app, session, groups, method, uri, cookies, client_ip, requester, now
            )

        if session.groups_ref is None:
            return decide(session.groups)
        groups = context.database.cached_reference("groups", session.groups_ref, now)
        if isinstance(groups, list):
            return decide(tuple(groups))
        loading = context.database.load_reference("groups", session.groups_ref, now)

        def loaded(stored: object) -> Admit | Reply:
            if not isinstance(stored, list):
                return context.send_to_sign_in(app, method, uri, requester, cookies=cookies)
            return decide(tuple(stored))

        return loading.addCallback(loaded)

    def _decide(
        self,
        app: AppConfig,
        session: Session,
        groups: tuple[str, ...],
        method: bytes,
        uri: bytes,
        cookies: Mapping[str, str],
        client_ip: IPAddress,
        requester: Requester,
        now: int,
    ) -> Admit | Reply:
        context = self.context
        memo = context.admitted
        inputs = context.decision_inputs()
        admitted = memo.get(now, app, session, groups, requester.client_ip, inputs)
        if admitted is not None:
            app_metrics(app.name).decision("allow").inc()
            return admitted
        cookie_session = session
        if groups is not session.groups:
            session = attrs.evolve(session, groups=groups)
        decision = context.decide(app, session, client_ip, now)
        step = next_step(decision)
        if step == "step-up":
            return context.send_to_sign_in(
                app, method, uri, requester, cookies=cookies, step_up=True
            )
        if step == "reauthenticate":
            return context.send_to_sign_in(
                app, method, uri, requester, cookies=cookies, prompt="login"
            )
        if step == "refuse":
            return context.refused(decision, app, session.user, requester, session=session)
        try:
            headers = identity_headers(app.headers, session)
        except UnsafeClaimValue as e:
            return context.error_page(
                403,
                "Identity cannot be passed on",
                f"The claim {e.claim!r} of your account contains characters that cannot be"
                " sent in an HTTP header, so the request was not forwarded.",
                requester,
            )
        if app.jwt_assertion:
            token = context.assertion.sign(
                session, audience=app.external_url, issuer=context.login_origin, now=now
            )
            headers.append((b"x-appproxy-jwt-assertion", token.encode("ascii")))
            return Admit(headers=tuple(headers), user=session.user, session=session)
        admit = Admit(headers=tuple(headers), user=session.user, session=session)
        memo.put(now, app, cookie_session, groups, requester.client_ip, inputs, admit)
        return admit
