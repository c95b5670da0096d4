"""
The three request budgets of C{[limits]} through a real service signing in
with the built-in provider (in this process, real TLS on loopback): the
sign-in endpoints have their own budget, signed-in requests theirs, and
requests without a session the anonymous one; the service's own calls to
the provider are not charged, but the clients of a reverse proxy on the
provider address are.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from appproxy.frontend.limits import ANONYMOUS, SIGNED_IN, SIGNIN
from tests.deployment import DOMAIN
from tests.signin_deployment import LOGIN, start_builtin
from tests.test_limits_live import hits
from tests.test_signin import sign_in

WEB = f"https://web.{DOMAIN}"
LIMITS = """
[limits]
anonymous_rate = 0.01
anonymous_burst = 3
signin_rate = 0.01
signin_burst = 8
signed_in_rate = 0.01
signed_in_burst = 12
"""
PROXY_LIMITS = """
[limits]
signin_rate = 0.01
signin_burst = 5
"""


class BudgetTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_three_budgets(self) -> Any:
        """
        A sign-in, then signed-in requests past the anonymous burst, all
        served; then requests without a session get 429 past the anonymous
        burst, and the sign-in endpoints past theirs, each page naming its
        budget.
        """
        d = yield start_builtin(self, extra_toml=LIMITS)
        before = {name: hits(name) for name in (ANONYMOUS, SIGNIN, SIGNED_IN)}
        alice = d.browser()
        page = yield sign_in(alice, f"{WEB}/docs")
        self.assertEqual(page.status, 200)
        for _ in range(10):
            page = yield alice.go(f"{WEB}/echo")
            self.assertEqual(page.status, 200)
        self.assertEqual(hits(SIGNED_IN), before[SIGNED_IN])

        # The first request of the sign-in was anonymous: two are left.
        stranger = d.browser()
        statuses = []
        for _ in range(3):
            page = yield stranger.request("GET", f"{WEB}/echo")
            statuses.append(page.status)
        self.assertEqual(statuses, [302, 302, 429])
        self.assertIn("anonymous_rate", page.text)
        self.assertGreaterEqual(int(page.header("retry-after") or "0"), 1)
        self.assertEqual(hits(ANONYMOUS), before[ANONYMOUS] + 1)

        # The sign-in endpoints: a budget of their own, partly spent by alice.
        statuses = []
        for _ in range(8):
            page = yield stranger.request("GET", f"https://{LOGIN}/authorize")
            statuses.append(page.status)
            if page.status == 429:
                break
        # Five went on alice's sign-in (start, the form and its post, the
        # callback, the hand-off); the service's own token call was not charged.
        self.assertEqual(len(statuses), 4, statuses)
        self.assertEqual(statuses[-1], 429, statuses)
        self.assertNotIn(429, statuses[:-1])
        self.assertIn("signin_rate", page.text)
        self.assertEqual(hits(SIGNIN), before[SIGNIN] + 1)

        # Signed-in requests have theirs (the landing page and ten spent 11):
        # alice may still go on, until it is spent.
        statuses = []
        for _ in range(2):
            page = yield alice.go(f"{WEB}/echo")
            statuses.append(page.status)
        self.assertEqual(statuses, [200, 429])
        self.assertIn("signed_in_rate", page.text)

    @inlineCallbacks
    def test_behind_local_proxy(self) -> Any:
        """
        Behind a trusted reverse proxy on the provider address (127.0.0.1),
        the provider's C{/token} is charged to the client the proxy names in
        C{X-Forwarded-For}: 429 past the sign-in burst. The service's own
        token call (from 127.0.0.1, not forwarded) is still not charged.
        """
        d = yield start_builtin(self, extra_toml=PROXY_LIMITS)
        assert d.service is not None
        path = d.service.config.path
        text = path.read_text()
        path.write_text(
            text.replace("[service]\n", '[service]\ntrusted_proxies = ["127.0.0.1"]\n', 1)
        )
        d.service.reload()
        self.assertTrue(d.service.frontend.trusted_proxies)
        before = hits(SIGNIN)

        # Five sign-in requests of 127.0.0.1 (its burst): a sixth, the token call, would fail it.
        alice = d.browser()
        page = yield sign_in(alice, f"{WEB}/docs")
        self.assertEqual(page.status, 200)
        self.assertEqual(hits(SIGNIN), before)

        client = d.browser()
        forwarded = {"x-forwarded-for": ["203.0.113.9"]}
        statuses = []
        for n in range(7):
            page = yield client.request(
                "POST",
                f"https://{LOGIN}/token",
                body=b"grant_type=authorization_code&code=guess%d" % n,
                headers={**forwarded, "content-type": ["application/x-www-form-urlencoded"]},
            )
            statuses.append(page.status)
            if page.status == 429:
                break
        self.assertEqual(len(statuses), 6, statuses)
        self.assertNotIn(429, statuses[:-1])
        self.assertIn("signin_rate", page.text)
        self.assertEqual(hits(SIGNIN), before + 1)
