"""
L{GateContext}: what the gate, the sign-in flow and the app's cookie paths
share: the configuration, the cookie codec and sealer, the relying party,
the state database, the sign-in log, the clock; and the steps they all take
(log a sign-in event, refuse, send the browser to sign in, read the app's
session cookie).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlencode, urlsplit

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from appproxy.access.cookie import InvalidCookie, Sealer, SessionCookieCodec
from appproxy.access.evaluation import Decision
from appproxy.access.policy import PolicySet
from appproxy.access.redirects import safe_redirect_target
from appproxy.access.risk import AnonymizerList, FailedSignIns
from appproxy.access.session import Session
from appproxy.config import AppConfig, OidcConfig, ServiceConfig
from appproxy.gate.binding import BrowserBinding, bind_browser
from appproxy.gate.claims import decide, refusal
from appproxy.gate.memo import AdmitMemo
from appproxy.gate.paths import FLOW_LIFETIME, SIGN_IN_PATH
from appproxy.gate.replies import Header, Reply, Requester, error_page, failure_page, redirect
from appproxy.gate.sessions import SessionRegistry
from appproxy.http.forwarding import IPAddress
from appproxy.identity.assertion import AssertionSigner
from appproxy.observe.metrics import SIGN_INS
from appproxy.observe.requests import app_metrics
from appproxy.oidc.client import RelyingParty
from appproxy.state.database import StateDatabase
from appproxy.state.signinlog import SignInLog
from appproxy.state.signins import SignInEvent

__all__ = ["GateContext"]

log = Logger()


@attrs.define(kw_only=True)
class GateContext:
    """
    The sign-in machinery's collaborators, shared by every request; a reload
    replaces some of them (L{set_config}, and the setup's own assignments).

    @ivar apps: the configured apps, by name (from C{config}).
    @ivar login_origin: the login host's origin (from C{oidc.callback_url}).
    """

    config: ServiceConfig
    oidc: OidcConfig
    relying_party: RelyingParty
    codec: SessionCookieCodec
    sealer: Sealer
    policies: PolicySet
    failures: FailedSignIns
    anonymizers: AnonymizerList | None
    database: StateDatabase
    sign_in_log: SignInLog
    assertion: AssertionSigner
    clock: IReactorTime
    #: The sessions issued and ended; the revocations every request is checked against.
    sessions: SessionRegistry
    apps: dict[str, AppConfig] = attrs.field(init=False)
    login_origin: str = attrs.field(init=False)
    #: The admissions of this second (L{appproxy.gate.memo}).
    admitted: AdmitMemo = attrs.field(init=False, factory=AdmitMemo)

    def __attrs_post_init__(self) -> None:
        self.set_config(self.config, self.policies)

    def set_config(self, config: ServiceConfig, policies: PolicySet) -> None:
        """Take a new configuration (at start and on reload)."""
        self.config = config
        self.policies = policies
        self.apps = {app.name: app for app in config.apps}
        self.admitted.clear()
        login = urlsplit(self.oidc.callback_url)
        self.login_origin = f"https://{login.netloc}"

    def now(self) -> int:
        return int(self.clock.seconds())

    # -- pages and the sign-in log ---------------------------------------------

    def error_page(
        self,
        status: int,
        title: str,
        detail: str,
        requester: Requester,
        *,
        headers: Sequence[Header] = (),
    ) -> Reply:
        """The service's error page, now."""
        return error_page(
            status, title, detail, requester=requester, now=self.clock.seconds(), headers=headers
        )

    def failure_page(self, step: str, reason: str, requester: Requester, status: int) -> Reply:
        """The page of a sign-in that failed at C{step}, now, not logged."""
        return failure_page(
            step, reason, requester=requester, now=self.clock.seconds(), status=status
        )

    def record(
        self,
        result: str,
        app: str,
        user: str | None,
        requester: Requester,
        *,
        step: str | None = None,
        policy: str | None = None,
        detail: str = "",
        session: Session | None = None,
    ) -> None:
        """Log a sign-in event for C{requester} (and C{session}'s sub and iss), and count it."""
        SIGN_INS.labels(result, step or "none").inc()
        self.sign_in_log.record(
            SignInEvent(
                time=self.clock.seconds(),
                user=user,
                app=app,
                client_address=requester.client_ip,
                result=result,
                step=step,
                policy=policy,
                request_id=requester.request_id,
                detail=detail,
                subject=None if session is None else session.subject,
                issuer=None if session is None else session.issuer,
                user_agent=requester.user_agent,
            )
        )

    def failed(
        self,
        step: str,
        reason: str,
        *,
        app: str,
        user: str | None,
        requester: Requester,
        status: int = 401,
        headers: Sequence[Header] = (),
    ) -> Reply:
        """Log a sign-in that failed at C{step}; the page that says so."""
        self.record("failure", app, user, requester, step=step, detail=reason)
        return failure_page(
            step,
            reason,
            requester=requester,
            now=self.clock.seconds(),
            status=status,
            headers=headers,
        )

    # -- decisions ---------------------------------------------------------------

    def session(self, app: AppConfig, cookies: Mapping[str, str], now: int) -> Session | None:
        """The session of C{app}'s cookie among C{cookies}, if it is valid."""
        value = cookies.get(app.cookie_name)
        if not value:
            return None
        try:
            return self.codec.decode(value, app=app.name, cookie_name=app.cookie_name, now=now)
        except InvalidCookie as e:
            log.debug("Session cookie refused for {app}: {why}", app=app.name, why=e.reason)
            return None

    def decision_inputs(self) -> tuple[object, ...]:
        """What a decision depends on besides the app, session, address and time."""
        return (self.policies, self.anonymizers, self.failures, self.failures.changes)

    def decide(self, app: AppConfig, session: Session, client_ip: IPAddress, now: int) -> Decision:
        """Assignment and policy for C{session}, now, with the risks seen so far."""
        decision = decide(
            self.policies, self.failures, self.anonymizers, app, session, client_ip, now
        )
        app_metrics(app.name).decision(decision.outcome).inc()
        return decision

    def refused(
        self,
        decision: Decision,
        app: AppConfig,
        user: str,
        requester: Requester,
        headers: Sequence[Header] = (),
        session: Session | None = None,
    ) -> Reply:
        """Log a refusal by assignment or policy; the 403 page that names it."""
        refused = refusal(decision)
        self.record(
            refused.result,
            app.name,
            user,
            requester,
            step=refused.step,
            policy=decision.policy,
            detail=decision.reason,
            session=session,
        )
        return self.error_page(403, refused.title, decision.reason, requester, headers=headers)

    def send_to_sign_in(
        self,
        app: AppConfig,
        method: bytes,
        uri: bytes,
        requester: Requester,
        *,
        cookies: Mapping[str, str] | None = None,
        binding: BrowserBinding | None = None,
        step_up: bool = False,
        prompt: str | None = None,
    ) -> Reply:
        """
        Send the browser to the login host to sign in to C{app}, then back
        to C{uri}; a page instead if the request's body would be lost.

        @param cookies: the request's cookies, on the app's host: the sign-in
            is bound to this browser (L{bind_browser}).
        @param binding: the binding of the sign-in this one continues (a
            step-up, from the login host); no new one is made.
        """
        if method not in (b"GET", b"HEAD"):
            # A redirect would lose the request's body.
            return self.error_page(
                401,
                "Sign-in required",
                f"Your session for {app.name} has ended. Open {app.external_url} to sign in"
                " again, then repeat what you were doing.",
                requester,
                headers=((b"www-authenticate", b'Cookie realm="appproxy"'),),
            )
        headers: list[Header] = []
        if binding is None:
            binding, set_binding = bind_browser(cookies or {})
            if set_binding is not None:
                headers.append(set_binding)
        target = safe_redirect_target(uri.decode("latin-1"), app.external_url)
        sealed = self.sealer.seal(
            "sign-in-request",
            {
                "app": app.name,
                "target": target,
                "step_up": step_up,
                "prompt": prompt,
                "binding": binding.to_text(),
            },
            self.now() + FLOW_LIFETIME,
        )
        return redirect(f"{self.login_origin}{SIGN_IN_PATH}?{urlencode({'r': sealed})}", *headers)
