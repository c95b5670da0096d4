"""
The demo, as C{make demo} runs it (C{python -m appproxy.cli.demo run}: the
service, a connector and the header-echo app as real processes), signed in
to in a real Chromium (L{tests.chromium}) as the demo user.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from appproxy.cli.demo import DEMO_APP, DEMO_DOMAIN, DEMO_USER
from tests.browser_flows import open_sign_in, sign_in_builtin, wait_until_on
from tests.chromium import ChromiumSession, run_in_chromium
from tests.test_daemons import PYTHON, Process, free_ports, spawn

#: The demo prints this once a signed-in request came back from the app.
BANNER = "appproxy demo is running"
#: Seconds the demo may take to become ready (it signs in once itself).
READY_TIMEOUT = 60.0


def _stop_group(process: Process, pid: int) -> Any:
    """
    Stop the demo like Ctrl-C would (SIGINT), then make sure nothing of its
    process group (C{pid}'s: its children were started in it) is left.
    """

    def kill_group(result: object = None) -> object:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return result

    if not process.running:
        kill_group()
        return None
    process.signal("INT")
    return process.ended(20.0).addBoth(kill_group)


class DemoTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_demo_sign_in(self) -> Any:
        """
        The demo's URL, user and password work in Chromium: the sign-in
        form, then the legacy app's page showing X-Remote-User.
        """
        public, tunnel, echo = free_ports(3)
        parent = Path(self.mktemp()).absolute()
        parent.mkdir(parents=True)
        demo_dir = parent / "demo"
        argv = [
            *(PYTHON, "-c", "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"),
            *(PYTHON, "-m", "appproxy.cli.demo", "run", "--state-dir", str(demo_dir)),
            *("--port", str(public), "--tunnel-port", str(tunnel), "--echo-port", str(echo)),
        ]
        demo = spawn(self, "appproxy demo", argv, parent)
        # Registered after spawn's own cleanup, so it runs first.
        pid = getattr(demo.transport, "pid", None)
        assert isinstance(pid, int), demo.describe()
        self.addCleanup(_stop_group, demo, pid)
        yield demo.wait_for(BANNER, READY_TIMEOUT)
        password = (demo_dir / "demo-password").read_text().strip()
        url = f"https://{DEMO_APP}.{DEMO_DOMAIN}:{public}/"
        self.assertIn(url, demo.output())

        def scenario(session: ChromiumSession) -> None:
            open_sign_in(session, url, f"login.{DEMO_DOMAIN}")
            sign_in_builtin(session, DEMO_USER, password)
            wait_until_on(session, "back at the app", url)

            def shows_headers(page: Any) -> None:
                page.get_by_text("Hello from the internal app").wait_for()
                row = page.locator("tr", has=page.locator("th", has_text="X-Remote-User"))
                assert row.locator("td").inner_text() == DEMO_USER, row.inner_text()

            session.step("the legacy app shows the user", shows_headers)

        yield run_in_chromium(self, scenario)
