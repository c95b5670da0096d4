"""
Pre-authentication: who the user is, and whether policy lets them in.

L{SignIn} holds the sign-in machinery the front end uses:

  - on an app's host, L{SignIn.admit} reads the app's session cookie and
    evaluates conditional access for every request; a request without a
    valid session is sent to the login host to sign in;
  - on the login host, L{SignIn.start} begins the authorization code flow
    (PKCE, C{state} bound to a short-lived flow cookie, C{nonce}) and
    L{SignIn.callback} finishes it: the code is exchanged, the ID token
    verified, assignment and policy evaluated, a session made;
  - back on the app's host, L{SignIn.hand_off} turns the single-use,
    short-lived, encrypted hand-off into the app's own cookie, and
    L{SignIn.sign_out} clears it.

Every answer other than "go on to the app" is a L{Reply} the front end
writes as it is.  Every sign-in attempt and decision goes to the sign-in log.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode, urlsplit

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from appproxy.access.policy import AccessRequest, Decision, PolicySet, evaluate
from appproxy.access.redirects import safe_redirect_target
from appproxy.access.risk import AnonymizerList, FailedSignIns, risk_signals
from appproxy.access.session import (
    ClaimValue,
    CookieTooLarge,
    InvalidCookie,
    Sealer,
    Session,
    SessionCookieCodec,
)
from appproxy.config.loader import AppConfig, OidcConfig, ServiceConfig
from appproxy.frontend.errorpage import ErrorPage, render_error
from appproxy.identity.headers import AssertionSigner, UnsafeClaimValue, identity_headers
from appproxy.oidc.client import (
    RelyingParty,
    SignInError,
    authorization_url,
    check_authorization_response,
    new_pkce,
)
from appproxy.state.database import StateDatabase
from appproxy.state.signinlog import SignInEvent, SignInLog

__all__ = ["Admit", "Reply", "SignIn", "parse_cookies"]

log = Logger()

#: The path on the login host that starts a sign-in.
SIGN_IN_PATH = "/.appproxy/sign-in"
#: Paths on every app host that signs users in.
HAND_OFF_PATH = b"/.appproxy/session"
SIGN_OUT_PATH = b"/.appproxy/sign-out"
#: How long a sign-in may take, from the app's redirect to the callback.
FLOW_LIFETIME = 600
#: How long the hand-off from the login host to the app's host is valid.
HAND_OFF_LIFETIME = 60
FLOW_COOKIE_PREFIX = "__Host-appproxy-flow-"

_HTML = b"text/html; charset=utf-8"

#: What each failing step is called on the error page.
STEP_LABELS: Mapping[str, str] = {
    "discovery": "reaching the identity provider",
    "authorization": "signing in at the identity provider",
    "state": "matching the sign-in to this browser",
    "token": "redeeming the authorization code",
    "id-token": "verifying the ID token",
    "assignment": "checking that you are assigned to the app",
    "policy": "applying conditional access policy",
    "hand-off": "returning to the app",
    "session": "making the session",
}


@attrs.frozen
class Reply:
    """A complete answer to the browser (redirect or page)."""

    status: int
    content_type: bytes = _HTML
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()


@attrs.frozen
class Admit:
    """The request may go on to the app, with these identity headers."""

    headers: tuple[tuple[bytes, bytes], ...]
    user: str


def parse_cookies(values: Sequence[bytes] | None) -> dict[str, str]:
    """
    The cookies of C{Cookie} headers, by name (the first of a name wins, as
    browsers send the most specific first).  Malformed pairs are ignored.
    """
    cookies: dict[str, str] = {}
    for value in values or ():
        for pair in value.decode("latin-1").split(";"):
            name, eq, content = pair.strip().partition("=")
            if eq and name and name not in cookies:
                cookies[name] = content.strip()
    return cookies


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_cookie(
    name: str, value: str, *, http_only: bool = True, max_age: int | None = None
) -> tuple[bytes, bytes]:
    parts = [f"{name}={value}", "Path=/", "Secure"]
    if http_only:
        parts.append("HttpOnly")
    parts.append("SameSite=Lax")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return (b"set-cookie", "; ".join(parts).encode("ascii"))


def _clear_cookie(name: str) -> tuple[bytes, bytes]:
    return (b"set-cookie", f"{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0".encode())


def _redirect(location: str, *headers: tuple[bytes, bytes]) -> Reply:
    return Reply(
        status=302,
        body=b"",
        headers=((b"location", location.encode("ascii")), *headers),
    )


def flow_cookie_name(state: str) -> str:
    """The flow cookie of the sign-in whose C{state} is C{state}."""
    return FLOW_COOKIE_PREFIX + hashlib.sha256(state.encode("ascii")).hexdigest()[:16]


class SignIn:
    """
    The service's sign-in machinery, shared by every request.
    """

    def __init__(
        self,
        *,
        config: ServiceConfig,
        oidc: OidcConfig,
        relying_party: RelyingParty,
        codec: SessionCookieCodec,
        sealer: Sealer,
        policies: PolicySet,
        failures: FailedSignIns,
        anonymizers: AnonymizerList | None,
        database: StateDatabase,
        sign_in_log: SignInLog,
        assertion: AssertionSigner,
        clock: IReactorTime,
    ) -> None:
        self.oidc = oidc
        self.relying_party = relying_party
        self.codec = codec
        self.sealer = sealer
        self.failures = failures
        self.anonymizers = anonymizers
        self.database = database
        self.sign_in_log = sign_in_log
        self.assertion = assertion
        self.clock = clock
        self.set_config(config, policies)

    def set_config(self, config: ServiceConfig, policies: PolicySet) -> None:
        """Take a new configuration (at start and on reload)."""
        self.config = config
        self.policies = policies
        self.apps = {app.name: app for app in config.apps}
        login = urlsplit(self.oidc.callback_url)
        self.login_origin = f"https://{login.netloc}"

    def now(self) -> int:
        return int(self.clock.seconds())

    # -- pages -----------------------------------------------------------------

    def error_page(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        request_id: str,
        accept: bytes | None,
        source: str = "appproxy service",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Reply:
        page = ErrorPage(
            status=status,
            title=title,
            detail=detail,
            source=source,
            request_id=request_id,
            timestamp=_timestamp(self.clock.seconds()),
        )
        content_type, body = render_error(page, accept)
        return Reply(status=status, content_type=content_type, body=body, headers=tuple(headers))

    def failure_page(
        self,
        step: str,
        reason: str,
        *,
        request_id: str,
        accept: bytes | None,
        status: int = 401,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Reply:
        label = STEP_LABELS.get(step, step)
        source = (
            "identity provider"
            if step in ("discovery", "authorization", "token")
            else "appproxy service"
        )
        return self.error_page(
            status,
            "Sign-in failed",
            f"The sign-in failed while {label} (step: {step}). {reason}",
            request_id=request_id,
            accept=accept,
            source=source,
            headers=headers,
        )

    def failed(
        self,
        step: str,
        reason: str,
        *,
        app: str,
        user: str | None,
        client_ip: str,
        request_id: str,
        accept: bytes | None,
        status: int = 401,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Reply:
        """Log a sign-in that failed at C{step}; the page that says so."""
        self.record(
            result="failure",
            app=app,
            user=user,
            client_ip=client_ip,
            request_id=request_id,
            step=step,
            detail=reason,
        )
        return self.failure_page(
            step, reason, request_id=request_id, accept=accept, status=status, headers=headers
        )

    def record(
        self,
        *,
        result: str,
        app: str,
        user: str | None,
        client_ip: str,
        request_id: str,
        step: str | None = None,
        policy: str | None = None,
        detail: str = "",
    ) -> None:
        self.sign_in_log.record(
            SignInEvent(
                time=self.clock.seconds(),
                user=user,
                app=app,
                client_address=client_ip,
                result=result,
                step=step,
                policy=policy,
                request_id=request_id,
                detail=detail,
            )
        )

    # -- on the app's host ---------------------------------------------------------

    def admit(
        self,
        app: AppConfig,
        *,
        method: bytes,
        uri: bytes,
        cookies: Mapping[str, str],
        client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        request_id: str,
        accept: bytes | None,
    ) -> Admit | Reply | defer.Deferred[Admit | Reply]:
        """
        Decide on one request to C{app}: go on (with identity headers), or a
        reply (sign in first, refused by policy).
        """
        now = self.now()
        value = cookies.get(app.cookie_name)
        session: Session | None = None
        if value:
            try:
                session = self.codec.decode(
                    value, app=app.name, cookie_name=app.cookie_name, now=now
                )
            except InvalidCookie as e:
                log.debug("Session cookie refused for {app}: {why}", app=app.name, why=e.reason)
        if session is None:
            return self._send_to_sign_in(app, method, uri, request_id, accept)
        if session.groups_ref is None:
            return self._decide(
                app, session, session.groups, method, uri, client_ip, request_id, accept, now
            )
        groups = self.database.cached_reference("groups", session.groups_ref, now)
        if isinstance(groups, list):
            return self._decide(
                app, session, tuple(groups), method, uri, client_ip, request_id, accept, now
            )
        loading = self.database.load_reference("groups", session.groups_ref, now)

        def loaded(stored: object) -> Admit | Reply:
            if not isinstance(stored, list):
                return self._send_to_sign_in(app, method, uri, request_id, accept)
            return self._decide(
                app, session, tuple(stored), method, uri, client_ip, request_id, accept, now
            )

        return loading.addCallback(loaded)

    def _decide(
        self,
        app: AppConfig,
        session: Session,
        groups: tuple[str, ...],
        method: bytes,
        uri: bytes,
        client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        request_id: str,
        accept: bytes | None,
        now: int,
    ) -> Admit | Reply:
        decision = self._evaluate(app, session, groups, client_ip, now)
        if decision.outcome == "mfa":
            return self._send_to_sign_in(app, method, uri, request_id, accept, step_up=True)
        if decision.outcome == "reauthenticate":
            return self._send_to_sign_in(app, method, uri, request_id, accept, prompt="login")
        if not decision.allowed:
            return self._refused(decision, app, session.user, str(client_ip), request_id, accept)
        if groups is not session.groups:
            session = attrs.evolve(session, groups=groups)
        try:
            headers = identity_headers(app.headers, session)
        except UnsafeClaimValue as e:
            return self.error_page(
                403,
                "Identity cannot be passed on",
                f"The claim {e.claim!r} of your account contains characters that cannot be"
                " sent in an HTTP header, so the request was not forwarded.",
                request_id=request_id,
                accept=accept,
            )
        if app.jwt_assertion:
            token = self.assertion.sign(
                session, audience=app.external_url, issuer=self.login_origin, now=now
            )
            headers.append((b"x-appproxy-jwt-assertion", token.encode("ascii")))
        return Admit(headers=tuple(headers), user=session.user)

    def _evaluate(
        self,
        app: AppConfig,
        session: Session,
        groups: Sequence[str],
        client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        now: int,
    ) -> Decision:
        risks = risk_signals(self.failures, self.anonymizers, session.user, str(client_ip), now)
        return evaluate(
            self.policies,
            app.assignment,
            AccessRequest(
                app=app.name,
                user=session.user,
                groups=frozenset(groups),
                client_ip=client_ip,
                amr=frozenset(session.amr),
                acr=session.acr,
                auth_time=session.auth_time,
                now=now,
                risks=risks,
            ),
        )

    def _refused(
        self,
        decision: Decision,
        app: AppConfig,
        user: str,
        client_ip: str,
        request_id: str,
        accept: bytes | None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Reply:
        """Log a refusal by assignment or policy; the 403 page that names it."""
        assigned = decision.outcome != "not-assigned"
        self.record(
            result="blocked" if assigned else "not-assigned",
            app=app.name,
            user=user,
            client_ip=client_ip,
            request_id=request_id,
            step="policy" if assigned else "assignment",
            policy=decision.policy,
            detail=decision.reason,
        )
        if decision.outcome == "not-assigned":
            title = "Not assigned to this app"
        else:
            title = f"Blocked by policy '{decision.policy}'"
        return self.error_page(
            403, title, decision.reason, request_id=request_id, accept=accept, headers=headers
        )

    def _send_to_sign_in(
        self,
        app: AppConfig,
        method: bytes,
        uri: bytes,
        request_id: str,
        accept: bytes | None,
        *,
        step_up: bool = False,
        prompt: str | None = None,
    ) -> Reply:
        if method not in (b"GET", b"HEAD"):
            # A redirect would lose the request's body.
            return self.error_page(
                401,
                "Sign-in required",
                f"Your session for {app.name} has ended. Open {app.external_url} to sign in"
                " again, then repeat what you were doing.",
                request_id=request_id,
                accept=accept,
                headers=((b"www-authenticate", b'Cookie realm="appproxy"'),),
            )
        target = safe_redirect_target(uri.decode("latin-1"), app.external_url)
        sealed = self.sealer.seal(
            "sign-in-request",
            {"app": app.name, "target": target, "step_up": step_up, "prompt": prompt},
            self.now() + FLOW_LIFETIME,
        )
        return _redirect(f"{self.login_origin}{SIGN_IN_PATH}?{urlencode({'r': sealed})}")

    def hand_off(
        self,
        app: AppConfig,
        args: Mapping[str, str],
        *,
        client_ip: str,
        request_id: str,
        accept: bytes | None,
    ) -> defer.Deferred[Reply]:
        """
        C{/.appproxy/session?h=...} on the app's host: set the app's cookie
        from a single-use hand-off, then go to the URL first asked for.
        """
        now = self.now()

        def fail(reason: str) -> Reply:
            return self.failed(
                "hand-off",
                reason,
                app=app.name,
                user=None,
                client_ip=client_ip,
                request_id=request_id,
                accept=accept,
            )

        try:
            payload = self.sealer.unseal(args.get("h", ""), purpose="hand-off", now=now)
        except InvalidCookie:
            return defer.succeed(
                fail("The link that brings you back to the app is invalid or has expired.")
            )
        if payload.get("app") != app.name:
            return defer.succeed(fail("The sign-in was for another app."))
        jti = str(payload.get("jti", ""))
        cookie = str(payload.get("cookie", ""))
        target = safe_redirect_target(str(payload.get("target", "")), app.external_url)
        max_age = payload.get("max_age")

        def used(first: bool) -> Reply:
            if not first:
                return fail("This sign-in link was already used; sign in again.")
            return _redirect(
                target,
                _set_cookie(
                    app.cookie_name,
                    cookie,
                    http_only=app.http_only_cookie,
                    max_age=max_age if isinstance(max_age, int) else None,
                ),
            )

        return self.database.use_once("hand-off", jti, now + HAND_OFF_LIFETIME, now).addCallback(
            used
        )

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
        C{/.appproxy/sign-out}: clear the app's session; send the browser to
        the provider's end-session endpoint when it has one.
        """
        now = self.now()
        session: Session | None = None
        value = cookies.get(app.cookie_name)
        if value:
            try:
                session = self.codec.decode(
                    value, app=app.name, cookie_name=app.cookie_name, now=now
                )
            except InvalidCookie:
                session = None
        clear = _clear_cookie(app.cookie_name)
        self.record(
            result="signed-out",
            app=app.name,
            user=session.user if session else None,
            client_ip=client_ip,
            request_id=request_id,
        )
        signed_out = Reply(
            status=200,
            body=_signed_out_page(app.name),
            headers=(clear,),
        )
        token: defer.Deferred[object | None]
        if session is not None and session.token_ref is not None:
            token = self.database.load_reference("id-token", session.token_ref, now)
        else:
            token = defer.succeed(None)

        def with_token(id_token: object | None) -> defer.Deferred[Reply]:
            hint = id_token if isinstance(id_token, str) else None
            ending = defer.maybeDeferred(self.relying_party.end_session_url, hint, None)

            def to_provider(url: str | None) -> Reply:
                return _redirect(url, clear) if url else signed_out

            def no_provider(failure: Any) -> Reply:
                log.info("Sign-out: the provider's metadata is unavailable: {e}", e=failure.value)
                return signed_out

            return ending.addCallbacks(to_provider, no_provider)

        return token.addCallback(with_token)

    # -- on the login host -----------------------------------------------------------

    def start(
        self, args: Mapping[str, str], *, client_ip: str, request_id: str, accept: bytes | None
    ) -> defer.Deferred[Reply]:
        """
        C{/.appproxy/sign-in?r=...} on the login host: begin the
        authorization code flow for the app named in the sealed request.
        """
        now = self.now()
        try:
            request = self.sealer.unseal(args.get("r", ""), purpose="sign-in-request", now=now)
        except InvalidCookie:
            return defer.succeed(
                self.failure_page(
                    "state",
                    "The sign-in link is invalid or has expired. Open the app again.",
                    request_id=request_id,
                    accept=accept,
                    status=400,
                )
            )
        app = self.apps.get(str(request.get("app")))
        if app is None or not app.signs_in:
            return defer.succeed(
                self.failure_page(
                    "state",
                    "The sign-in is for an app that is no longer published.",
                    request_id=request_id,
                    accept=accept,
                    status=400,
                )
            )
        step_up = request.get("step_up") is True
        prompt = request.get("prompt")
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier, challenge = new_pkce()
        flow = self.sealer.seal(
            "flow",
            {
                "state": state,
                "nonce": nonce,
                "verifier": verifier,
                "app": app.name,
                "target": str(request.get("target", "")),
                "step_up": step_up,
                "reauth": prompt == "login",
            },
            now + FLOW_LIFETIME,
        )

        def redirect(metadata: Any) -> Reply:
            url = authorization_url(
                metadata,
                self.relying_party.settings,
                state=state,
                nonce=nonce,
                code_challenge=challenge,
                prompt="login" if step_up or prompt == "login" else None,
                acr_values=self.oidc.step_up_acr_values if step_up else None,
            )
            return _redirect(url, _set_cookie(flow_cookie_name(state), flow, max_age=FLOW_LIFETIME))

        def failed(failure: Any) -> Reply:
            error = failure.value
            reason = (
                error.reason
                if isinstance(error, SignInError)
                else "The identity provider could not be reached."
            )
            log.warn("Sign-in discovery failed: {reason}", reason=str(error))
            return self.failed(
                "discovery",
                reason,
                app=app.name,
                user=None,
                client_ip=client_ip,
                request_id=request_id,
                accept=accept,
                status=502,
            )

        return self.relying_party.metadata().addCallbacks(redirect, failed)

    def callback(
        self,
        args: Mapping[str, str],
        cookies: Mapping[str, str],
        *,
        client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        request_id: str,
        accept: bytes | None,
    ) -> defer.Deferred[Reply]:
        """
        The redirect URI: finish the sign-in and hand the session to the app.
        """
        return defer.ensureDeferred(
            self._callback(args, cookies, client_ip=client_ip, request_id=request_id, accept=accept)
        )

    async def _callback(
        self,
        args: Mapping[str, str],
        cookies: Mapping[str, str],
        *,
        client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        request_id: str,
        accept: bytes | None,
    ) -> Reply:
        now = self.now()
        address = str(client_ip)
        state = args.get("state", "")
        cookie_name = flow_cookie_name(state) if state.isascii() else FLOW_COOKIE_PREFIX
        clear = _clear_cookie(cookie_name)
        app_name = "-"
        user: str | None = None

        def fail(step: str, reason: str, status: int = 401) -> Reply:
            self.failures.record(user, address, now)
            return self.failed(
                step,
                reason,
                app=app_name,
                user=user,
                client_ip=address,
                request_id=request_id,
                accept=accept,
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
            flow = self.sealer.unseal(flow_value, purpose="flow", now=now)
        except InvalidCookie:
            return fail("state", "The sign-in has expired. Open the app again to sign in.", 400)
        if not secrets.compare_digest(str(flow.get("state", "")), state):
            return fail("state", "The sign-in does not match this browser's sign-in.", 400)
        app_name = str(flow.get("app"))
        app = self.apps.get(app_name)
        if app is None or not app.signs_in:
            return fail("state", "The sign-in is for an app that is no longer published.", 400)
        try:
            metadata = await self.relying_party.metadata()
            code = check_authorization_response(args, expected_state=state, metadata=metadata)
            tokens = await self.relying_party.exchange_code(code, str(flow["verifier"]))
            claims = await self.relying_party.verify(tokens.id_token, str(flow["nonce"]))
        except SignInError as e:
            return fail(e.step, e.reason, 502 if e.step in ("discovery", "token") else 401)
        except Exception:
            log.failure("Sign-in failed unexpectedly")
            return fail("token", "The identity provider could not be reached.", 502)

        built = self._session_from_claims(app, claims, now)
        if isinstance(built, str):
            return fail("id-token", built)
        session = built
        user = session.user
        decision = self._evaluate(app, session, session.groups, client_ip, now)
        step_up_done = flow.get("step_up") is True
        reauth_done = flow.get("reauth") is True
        if decision.outcome == "mfa" and not step_up_done:
            self.record(
                result="mfa-required",
                app=app.name,
                user=user,
                client_ip=address,
                request_id=request_id,
                step="policy",
                policy=decision.policy,
                detail=decision.reason,
            )
            reply = self._send_to_sign_in(
                app, b"GET", str(flow.get("target", "")).encode(), request_id, accept, step_up=True
            )
            return attrs.evolve(reply, headers=(*reply.headers, clear))
        if decision.outcome == "reauthenticate" and not reauth_done:
            reply = self._send_to_sign_in(
                app,
                b"GET",
                str(flow.get("target", "")).encode(),
                request_id,
                accept,
                prompt="login",
            )
            return attrs.evolve(reply, headers=(*reply.headers, clear))
        if not decision.allowed:
            return self._refused(
                decision, app, session.user, address, request_id, accept, headers=(clear,)
            )

        try:
            token_ref = await self.database.store_reference(
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
        self.record(
            result="success",
            app=app.name,
            user=user,
            client_ip=address,
            request_id=request_id,
            detail=", ".join(session.amr),
        )
        hand_off = self.sealer.seal(
            "hand-off",
            {
                "app": app.name,
                "cookie": cookie,
                "target": str(flow.get("target", "")),
                "jti": secrets.token_urlsafe(16),
                "max_age": session.expires_at - now if app.persistent_cookie else None,
            },
            now + HAND_OFF_LIFETIME,
        )
        origin = app.external_url[: app.external_url.index("/", len("https://"))]
        return _redirect(f"{origin}{HAND_OFF_PATH.decode()}?{urlencode({'h': hand_off})}", clear)

    async def _encode(self, app: AppConfig, session: Session) -> str:
        try:
            return self.codec.encode(session, app.cookie_name)
        except CookieTooLarge:
            if not session.groups:
                raise
        ref = await self.database.store_reference(
            "groups", list(session.groups), session.expires_at
        )
        return self.codec.encode(attrs.evolve(session, groups=(), groups_ref=ref), app.cookie_name)

    def _session_from_claims(
        self, app: AppConfig, claims: Mapping[str, object], now: int
    ) -> Session | str:
        """The session made of verified ID token claims, or why not."""
        oidc = self.oidc
        user = claims.get(oidc.username_claim)
        if not isinstance(user, str) or not user:
            return (
                f"The ID token has no {oidc.username_claim!r} claim to use as the user name"
                " (see oidc.username_claim)."
            )

        def strings(name: str) -> tuple[str, ...]:
            value = claims.get(name)
            if isinstance(value, str):
                return (value,)
            if isinstance(value, list):
                return tuple(str(item) for item in value if isinstance(item, str | int))
            return ()

        def text(name: str) -> str | None:
            value = claims.get(name)
            return value if isinstance(value, str) and value else None

        extra: dict[str, ClaimValue] = {}
        known = {"user", "sub", "name", "email", "groups", "roles", "amr", "acr"}
        for _, claim in app.headers:
            if claim in known or claim in extra:
                continue
            value = claims.get(claim)
            if isinstance(value, str):
                extra[claim] = value
            elif isinstance(value, bool | int | float):
                extra[claim] = str(value).lower() if isinstance(value, bool) else str(value)
            elif isinstance(value, list):
                extra[claim] = tuple(str(item) for item in value if isinstance(item, str | int))
        exp = claims.get("exp")
        token_expiry = int(exp) if isinstance(exp, int | float) else now + app.session_lifetime
        iat = claims.get("iat")
        auth_time = claims.get("auth_time", iat)
        return Session(
            app=app.name,
            user=user,
            subject=str(claims.get("sub")),
            issuer=str(claims.get("iss")),
            name=text("name"),
            email=text("email"),
            groups=strings(oidc.groups_claim),
            roles=strings("roles"),
            amr=strings("amr"),
            acr=text("acr"),
            claims=extra,
            auth_time=int(auth_time) if isinstance(auth_time, int | float) else now,
            issued_at=now,
            expires_at=min(token_expiry, now + app.session_lifetime),
        )


def _provider_error(args: Mapping[str, str]) -> str:
    error = args.get("error", "")[:100]
    return f"The identity provider refused the sign-in ({error!r})."


def _signed_out_page(app: str) -> bytes:
    return (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>Signed out</title><main><h1>You are signed out of {escape(app)}</h1>"
        "<p>You can close this window.</p></main></html>"
    ).encode()
