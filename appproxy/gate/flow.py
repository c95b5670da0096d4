"""
The sign-in flow on the login host: L{Flow.start} begins the authorization
code flow (PKCE, C{state} bound to a short-lived flow cookie, C{nonce}) for
the app named in the sealed sign-in request; L{Flow.callback} finishes it:
the code is exchanged, the ID token verified, assignment and policy
evaluated, a session made and handed off, sealed and single-use, to the
app's host, bound to the browser that began the sign-in there (the
L{BrowserBinding} the sign-in request carries, kept in the flow cookie).
Every attempt and decision goes to the sign-in log.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from appproxy.access.cookie import CookieTooLarge, InvalidCookie
from appproxy.access.session import Session
from appproxy.config import AppConfig
from appproxy.gate.binding import BrowserBinding
from appproxy.gate.claims import next_step, session_from_claims
from appproxy.gate.context import GateContext
from appproxy.gate.paths import (
    FLOW_COOKIE_PREFIX,
    FLOW_LIFETIME,
    HAND_OFF_LIFETIME,
    HAND_OFF_PATH,
    flow_cookie_name,
)
from appproxy.gate.replies import Reply, Requester, redirect
from appproxy.http.cookies import clear_cookie, set_cookie
from appproxy.http.forwarding import IPAddress, ip_text
from appproxy.idp.settings import APP_PARAMETER
from appproxy.oidc.authorize import authorization_url, check_authorization_response, new_pkce
from appproxy.oidc.errors import SignInError

__all__ = ["Flow"]

log = Logger()


def _provider_error(args: Mapping[str, str]) -> str:
    error = args.get("error", "")[:100]
    return f"The identity provider refused the sign-in ({error!r})."


def _is_builtin_provider(context: GateContext) -> bool:
    """Is the provider the service's own (which names the app signed in to)?"""
    builtin = context.config.builtin_provider
    return builtin is not None and context.oidc.issuer.rstrip("/") == builtin.issuer


@attrs.frozen(slots=False)  # no slots: SignIn joins it with the other parts
class Flow:
    """The sign-in flow's two paths on the login host."""

    context: GateContext

    def start(
        self, args: Mapping[str, str], *, client_ip: str, request_id: str, accept: bytes | None
    ) -> defer.Deferred[Reply]:
        """
        C{/.appproxy/sign-in?r=...} on the login host: begin the
        authorization code flow for the app named in the sealed request.
        """
        context = self.context
        requester = Requester(client_ip, request_id, accept)
        now = context.now()

        def refuse(reason: str) -> defer.Deferred[Reply]:
            return defer.succeed(context.failure_page("state", reason, requester, 400))

        try:
            request = context.sealer.unseal(args.get("r", ""), purpose="sign-in-request", now=now)
        except InvalidCookie:
            return refuse("The sign-in link is invalid or has expired. Open the app again.")
        app = context.apps.get(str(request.get("app")))
        if app is None or not app.signs_in:
            return refuse("The sign-in is for an app that is no longer published.")
        binding = BrowserBinding.from_text(request.get("binding"))
        if binding is None:
            return refuse("The sign-in link is invalid or has expired. Open the app again.")
        step_up = request.get("step_up") is True
        prompt = request.get("prompt")
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier, challenge = new_pkce()
        flow = context.sealer.seal(
            "flow",
            {
                "state": state,
                "nonce": nonce,
                "verifier": verifier,
                "app": app.name,
                "target": str(request.get("target", "")),
                "step_up": step_up,
                "reauth": prompt == "login",
                "binding": binding.to_text(),
            },
            now + FLOW_LIFETIME,
        )

        def to_provider(metadata: Any) -> Reply:
            url = authorization_url(
                metadata,
                context.relying_party.settings,
                state=state,
                nonce=nonce,
                code_challenge=challenge,
                prompt="login" if step_up or prompt == "login" else None,
                acr_values=context.oidc.step_up_acr_values if step_up else None,
            )
            if _is_builtin_provider(context):
                # The built-in provider names the app on its sign-in page.
                url += "&" + urlencode({APP_PARAMETER: app.name})
            return redirect(url, set_cookie(flow_cookie_name(state), flow, max_age=FLOW_LIFETIME))

        def failed(failure: Any) -> Reply:
            error = failure.value
            reason = (
                error.reason
                if isinstance(error, SignInError)
                else "The identity provider could not be reached."
            )
            log.warn("Sign-in discovery failed: {reason}", reason=str(error))
            return context.failed(
                "discovery", reason, app=app.name, user=None, requester=requester, status=502
            )

        return context.relying_party.metadata().addCallbacks(to_provider, failed)

    def callback(
        self,
        args: Mapping[str, str],
        cookies: Mapping[str, str],
        *,
        client_ip: IPAddress,
        request_id: str,
        accept: bytes | None,
        user_agent: Sequence[bytes] | None = None,
    ) -> defer.Deferred[Reply]:
        """
        The redirect URI: finish the sign-in and hand the session to the app.

        @param user_agent: the request's C{User-Agent} values, for the sign-in log.
        """
        agent = user_agent[0][:512].decode("latin-1") if user_agent else None
        requester = Requester(ip_text(client_ip), request_id, accept, agent or None)
        return defer.ensureDeferred(self._callback(args, cookies, client_ip, requester))

    async def _callback(
        self,
        args: Mapping[str, str],
        cookies: Mapping[str, str],
        client_ip: IPAddress,
        requester: Requester,
    ) -> Reply:
        context = self.context
        now = context.now()
        state = args.get("state", "")
        cookie_name = flow_cookie_name(state) if state.isascii() else FLOW_COOKIE_PREFIX
        clear = clear_cookie(cookie_name)
        app_name = "-"
        user: str | None = None

        def fail(step: str, reason: str, status: int = 401) -> Reply:
            context.failures.record(user, requester.client_ip, now)
            return context.failed(
                step,
                reason,
                app=app_name,
                user=user,
                requester=requester,
                status=status,
                headers=(clear,),
            )

        flow_value = cookies.get(cookie_name) if state else None
        if not flow_value:
            if "error" in args and not state:
                return fail("authorization", _provider_error(args), 400)
            return fail(
                "state",
                "This browser did not start this sign-in, or it took longer than"
                f" {FLOW_LIFETIME // 60} minutes. Open the app again to sign in.",
                400,
            )
        try:
            flow = context.sealer.unseal(flow_value, purpose="flow", now=now)
        except InvalidCookie:
            return fail("state", "The sign-in has expired. Open the app again to sign in.", 400)
        if not secrets.compare_digest(str(flow.get("state", "")), state):
            return fail("state", "The sign-in does not match this browser's sign-in.", 400)
        app_name = str(flow.get("app"))
        app = context.apps.get(app_name)
        if app is None or not app.signs_in:
            return fail("state", "The sign-in is for an app that is no longer published.", 400)
        binding = BrowserBinding.from_text(flow.get("binding"))
        if binding is None:
            return fail("state", "The sign-in has expired. Open the app again to sign in.", 400)
        try:
            metadata = await context.relying_party.metadata()
            code = check_authorization_response(args, expected_state=state, metadata=metadata)
            tokens = await context.relying_party.exchange_code(code, str(flow["verifier"]))
            claims = await context.relying_party.verify(tokens.id_token, str(flow["nonce"]))
        except SignInError as e:
            return fail(e.step, e.reason, 502 if e.step in ("discovery", "token") else 401)
        except Exception:
            log.failure("Sign-in failed unexpectedly")
            return fail("token", "The identity provider could not be reached.", 502)

        built = session_from_claims(app, context.oidc, claims, now)
        if isinstance(built, str):
            return fail("id-token", built)
        session = built
        user = session.user
        target = str(flow.get("target", ""))
        decision = context.decide(app, session, client_ip, now)
        step = next_step(
            decision,
            step_up_done=flow.get("step_up") is True,
            reauth_done=flow.get("reauth") is True,
        )
        if step == "step-up":
            context.record(
                "mfa-required",
                app.name,
                user,
                requester,
                step="policy",
                policy=decision.policy,
                detail=decision.reason,
                session=session,
            )
        if step in ("step-up", "reauthenticate"):
            reply = context.send_to_sign_in(
                app,
                b"GET",
                target.encode(),
                requester,
                binding=binding,
                step_up=step == "step-up",
                prompt="login" if step == "reauthenticate" else None,
            )
            return attrs.evolve(reply, headers=(*reply.headers, clear))
        if step == "refuse":
            return context.refused(
                decision, app, session.user, requester, headers=(clear,), session=session
            )

        try:
            token_ref = await context.database.store_reference(
                "id-token", tokens.id_token, session.expires_at
            )
            session = attrs.evolve(session, token_ref=token_ref)
            cookie = await self._encode(app, session)
        except CookieTooLarge:
            return fail(
                "session",
                "Your account has more claims than a session cookie can carry.",
                500,
            )
        # Recorded before the browser gets the cookie, so that it can be listed and ended.
        if not await context.sessions.record_issued(session, requester.client_ip):
            return fail("session", "The session could not be recorded. Try again.", 500)
        context.record(
            "success", app.name, user, requester, detail=", ".join(session.amr), session=session
        )
        hand_off = context.sealer.seal(
            "hand-off",
            {
                "app": app.name,
                "cookie": cookie,
                "target": target,
                "jti": secrets.token_urlsafe(16),
                "binding": binding.to_text(),
                "max_age": session.expires_at - now if app.persistent_cookie else None,
            },
            now + HAND_OFF_LIFETIME,
        )
        origin = app.external_url[: app.external_url.index("/", len("https://"))]
        return redirect(f"{origin}{HAND_OFF_PATH.decode()}?{urlencode({'h': hand_off})}", clear)

    async def _encode(self, app: AppConfig, session: Session) -> str:
        """
        The app's cookie for C{session}; its groups are kept in the state
        database, and the cookie names them, when they make it too large.
        """
        try:
            return self.context.codec.encode(session, app.cookie_name)
        except CookieTooLarge:
            if not session.groups:
                raise
        ref = await self.context.database.store_reference(
            "groups", list(session.groups), session.expires_at
        )
        unlisted = attrs.evolve(session, groups=(), groups_ref=ref)
        return self.context.codec.encode(unlisted, app.cookie_name)
