"""
The hand-off from the login host to the app's host is bound to the browser
that began the sign-in (no login CSRF), and the built-in provider's sign-in
page names the app the user signs in to, never a name a crafted link chose.

The binding's pure parts directly and with Hypothesis; the rest through the
real service, connector and backend (TLS on loopback) with the stand-in
browser of L{tests.browser}, one cookie jar per browser.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from appproxy.gate.binding import (
    BINDING_COOKIE_PREFIX,
    BINDING_LIFETIME,
    MAX_PENDING_BINDINGS,
    BrowserBinding,
    bind_browser,
)
from appproxy.idp.authorize import APP_PARAMETER
from tests.browser import Browser, Page
from tests.deployment import DOMAIN
from tests.signin_deployment import LOGIN, backend_headers, start_builtin

WEB = f"https://web.{DOMAIN}"
WEB_HOST = f"web.{DOMAIN}"

_ids = st.text("0123456789abcdef", min_size=16, max_size=16)
_digests = st.text("0123456789abcdef", min_size=64, max_size=64)
_values = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=43, max_size=43
)


def _bindings(cookies: dict[str, str]) -> dict[str, str]:
    return {
        name: value for name, value in cookies.items() if name.startswith(BINDING_COOKIE_PREFIX)
    }


class BrowserBindingTests(SynchronousTestCase):
    """The binding's pure parts."""

    @given(_ids, _digests)
    def test_text_round_trip(self, id_: str, digest: str) -> None:
        binding = BrowserBinding(id_, digest)
        self.assertEqual(BrowserBinding.from_text(binding.to_text()), binding)

    @given(st.one_of(st.text(max_size=100), st.none(), st.integers(), st.lists(st.text())))
    def test_anything_else_is_no_binding(self, text: object) -> None:
        """Only what to_text gives reads back; nothing else raises."""
        parsed = BrowserBinding.from_text(text)
        if parsed is not None:
            self.assertEqual(parsed.to_text(), text)

    def test_malformed_texts(self) -> None:
        good = "0" * 16 + "." + "a" * 64
        self.assertIsNotNone(BrowserBinding.from_text(good))
        for text in [good.upper(), good + "\n", "0" * 15 + "." + "a" * 64, good[:-1], "", "."]:
            self.assertIsNone(BrowserBinding.from_text(text), text)

    @given(_values, _values)
    def test_presented_only_with_its_cookie(self, value: str, other: str) -> None:
        binding, header = bind_browser({}, value)
        assert header is not None
        self.assertTrue(binding.presented_by({binding.cookie_name: value}))
        self.assertEqual(binding.presented_by({binding.cookie_name: other}), value == other)
        # The right value under another binding's name is not it.
        self.assertFalse(binding.presented_by({BINDING_COOKIE_PREFIX + "0" * 16: value}))
        self.assertFalse(binding.presented_by({}))
        self.assertFalse(binding.presented_by({binding.cookie_name: ""}))
        self.assertFalse(binding.presented_by({binding.cookie_name: "é" + value}))

    def test_new_binding_cookie(self) -> None:
        """A new binding's cookie: random, host-only, short-lived; only a digest kept."""
        binding, header = bind_browser({})
        assert header is not None
        name, value = header
        self.assertEqual(name, b"set-cookie")
        pair, *attributes = value.decode("ascii").split("; ")
        cookie_name, _, cookie_value = pair.partition("=")
        self.assertEqual(cookie_name, binding.cookie_name)
        self.assertTrue(cookie_name.startswith("__Host-"))
        self.assertEqual(len(cookie_value), 43)
        self.assertEqual(binding.digest, hashlib.sha256(cookie_value.encode()).hexdigest())
        self.assertNotIn(cookie_value, binding.to_text())
        self.assertEqual(
            attributes,
            ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", f"Max-Age={BINDING_LIFETIME}"],
        )
        other, _ = bind_browser({})
        self.assertNotEqual(other.id, binding.id)

    def test_pending_bindings_are_capped(self) -> None:
        """
        A browser holding as many bindings as allowed gets one of them again
        and no new cookie; malformed ones do not count.
        """
        held: dict[str, str] = {"__Host-appproxy-web": "session", "other": "x" * 43}
        for index in range(MAX_PENDING_BINDINGS - 1):
            binding, header = bind_browser(held)
            assert header is not None, index
            held[binding.cookie_name] = header[1].decode().split(";")[0].partition("=")[2]
        held[BINDING_COOKIE_PREFIX + "zz"] = "y" * 43
        held[BINDING_COOKIE_PREFIX + "f" * 16] = "short"
        binding, header = bind_browser(held)
        self.assertIsNotNone(header, "one more may be made")
        assert header is not None
        held[binding.cookie_name] = header[1].decode().split(";")[0].partition("=")[2]
        reused, none = bind_browser(held)
        self.assertIsNone(none)
        self.assertTrue(reused.presented_by(held))
        self.assertEqual(
            reused.cookie_name,
            min(
                _bindings(held).keys()
                - {BINDING_COOKIE_PREFIX + "zz", BINDING_COOKIE_PREFIX + "f" * 16}
            ),
        )


@inlineCallbacks
def until_hand_off(browser: Browser, page: Page) -> Any:
    """Follow redirects and refreshes from C{page}; the hand-off URL, not opened."""
    for _ in range(browser.max_redirects):
        location = browser.next_url(page)
        assert location is not None, f"stopped at {page.url}: {page.status} {page.text[:300]}"
        if urlsplit(location).path == "/.appproxy/session":
            return location
        page = yield browser.request("GET", location)
    raise AssertionError(f"no hand-off: {browser.history[-6:]}")


@inlineCallbacks
def sign_in_until_hand_off(browser: Browser, url: str) -> Any:
    """Begin at C{url}, sign in as alice; the hand-off URL, not opened."""
    page = yield browser.go(url)
    assert urlsplit(page.url).hostname == LOGIN, f"not sent to sign in: {page.url}"
    response = yield browser.submit(
        page, {"username": "alice", "password": "correct horse"}, follow=False
    )
    hand_off = yield until_hand_off(browser, response)
    return hand_off


class HandOffBindingTests(TestCase):
    """Through the real service: the hand-off works in its own browser only."""

    timeout = 60

    @inlineCallbacks
    def test_hand_off_refused_in_another_browser(self) -> Any:
        """
        A hand-off link opened in a browser that did not begin the sign-in
        (the victim of a login CSRF) signs it in to nothing; the browser
        that began it still signs in with it.
        """
        d = yield start_builtin(self)
        alice = d.browser()
        hand_off = yield sign_in_until_hand_off(alice, f"{WEB}/docs?x=1")

        victim = d.browser()
        refused = yield victim.request("GET", hand_off)
        self.assertEqual(refused.status, 401)
        self.assertIsNone(refused.header("location"), "no redirect: no loop")
        self.assertIn("hand-off", refused.text)
        self.assertIn("not started in this browser", refused.text)
        self.assertIn(f"{WEB}/", refused.text, "the page offers to start again")
        self.assertNotIn("__Host-appproxy-web", victim.cookies(WEB_HOST))
        hits = d.backend.hits
        page = yield victim.go(f"{WEB}/docs?x=1")
        self.assertEqual(urlsplit(page.url).hostname, LOGIN, "the victim is not signed in")
        self.assertEqual(d.backend.hits, hits)

        # A victim with bindings of its own (it began a sign-in too) is no different.
        refused = yield victim.request("GET", hand_off)
        self.assertEqual(refused.status, 401)
        self.assertTrue(_bindings(victim.cookies(WEB_HOST)))
        self.assertNotIn("__Host-appproxy-web", victim.cookies(WEB_HOST))

        self.assertTrue(_bindings(alice.cookies(WEB_HOST)), "the app's host bound the sign-in")
        landed = yield alice.request("GET", hand_off)
        self.assertEqual(landed.status, 302)
        self.assertEqual(landed.header("location"), f"{WEB}/docs?x=1")
        self.assertIn("__Host-appproxy-web", alice.cookies(WEB_HOST))
        self.assertEqual(_bindings(alice.cookies(WEB_HOST)), {}, "the binding is cleared")
        page = yield alice.go(f"{WEB}/docs?x=1")
        self.assertEqual(backend_headers(page)["x-remote-user"], ["alice"])

    @inlineCallbacks
    def test_stolen_binding_cookie_does_not_replay(self) -> Any:
        """Even with a copy of the binding cookie, the hand-off is used once."""
        d = yield start_builtin(self)
        alice = d.browser()
        hand_off = yield sign_in_until_hand_off(alice, f"{WEB}/")
        stolen = _bindings(alice.cookies(WEB_HOST))
        landed = yield alice.request("GET", hand_off)
        self.assertEqual(landed.status, 302)
        thief = d.browser()
        for name, value in stolen.items():
            thief.set_cookie(WEB_HOST, name, value)
        again = yield thief.request("GET", hand_off)
        self.assertEqual(again.status, 401)
        self.assertIn("already used", again.text)
        self.assertNotIn("__Host-appproxy-web", thief.cookies(WEB_HOST))

    @inlineCallbacks
    def test_concurrent_sign_ins_in_one_browser(self) -> Any:
        """
        Two tabs of one browser sign in to the same app at once: each
        sign-in has its own binding, and each hand-off works, in any order.
        """
        d = yield start_builtin(self)
        browser = d.browser()
        first = yield browser.request("GET", f"{WEB}/a")
        second = yield browser.request("GET", f"{WEB}/b")
        self.assertEqual((first.status, second.status), (302, 302))
        self.assertEqual(len(_bindings(browser.cookies(WEB_HOST))), 2)

        # Tab 1 signs in at the provider; tab 2 then rides its provider session.
        login = yield browser.go(browser.next_url(first))
        response = yield browser.submit(
            login, {"username": "alice", "password": "correct horse"}, follow=False
        )
        hand_off_a = yield until_hand_off(browser, response)
        response = yield browser.request("GET", browser.next_url(second))
        hand_off_b = yield until_hand_off(browser, response)

        landed_b = yield browser.request("GET", hand_off_b)
        self.assertEqual(landed_b.status, 302, landed_b.text[:300])
        self.assertEqual(landed_b.header("location"), f"{WEB}/b")
        landed_a = yield browser.request("GET", hand_off_a)
        self.assertEqual(landed_a.status, 302, landed_a.text[:300])
        self.assertEqual(landed_a.header("location"), f"{WEB}/a")
        self.assertEqual(_bindings(browser.cookies(WEB_HOST)), {})
        page = yield browser.go(f"{WEB}/a")
        self.assertEqual(backend_headers(page)["x-remote-user"], ["alice"])

    @inlineCallbacks
    def test_bindings_do_not_pile_up(self) -> Any:
        """
        Requests that are sent to sign in again and again (a script polling
        an app whose session ended) leave a bounded number of cookies; a
        sign-in still works after them.
        """
        d = yield start_builtin(self)
        browser = d.browser()
        for _ in range(MAX_PENDING_BINDINGS + 4):
            page = yield browser.request("GET", f"{WEB}/poll")
            self.assertEqual(page.status, 302)
        self.assertEqual(len(_bindings(browser.cookies(WEB_HOST))), MAX_PENDING_BINDINGS)
        hand_off = yield sign_in_until_hand_off(browser, f"{WEB}/page")
        landed = yield browser.request("GET", hand_off)
        self.assertEqual(landed.status, 302, landed.text[:300])
        self.assertEqual(landed.header("location"), f"{WEB}/page")


class SignInPageNamesTheAppTests(TestCase):
    """The built-in provider's sign-in page names the app, and only a real one."""

    timeout = 60

    @inlineCallbacks
    def test_sign_in_page_names_the_app(self) -> Any:
        d = yield start_builtin(
            self,
            apps=[
                {"name": "payroll", "external_url": f"https://payroll.{DOMAIN}/"},
                {"name": "wiki", "external_url": f"https://wiki.{DOMAIN}/"},
            ],
        )
        browser = d.browser()
        page = yield browser.go(f"https://wiki.{DOMAIN}/")
        self.assertEqual(urlsplit(page.url).hostname, LOGIN)
        self.assertIn("continue to <strong>wiki</strong>", page.text)
        self.assertNotIn("appproxy</strong>", page.text)
        self.assertEqual(parse_qs(urlsplit(page.url).query)[APP_PARAMETER], ["wiki"])

        # A wrong password shows the form again, still naming the app.
        again = yield browser.submit(page, {"username": "alice", "password": "wrong"})
        self.assertIn("Incorrect user name or password", again.text)
        self.assertIn("continue to <strong>wiki</strong>", again.text)

    @inlineCallbacks
    def test_crafted_app_name_is_not_shown(self) -> Any:
        """
        An authorization request crafted with a name that is not one of the
        service's apps gets the client's name on the page, not its own words.
        """
        d = yield start_builtin(self)
        browser = d.browser()
        first = yield browser.request("GET", f"{WEB}/")
        sign_in = yield browser.request("GET", browser.next_url(first))
        authorize = browser.next_url(sign_in)
        assert authorize is not None
        parts = urlsplit(authorize)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        for crafted in [
            "Your bank: call +1 555 0100 now",
            "<b>evil</b>",
            "web ",
            "WEB",
            "web\u200b",
        ]:
            url = parts._replace(query=urlencode({**query, APP_PARAMETER: crafted})).geturl()
            page = yield browser.request("GET", url)
            self.assertEqual(page.status, 200, crafted)
            self.assertIn("continue to <strong>appproxy</strong>", page.text, crafted)
            self.assertNotIn("evil", page.text)
            self.assertNotIn("bank", page.text)
        # Repeated, the parameter counts for nothing either.
        url = parts._replace(
            query=urlencode([*query.items(), (APP_PARAMETER, "web"), (APP_PARAMETER, "web")])
        ).geturl()
        page = yield browser.request("GET", url)
        self.assertEqual(page.status, 200)
        self.assertIn("continue to <strong>appproxy</strong>", page.text)
