"""
Sign-in in a real browser: Debian's Chromium driven by Playwright
(L{tests.chromium}), against the service and connector as C{twistd}
subprocesses (L{tests.browser_deployment}).

Chromium applies a page's C{form-action} to every redirect that follows its
form's POST: a provider page with C{form-action 'self'} whose sign-in POST
is answered by a redirect chain to the app's host is blocked there.  These
tests are where that shows; the stand-in browser of the other tests never
enforced it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from appproxy.idp import totp
from tests.browser_deployment import DOMAIN, Daemons, free_ports, start_daemons
from tests.browser_flows import (
    echoed,
    open_sign_in,
    sign_in_builtin,
    submit_code,
    wait_until_on,
)
from tests.chromium import ChromiumSession, run_in_chromium
from tests.nodeprovider import node_available, start_node_provider
from tests.test_daemons import replace_once

ALICE = {"alice": {"password": "correct horse", "groups": ("staff",)}}
BOB_SECRET = totp.generate_secret()


def signed_in_as(session: ChromiumSession, d: Daemons, user: str, path: str = "/") -> None:
    """The browser is back at the app, which received C{user}'s headers."""
    wait_until_on(session, "back at the app", d.url(path))
    seen = echoed(session)

    def check(page: Any) -> None:
        headers = seen["headers"]
        assert headers.get("x-remote-user") == [user], headers
        assert "cookie" not in headers, headers
        violations = [line for line in session.console if "Content Security Policy" in line]
        assert not violations, violations

    session.step("the app received the user", check)


class BuiltinProviderTests(TestCase):
    """The built-in provider, as C{appproxy init} sets it up."""

    timeout = 90

    @inlineCallbacks
    def test_password(self) -> Any:
        """
        User name and password: after "Sign in" the browser reaches the app
        (the provider's answer to the POST moves it on by a page, not a
        cross-origin redirect that form-action 'self' would block).
        """
        d = yield start_daemons(self, users=ALICE)

        def scenario(session: ChromiumSession) -> None:
            open_sign_in(session, d.url("/docs?x=1"), d.login_host)
            sign_in_builtin(session, "alice", "correct horse")
            signed_in_as(session, d, "alice", "/docs?x=1")

        yield run_in_chromium(self, scenario)

    @inlineCallbacks
    def test_password_and_totp(self) -> Any:
        """A user with a one-time code: password, then "Verify", then the app."""
        users = {"bob": {"password": "battery staple", "totp_secret": BOB_SECRET}}
        d = yield start_daemons(self, users=users)

        def scenario(session: ChromiumSession) -> None:
            open_sign_in(session, d.url(), d.login_host)
            sign_in_builtin(session, "bob", "battery staple")
            submit_code(session, totp.totp(BOB_SECRET, time.time()))
            signed_in_as(session, d, "bob")

        yield run_in_chromium(self, scenario)

    @inlineCallbacks
    def test_refusal_pages(self) -> Any:
        """
        A user not assigned to the app, and one blocked by a policy, each end
        on a 403 page that names why; no redirect loop (a reload is the same
        403).
        """

        def edit(config: Path) -> None:
            replace_once(config, '# allowed_users = ["alice"]', 'allowed_users = ["alice", "bob"]')
            with config.open("a") as f:
                f.write('\n[[policies]]\nname = "no-bob"\nusers = ["bob"]\ngrant = "block"\n')

        users = {
            "bob": {"password": "battery staple"},
            "carol": {"password": "carol's password"},
        }
        d = yield start_daemons(self, users=users, edit=edit)

        def refused(session: ChromiumSession, user: str, password: str, title: str) -> None:
            session.new_page()
            open_sign_in(session, d.url(), d.login_host)
            sign_in_builtin(session, user, password)

            def on_refusal(page: Any) -> None:
                page.get_by_text(title).first.wait_for()
                assert session.documents[-1][0] == 403, session.documents
                assert len(session.documents) < 10, session.documents

            session.step(f"{user} is refused", on_refusal)

            def again(page: Any) -> None:
                # Signed in at the provider now: straight back to the same 403.
                before = len(session.documents)
                page.goto(d.url("/again"))
                page.get_by_text(title).first.wait_for()
                assert session.documents[-1][0] == 403, session.documents
                assert len(session.documents) - before < 8, session.documents[before:]

            session.step(f"{user} opens the app again", again)

        def scenario(session: ChromiumSession) -> None:
            refused(session, "carol", "carol's password", "Not assigned to this app")
            refused(session, "bob", "battery staple", "Blocked by policy 'no-bob'")

        yield run_in_chromium(self, scenario)

    @inlineCallbacks
    def test_sign_out(self) -> Any:
        """
        Sign-out clears the app's cookie and ends the provider's session:
        opening the app again asks for the password.
        """
        d = yield start_daemons(self, users=ALICE)

        def scenario(session: ChromiumSession) -> None:
            open_sign_in(session, d.url(), d.login_host)
            sign_in_builtin(session, "alice", "correct horse")
            signed_in_as(session, d, "alice")
            session.step("sign out", lambda page: page.goto(d.url("/.appproxy/sign-out")))

            def signed_out(page: Any) -> None:
                page.get_by_text("signed out").first.wait_for()
                cookies = page.context.cookies(d.url())
                assert not [c for c in cookies if c["name"].startswith("__Host-appproxy")], cookies

            session.step("signed out", signed_out)
            open_sign_in(session, d.url(), d.login_host)

        yield run_in_chromium(self, scenario)

    @inlineCallbacks
    def test_http2_form_post(self) -> Any:
        """
        Signed in, the browser (over HTTP/2) posts an app's form: the app
        receives the body and its Content-Type, and no cookie.
        """
        d = yield start_daemons(self, users=ALICE)

        def scenario(session: ChromiumSession) -> dict[str, Any]:
            open_sign_in(session, d.url("/form"), d.login_host)
            sign_in_builtin(session, "alice", "correct horse")
            wait_until_on(session, "back at the form", d.url("/form"))

            def post(page: Any) -> None:
                protocol = page.evaluate(
                    "performance.getEntriesByType('navigation')[0].nextHopProtocol"
                )
                assert protocol == "h2", protocol
                page.fill("input[name=comment]", "hello world & more")
                page.click("#send")

            session.step("send the form over HTTP/2", post)
            wait_until_on(session, "the app's answer", d.url("/submit"))

            def posted_over_h2(page: Any) -> None:
                entry = page.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
                assert entry["nextHopProtocol"] == "h2", entry
                assert entry["name"] == d.url("/submit"), entry

            session.step("the answer came over HTTP/2", posted_over_h2)
            return echoed(session)

        seen = yield run_in_chromium(self, scenario)
        self.assertEqual(seen["method"], "POST")
        self.assertEqual(seen["body"], "comment=hello+world+%26+more")
        headers = seen["headers"]
        self.assertEqual(headers.get("content-type"), ["application/x-www-form-urlencoded"])
        self.assertEqual(headers.get("x-remote-user"), ["alice"])
        self.assertNotIn("cookie", headers)


NODE_USERS = {
    "248289761001": {
        "password": "correct horse",
        "otp": "424242",
        "preferred_username": "alice",
        "groups": ["staff"],
    }
}
NODE_SECRET = "browser-client-secret-0123456789"


class NodeProviderTests(TestCase):
    """Against oidc-provider (npm), the interop tests' independent provider."""

    timeout = 90

    @inlineCallbacks
    def test_mfa_step_up(self) -> Any:
        """
        A policy requires MFA: after the password the browser is sent back
        to the provider for the one-time code, then reaches the app with
        amr pwd,otp.
        """
        missing = node_available()
        if missing:
            self.fail(missing)
        public, tunnel = free_ports(2)
        callback = f"https://login.{DOMAIN}:{public}/.appproxy/callback"
        state = Path(self.mktemp()).absolute()
        state.mkdir(parents=True)
        provider = yield start_node_provider(
            reactor=reactor,
            state=state,
            users=NODE_USERS,
            clients=[
                {
                    "client_id": "appproxy",
                    "client_secret": NODE_SECRET,
                    "redirect_uris": [callback],
                }
            ],
        )
        self.addCleanup(provider.stop)

        def edit(config: Path) -> None:
            (config.parent / "oidc-client-secret").write_text(NODE_SECRET + "\n")
            (config.parent / "provider-ca.pem").write_bytes(provider.ca_pem)
            replace_once(
                config, 'X-Remote-Groups = "groups"', 'X-Remote-Groups = "groups"\nX-Amr = "amr"'
            )
            text = config.read_text()
            config.write_text(
                text[: text.index("\n[oidc]\n")]
                + f"""
[oidc]
issuer = "{provider.issuer}"
client_id = "appproxy"
client_secret_file = "oidc-client-secret"
callback_url = "{callback}"
provider_ca = "provider-ca.pem"
provider_address = "127.0.0.1:{provider.port}"

[[policies]]
name = "mfa-everywhere"
grant = "mfa"
"""
            )

        d = yield start_daemons(self, users={}, edit=edit, ports=(public, tunnel))

        def scenario(session: ChromiumSession) -> dict[str, Any]:
            open_sign_in(session, d.url("/secret"), "localhost")

            def password(page: Any) -> None:
                page.fill("input[name=login]", "alice")
                page.fill("input[name=password]", "correct horse")
                page.get_by_role("button", name="Sign in").click()

            session.step("send the password", password)

            def asked_again(page: Any) -> bool:
                # prompt=login: the provider may ask for the password first.
                page.wait_for_selector("input[name=otp], input[name=password]")
                return page.locator("input[name=password]").count() > 0

            if session.step("the provider asks for MFA", asked_again):
                session.step("send the password again", password)
            submit_code(session, "424242", field="input[name=otp]")
            wait_until_on(session, "back at the app", d.url("/secret"))
            return echoed(session)

        seen = yield run_in_chromium(self, scenario)
        self.assertEqual(seen["headers"].get("x-remote-user"), ["alice"])
        self.assertEqual(seen["headers"].get("x-amr"), ["pwd,otp"])
