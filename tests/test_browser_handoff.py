"""
The hand-off in a real browser (Chromium, L{tests.chromium}) against the
daemons as C{appproxy init} sets them up (L{tests.browser_deployment}): the
sign-in page names the app; a hand-off link taken from one browser and
opened in another signs that one in to nothing; the browser that began the
sign-in still lands in the app with it.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.browser_deployment import start_daemons
from tests.browser_flows import echoed, open_sign_in, wait_until_on
from tests.chromium import ChromiumSession, run_in_chromium

_HELD = base64.b64encode(b"<!doctype html><p id=held>held</p>").decode()


def _cookie_names(page: Any) -> list[str]:
    return [cookie["name"] for cookie in page.context.cookies()]


class HandOffInChromiumTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def test_hand_off_only_in_the_browser_that_began_it(self) -> Any:
        d = yield start_daemons(self, users={"alice": {"password": "correct horse"}})

        def scenario(session: ChromiumSession) -> None:
            alice = session.page
            held: list[str] = []

            # The callback's redirect to the hand-off is kept from the
            # browser (Chrome DevTools' Fetch domain, at the response: a
            # Playwright route sees no redirect), and a page put in its place.
            devtools = alice.context.new_cdp_session(alice)

            def hold(event: dict[str, Any]) -> None:
                headers = {h["name"].lower(): h["value"] for h in event["responseHeaders"]}
                held.append(headers.get("location", f"none: {event['responseStatusCode']}"))
                devtools.send(
                    "Fetch.fulfillRequest",
                    {
                        "requestId": event["requestId"],
                        "responseCode": 200,
                        "responseHeaders": [{"name": "content-type", "value": "text/html"}],
                        "body": _HELD,
                    },
                )

            devtools.on("Fetch.requestPaused", hold)
            devtools.send(
                "Fetch.enable",
                {"patterns": [{"urlPattern": "*/.appproxy/callback*", "requestStage": "Response"}]},
            )
            open_sign_in(session, d.url("/docs?x=1"), d.login_host)

            def names_the_app(page: Any) -> None:
                text = page.inner_text("main")
                assert "Sign in to continue to web." in text, text

            session.step("the sign-in page names the app", names_the_app)

            def send_password(page: Any) -> None:
                page.fill("#username", "alice")
                page.fill("#password", "correct horse")
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_selector("#held")
                assert len(held) == 1 and "/.appproxy/session?h=" in held[0], held

            session.step("sign in, holding the hand-off back", send_password)
            hand_off = held[0]

            other = session.new_page()
            response = session.step("another browser opens the link", lambda p: p.goto(hand_off))

            def refused(page: Any) -> None:
                assert response is not None and response.status == 401, response
                text = page.inner_text("body")
                assert "Sign-in failed" in text and "not started in this browser" in text, text
                assert page.url == hand_off, page.url
                assert not any(n.startswith("__Host-appproxy-web") for n in _cookie_names(page))

            session.step("it is refused", refused)
            open_sign_in(session, d.url("/docs?x=1"), d.login_host)
            assert other is session.page

            session.page = alice
            devtools.send("Fetch.disable")
            session.step("the first browser opens it", lambda page: page.goto(hand_off))
            wait_until_on(session, "back at the app", d.url("/docs?x=1"))
            seen = echoed(session)

            def signed_in(page: Any) -> None:
                assert seen["headers"].get("x-remote-user") == ["alice"], seen
                names = _cookie_names(page)
                assert "__Host-appproxy-web" in names, names
                assert not any(n.startswith("__Host-appproxy-bind-") for n in names), names

            session.step("signed in as alice, the binding cleared", signed_in)

        yield run_in_chromium(self, scenario)
