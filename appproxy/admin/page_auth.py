"""
Signing in to the admin page: the authorization code flow with PKCE from the
admin listener, with the service's own OpenID client (C{[oidc]}) and the
redirect URI C{[admin] url}C{/admin/callback}, then the administrator role
of the ID token checked as connector registration checks it
(L{appproxy.trust.admin_token.verify_admin_token}: C{[connectors]
admin_claim}/C{admin_value}).

The session is a cookie of the admin origin only (C{Path=/admin/}, Secure,
HttpOnly, C{SameSite=Strict}), sealed with the service's key ring
(L{appproxy.access.cookie.Sealer}, purpose C{admin-session}), for one hour.
The flow cookie (state, nonce, PKCE verifier) is C{SameSite=Lax}: the
provider's redirect back is a navigation from another site.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from twisted.logger import Logger

from appproxy.access.cookie import InvalidCookie, Sealer
from appproxy.config import ServiceConfig
from appproxy.oidc.authorize import authorization_url, check_authorization_response, new_pkce
from appproxy.oidc.client import RelyingParty
from appproxy.oidc.errors import SignInError
from appproxy.oidc.tokens import token_header
from appproxy.state.audit import audit
from appproxy.state.database import StateDatabase
from appproxy.trust.admin_token import AdminCheck, NotAdministrator, actor_name, verify_admin_token

__all__ = [
    "FLOW_COOKIE",
    "SESSION_COOKIE",
    "SESSION_LIFETIME",
    "PageAuth",
    "PageRefused",
    "cookie_header",
]

log = Logger()

#: The admin page's session cookie and its lifetime (seconds).
SESSION_COOKIE: Final = "appproxy-admin"
SESSION_LIFETIME: Final = 3600
#: The sign-in flow's cookie and its lifetime (seconds).
FLOW_COOKIE: Final = "appproxy-admin-flow"
FLOW_LIFETIME: Final = 600
CALLBACK_PATH: Final = "/admin/callback"


def cookie_header(name: str, value: str, max_age: int, same_site: str) -> tuple[bytes, bytes]:
    """A C{Set-Cookie} header for the admin origin's C{/admin/} paths only."""
    text = f"{name}={value}; Path=/admin/; Secure; HttpOnly; SameSite={same_site}"
    return (b"set-cookie", f"{text}; Max-Age={max_age}".encode("ascii"))


class PageRefused(Exception):
    """A failed sign-in: C{status} (400, 403, 502, 503) and a text safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@attrs.define
class PageAuth:
    """The admin page's sign-in, callback and session cookie."""

    config: ServiceConfig
    relying_party: Callable[[], RelyingParty | None]
    sealer: Callable[[], Sealer | None]
    reactor: Any
    database: StateDatabase
    _own: RelyingParty | None = attrs.field(default=None, init=False)
    _own_base: object = attrs.field(default=None, init=False)

    def _now(self) -> int:
        return int(self.reactor.seconds())

    def _parts(self) -> tuple[RelyingParty, Sealer]:
        """The admin page's relying party (the service's, with its redirect URI) and sealer."""
        url = self.config.admin.url
        main, sealer = self.relying_party(), self.sealer()
        if url is None or main is None or sealer is None:
            raise PageRefused(503, "The admin page needs [oidc] and [admin] url in service.toml.")
        settings = attrs.evolve(main.settings, redirect_uri=url + CALLBACK_PATH)
        if self._own is None or self._own_base is not main or self._own.settings != settings:
            if self._own is not None:
                self._own.close()
            self._own = RelyingParty(settings, clock=self.reactor, reactor=self.reactor)
            self._own_base = main
        return self._own, sealer

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None

    def session(self, cookies: Mapping[str, str]) -> dict[str, object] | None:
        """The signed-in administrator of a request's cookies (C{who}), or L{None}."""
        value = cookies.get(SESSION_COOKIE)
        sealer = self.sealer()
        if not value or sealer is None:
            return None
        try:
            return sealer.unseal(value, purpose="admin-session", now=self._now())
        except InvalidCookie:
            return None

    async def start(self) -> tuple[str, tuple[bytes, bytes]]:
        """Where to send the browser to sign in, and the flow cookie to set."""
        rp, sealer = self._parts()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier, challenge = new_pkce()
        flow = sealer.seal(
            "admin-flow",
            {"state": state, "nonce": nonce, "verifier": verifier},
            self._now() + FLOW_LIFETIME,
        )
        try:
            metadata = await rp.metadata()
        except SignInError as e:
            raise PageRefused(502, e.reason) from None
        url = authorization_url(
            metadata, rp.settings, state=state, nonce=nonce, code_challenge=challenge
        )
        return url, cookie_header(FLOW_COOKIE, flow, FLOW_LIFETIME, "Lax")

    async def _audit(self, event: str, who: str, address: str, why: str | None) -> None:
        """An C{admin-sign-in} or C{admin-sign-in-refused} entry of the audit log."""
        entry = functools.partial(
            audit,
            event=event,
            actor=who,
            address=address,
            connector_id=None,
            detail={"why": why} if why else None,
            now=self.reactor.seconds(),
        )
        try:
            await self.database.run_interaction(entry)
        except Exception as e:  # the sign-in stands without its audit entry
            log.warn("Admin page: the audit log failed: {e}", e=e)

    async def callback(
        self, args: Mapping[str, str], cookies: Mapping[str, str], address: str
    ) -> tuple[str, tuple[bytes, bytes]]:
        """
        Finish the sign-in: who signed in and the session cookie to set.

        @raise PageRefused: 400 for a stale or foreign callback, 403 for
            someone who is not an administrator, 502 if the provider fails.
        """
        rp, sealer = self._parts()
        state = args.get("state", "")
        try:
            flow = sealer.unseal(
                cookies.get(FLOW_COOKIE, ""), purpose="admin-flow", now=self._now()
            )
        except InvalidCookie:
            raise PageRefused(400, "This sign-in has expired or was not started here.") from None
        if not state or not secrets.compare_digest(str(flow.get("state", "")), state):
            raise PageRefused(400, "This sign-in does not match this browser's sign-in.")
        oidc = self.config.oidc
        assert oidc is not None  # _parts: a relying party exists
        try:
            metadata = await rp.metadata()
            code = check_authorization_response(args, expected_state=state, metadata=metadata)
            tokens = await rp.exchange_code(code, str(flow["verifier"]))
            await rp.verify(tokens.id_token, str(flow["nonce"]))
            kid = token_header(tokens.id_token).get("kid")
            keys = await rp.jwks.get_keys(kid if isinstance(kid, str) else None)
            connectors = self.config.connectors
            check = AdminCheck(
                issuer=metadata.issuer,
                client_id=oidc.client_id,
                algorithms=oidc.algorithms,
                clock_skew=oidc.clock_skew,
                admin_claim=connectors.admin_claim,
                admin_value=connectors.admin_value,
            )
            claims = verify_admin_token(tokens.id_token, keys=keys, check=check, now=self._now())
        except NotAdministrator as e:
            log.warn("Admin page: sign-in refused: {why}", why=str(e))
            await self._audit("admin-sign-in-refused", e.actor, address, str(e))
            raise PageRefused(403, str(e)) from None
        except SignInError as e:
            log.warn("Admin page: sign-in failed: {why}", why=e.reason)
            raise PageRefused(502 if e.step in ("discovery", "token") else 400, e.reason) from None
        who = actor_name(claims)
        log.info("Admin page: {who} signed in", who=who)
        await self._audit("admin-sign-in", who, address, None)
        session = sealer.seal("admin-session", {"who": who}, self._now() + SESSION_LIFETIME)
        return who, cookie_header(SESSION_COOKIE, session, SESSION_LIFETIME, "Strict")
