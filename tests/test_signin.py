"""
Sign-in end to end with the built-in identity provider: a browser stand-in
through the real service (TLS on loopback) and connector to a real backend
that echoes the headers it received.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import jwt
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from appproxy.access.cookie import SessionCookieCodec
from appproxy.access.keyring_file import load_keyring
from appproxy.idp.totp import generate_secret, totp
from appproxy.state.queries import read_sign_ins
from tests.browser import find_forms
from tests.deployment import DOMAIN
from tests.signin_deployment import LOGIN, backend_headers, start_builtin

WEB = f"https://web.{DOMAIN}"


@inlineCallbacks
def sign_ins(d: Any) -> Any:
    """The sign-in log, once the service has written what it holds."""
    yield d.service.sign_in.sign_in_log.flush()
    return read_sign_ins(d.state / "appproxy.sqlite")


@inlineCallbacks
def sign_in(browser: Any, url: str, user: str = "alice", password: str = "correct horse") -> Any:
    """Open C{url}, fill the built-in provider's form, return the final page."""
    page = yield browser.go(url)
    assert urlsplit(page.url).hostname == LOGIN, f"not sent to sign in: {page.url}"
    page = yield browser.submit(page, {"username": user, "password": password})
    return page


class SignInTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_sign_in_and_identity_headers(self) -> Any:
        """
        An unauthenticated request is sent to sign in; after the form the
        browser lands on the URL it first asked for, and the backend sees the
        user as headers, with neither appproxy's cookies nor spoofed headers.
        """
        d = yield start_builtin(
            self,
            users={
                "alice": {
                    "password": "correct horse",
                    "name": "Alice Doe",
                    "email": "alice@example.com",
                    "groups": ["staff", "wiki-editors"],
                }
            },
        )
        browser = d.browser()
        hits_before = d.backend.hits
        first = yield browser.request("GET", f"{WEB}/docs/page?x=1")
        self.assertEqual(first.status, 302)
        self.assertEqual(urlsplit(first.header("location")).hostname, LOGIN)
        self.assertEqual(d.backend.hits, hits_before, "nothing reaches the app before sign-in")

        page = yield sign_in(browser, f"{WEB}/docs/page?x=1")
        self.assertEqual(page.url, f"{WEB}/docs/page?x=1")
        headers = backend_headers(page)
        self.assertEqual(headers["x-remote-user"], ["alice"])
        self.assertEqual(headers["x-remote-groups"], ["staff,wiki-editors"])
        self.assertEqual(headers["x-remote-email"], ["alice@example.com"])
        self.assertEqual(headers["x-remote-name"], ["Alice Doe"])
        self.assertNotIn("cookie", headers)

        cookie = browser.cookies(f"web.{DOMAIN}")["__Host-appproxy-web"]
        self.assertLess(len("__Host-appproxy-web=") + len(cookie), 3000)

        # Spoofed identity headers in every spelling are removed; the app's
        # own cookies pass, appproxy's do not.
        browser.set_cookie(f"web.{DOMAIN}", "theme", "dark")
        page = yield browser.request(
            "GET",
            f"{WEB}/again",
            headers={
                "X-Remote-User": ["mallory"],
                "x-remote-user": ["mallory2"],
                "X_Remote_User": ["mallory3"],
                "X-REMOTE-GROUPS": ["admins"],
                "X-AppProxy-Jwt-Assertion": ["forged"],
                "X-Appproxy-Anything": ["x"],
            },
        )
        headers = backend_headers(page)
        self.assertEqual(headers["x-remote-user"], ["alice"])
        self.assertEqual(headers["x-remote-groups"], ["staff,wiki-editors"])
        self.assertNotIn("x_remote_user", headers)
        self.assertFalse([h for h in headers if h.startswith(("x-appproxy", "x_appproxy"))])
        self.assertEqual(headers["cookie"], ["theme=dark"])

        events = yield sign_ins(d)
        self.assertEqual([(e.result, e.user, e.app) for e in events], [("success", "alice", "web")])

    @inlineCallbacks
    def test_wrong_password_then_right(self) -> Any:
        """A wrong password shows the form again, and is logged; no app access."""
        d = yield start_builtin(self)
        browser = d.browser()
        page = yield browser.go(f"{WEB}/")
        page = yield browser.submit(page, {"username": "alice", "password": "wrong password"})
        self.assertEqual(urlsplit(page.url).hostname, LOGIN)
        self.assertIn("Incorrect user name or password", page.text)
        page = yield browser.submit(page, {"username": "alice", "password": "correct horse"})
        self.assertEqual(backend_headers(page)["x-remote-user"], ["alice"])
        results = [(e.result, e.step) for e in (yield sign_ins(d))]
        self.assertIn(("failure", "password"), results)
        self.assertIn(("success", None), results)

    @inlineCallbacks
    def test_group_assignment_refusal(self) -> Any:
        """
        A signed-in user not assigned to the app gets 403 saying so, once:
        no redirect loop, nothing forwarded.
        """
        d = yield start_builtin(
            self,
            apps=[
                {
                    "name": "web",
                    "external_url": f"{WEB}/",
                    "allowed_groups": ["admins"],
                }
            ],
            users={"alice": {"password": "correct horse", "groups": ["staff"]}},
        )
        browser = d.browser()
        hits = d.backend.hits
        page = yield sign_in(browser, f"{WEB}/")
        self.assertEqual(page.status, 403)
        self.assertIn("Not assigned to this app", page.text)
        self.assertEqual(d.backend.hits, hits)
        self.assertLess(len(browser.history), 8)
        events = yield sign_ins(d)
        self.assertEqual(events[-1].result, "not-assigned")

    @inlineCallbacks
    def test_blocked_by_network(self) -> Any:
        """A policy blocking the client's network: 403 naming the policy."""
        d = yield start_builtin(
            self,
            extra_toml="""
[[locations]]
name = "loopback"
networks = ["127.0.0.0/8"]

[[policies]]
name = "no-loopback"
locations = ["loopback"]
grant = "block"
""",
        )
        browser = d.browser()
        page = yield sign_in(browser, f"{WEB}/")
        self.assertEqual(page.status, 403)
        self.assertIn("no-loopback", page.text)
        events = yield sign_ins(d)
        self.assertEqual((events[-1].result, events[-1].policy), ("blocked", "no-loopback"))

    @inlineCallbacks
    def test_excluded_network_is_allowed(self) -> Any:
        """The same policy excluding loopback lets the user in."""
        d = yield start_builtin(
            self,
            extra_toml="""
[[locations]]
name = "loopback"
networks = ["127.0.0.0/8"]

[[policies]]
name = "block-elsewhere"
exclude_locations = ["loopback"]
grant = "block"
""",
        )
        page = yield sign_in(d.browser(), f"{WEB}/")
        self.assertEqual(backend_headers(page)["x-remote-user"], ["alice"])

    @inlineCallbacks
    def test_mfa_step_up(self) -> Any:
        """
        A policy requiring MFA: a password-only sign-in is sent back to the
        provider for a second factor, and the user gets in with amr pwd+otp.
        """
        secret = generate_secret()
        d = yield start_builtin(
            self,
            apps=[
                {
                    "name": "web",
                    "external_url": f"{WEB}/",
                    "headers": {"X-Remote-User": "preferred_username", "X-Amr": "amr"},
                }
            ],
            users={"alice": {"password": "correct horse", "totp_secret": secret}},
            extra_toml="""
[[policies]]
name = "mfa-for-all"
grant = "mfa"
""",
        )
        browser = d.browser()
        page = yield sign_in(browser, f"{WEB}/private")
        # The provider asks for the second step.
        self.assertEqual(urlsplit(page.url).hostname, LOGIN)
        forms = find_forms(page.text)
        self.assertIn("code", forms[0].fields)
        page = yield browser.submit(page, {"code": totp(secret, reactor.seconds())})
        self.assertEqual(page.url, f"{WEB}/private")
        headers = backend_headers(page)
        self.assertEqual(headers["x-amr"], ["pwd,otp"])

    @inlineCallbacks
    def test_mfa_unavailable_is_refused_without_loop(self) -> Any:
        """
        A user who cannot do MFA is asked once, then gets 403 naming the
        policy.
        """
        d = yield start_builtin(
            self,
            extra_toml="""
[[policies]]
name = "mfa-for-all"
grant = "mfa"
""",
        )
        browser = d.browser()
        page = yield sign_in(browser, f"{WEB}/")
        if urlsplit(page.url).hostname == LOGIN and find_forms(page.text):
            # prompt=login: the provider asks for the password again.
            page = yield browser.submit(page, {"username": "alice", "password": "correct horse"})
        self.assertEqual(page.status, 403)
        self.assertIn("mfa-for-all", page.text)
        self.assertLess(len(browser.history), 16)

    @inlineCallbacks
    def test_bad_cookies_are_refused(self) -> Any:
        """
        A tampered cookie, one for another app, and an expired one all send
        the browser to sign in; nothing reaches the app.
        """
        d = yield start_builtin(
            self,
            apps=[
                {"name": "web", "external_url": f"{WEB}/"},
                {"name": "wiki", "external_url": f"https://wiki.{DOMAIN}/"},
            ],
        )
        browser = d.browser()
        yield sign_in(browser, f"{WEB}/")
        good = browser.cookies(f"web.{DOMAIN}")["__Host-appproxy-web"]
        hits = d.backend.hits

        def refused(page: Any) -> None:
            self.assertEqual(page.status, 302)
            self.assertEqual(urlsplit(page.header("location")).hostname, LOGIN)

        tampered = good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]
        other = d.browser()
        other.set_cookie(f"web.{DOMAIN}", "__Host-appproxy-web", tampered)
        refused((yield other.request("GET", f"{WEB}/")))

        foreign = d.browser()
        foreign.set_cookie(f"wiki.{DOMAIN}", "__Host-appproxy-wiki", good)
        refused((yield foreign.request("GET", f"https://wiki.{DOMAIN}/")))

        codec = SessionCookieCodec(load_keyring(d.state / "session-keys.json"))
        session = codec.decode(
            good, app="web", cookie_name="__Host-appproxy-web", now=int(reactor.seconds())
        )
        import attrs

        expired = codec.encode(
            attrs.evolve(
                session,
                issued_at=int(reactor.seconds()) - 7200,
                expires_at=int(reactor.seconds()) - 10,
            ),
            "__Host-appproxy-web",
        )
        stale = d.browser()
        stale.set_cookie(f"web.{DOMAIN}", "__Host-appproxy-web", expired)
        refused((yield stale.request("GET", f"{WEB}/")))
        self.assertEqual(d.backend.hits, hits)

    @inlineCallbacks
    def test_open_redirect_attempts_land_in_the_app(self) -> Any:
        """
        Whatever path the sign-in started from, the browser ends up on the
        same app's host.
        """
        d = yield start_builtin(self)
        for path in ["//evil.example/", "/%5C%5Cevil.example/", "/%09/evil.example"]:
            browser = d.browser()
            page = yield sign_in(browser, f"{WEB}{path}")
            final = urlsplit(page.url)
            self.assertEqual(final.hostname, f"web.{DOMAIN}", path)

    @inlineCallbacks
    def test_hand_off_is_single_use(self) -> Any:
        """Replaying the hand-off link fails with a page naming the step."""
        d = yield start_builtin(self)
        browser = d.browser()
        page = yield browser.go(f"{WEB}/")
        response = yield browser.submit(
            page, {"username": "alice", "password": "correct horse"}, follow=False
        )
        # Follow by hand (redirects and the provider's meta refresh) until the hand-off URL.
        hand_off = None
        for _ in range(browser.max_redirects):
            location = browser.next_url(response)
            if location is None:
                break
            if "/.appproxy/session" in location:
                hand_off = location
                break
            response = yield browser.request("GET", location)
        assert hand_off is not None
        first = yield browser.request("GET", hand_off)
        self.assertEqual(first.status, 302)
        thief = d.browser()
        second = yield thief.request("GET", hand_off)
        self.assertEqual(second.status, 401)
        self.assertIn("hand-off", second.text)
        self.assertNotIn("__Host-appproxy-web", thief.cookies(f"web.{DOMAIN}"))

    @inlineCallbacks
    def test_sign_out(self) -> Any:
        """Sign-out clears the app's cookie and the provider's session."""
        d = yield start_builtin(self)
        browser = d.browser()
        yield sign_in(browser, f"{WEB}/")
        page = yield browser.go(f"{WEB}/.appproxy/sign-out")
        self.assertEqual(page.status, 200)
        self.assertNotIn("__Host-appproxy-web", browser.cookies(f"web.{DOMAIN}"))
        page = yield browser.go(f"{WEB}/")
        self.assertEqual(urlsplit(page.url).hostname, LOGIN)
        self.assertTrue(find_forms(page.text), "the provider asks for the password again")

    @inlineCallbacks
    def test_signed_assertion(self) -> Any:
        """
        An app with jwt_assertion gets an ES256 assertion a backend can
        verify with the keys published on the app's host.
        """
        d = yield start_builtin(
            self,
            apps=[
                {
                    "name": "web",
                    "external_url": f"{WEB}/",
                    "jwt_assertion": True,
                    "headers": {"X-Remote-User": "preferred_username"},
                }
            ],
        )
        browser = d.browser()
        page = yield sign_in(browser, f"{WEB}/")
        token = backend_headers(page)["x-appproxy-jwt-assertion"][0]
        keys = yield browser.request("GET", f"{WEB}/.well-known/appproxy/jwks.json")
        jwks = jwt.PyJWKSet.from_dict(json.loads(keys.body))
        key = jwks[jwt.get_unverified_header(token)["kid"]]
        claims = jwt.decode(token, key=key, algorithms=["ES256"], audience=f"{WEB}/")
        self.assertEqual(claims["sub"], "alice")
        with self.assertRaises(jwt.InvalidAudienceError):
            jwt.decode(token, key=key, algorithms=["ES256"], audience="https://other/")

    @inlineCallbacks
    def test_passthrough_app_strips_identity_headers(self) -> Any:
        """
        A passthrough app never sees client-chosen identity headers, whether
        mapped by another app or X-AppProxy-*.
        """
        d = yield start_builtin(
            self,
            apps=[
                {
                    "name": "web",
                    "external_url": f"{WEB}/",
                    "headers": {"X-Remote-User": "preferred_username"},
                },
                {
                    "name": "open",
                    "external_url": f"https://open.{DOMAIN}/",
                    "pre_authentication": "passthrough",
                },
            ],
        )
        page = yield d.browser().request(
            "GET",
            f"https://open.{DOMAIN}/",
            headers={"X-Remote-User": ["mallory"], "X-AppProxy-User": ["x"]},
        )
        headers = backend_headers(page)
        self.assertNotIn("x-remote-user", headers)
        self.assertNotIn("x-appproxy-user", headers)

    @inlineCallbacks
    def test_post_without_session_is_not_redirected(self) -> Any:
        """A POST without a session gets 401 (a redirect would lose its body)."""
        d = yield start_builtin(self)
        page = yield d.browser().request("POST", f"{WEB}/form", body=b"a=1")
        self.assertEqual(page.status, 401)
        self.assertEqual(d.backend.hits, 0)

    @inlineCallbacks
    def test_trusted_proxy_client_address(self) -> Any:
        """
        Behind a trusted proxy, the address in X-Forwarded-For is the
        client's: the built-in provider's failed attempts and the sign-in log
        name it, not the proxy's.
        """
        d = yield start_builtin(self)
        config = (d.root / "service.toml").read_text()
        config = config.replace(
            'state_dir = "state"', 'state_dir = "state"\ntrusted_proxies = ["127.0.0.0/8"]'
        )
        (d.root / "service.toml").write_text(config)
        d.service.reload()
        browser = d.browser()
        page = yield browser.go(f"{WEB}/")
        form = find_forms(page.text)[0]
        fields = {**form.fields, "username": "alice", "password": "wrong password"}
        yield browser.request(
            "POST",
            urljoin(page.url, form.action),
            body=urlencode(fields).encode(),
            headers={
                "content-type": ["application/x-www-form-urlencoded"],
                "x-forwarded-for": ["198.51.100.1, 203.0.113.7"],
            },
        )
        events = yield sign_ins(d)
        self.assertEqual(
            [(e.result, e.client_address) for e in events], [("failure", "203.0.113.7")]
        )
