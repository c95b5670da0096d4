"""
What the service daemon imports for the configuration it runs (issue 10,
its memory): the admin listener's modules only when C{[admin] listen} is
set, the built-in identity provider's only when it is the provider; and
never at start what serves only a first use (L{FIRST_USE}).  The service is
built as twistd builds it (the plugin's C{makeService} with C{--config}) and
started (its listeners bound), in a fresh interpreter, which then lists its
modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.deployment import DOMAIN, Deployment
from tests.signin_deployment import CLIENT_SECRET, LOGIN, SignInDeployment

ROOT = Path(__file__).resolve().parent.parent

#: Modules of the admin listener (twisted.web's site, the API, the page,
#: the bearer-token checks) and of the built-in identity provider.
ADMIN = [
    "appproxy.admin.service",
    "appproxy.admin.api",
    "appproxy.admin.auth",
    "appproxy.admin.page",
]
IDP = ["appproxy.idp.provider", "appproxy.idp.authorize", "appproxy.idp._http"]
#: Not imported at start (docs/performance.md): twisted.web's site (only the admin
#: listener's needs it: the metrics listener, the enrolment API and the service's
#: own pages do without it); imported at their first use: the OIDC client's HTTP
#: stack (the first request to the identity provider), the WebSocket relay and
#: wsproto (the first WebSocket), difflib (a configuration mistake), tracemalloc
#: (heap reports).
FIRST_USE = [
    "twisted.web.server",
    "twisted.spread.pb",
    "appproxy.daemon.side_listener",
    "treq",
    "twisted.web.client",
    "appproxy.oidc._provider_http",
    "appproxy.frontend.ws_relay",
    "wsproto",
    "h11",
    "difflib",
    "tracemalloc",
]


def _daemon_modules(config: Path) -> set[str]:
    """The modules loaded once twistd's C{makeService} built the service and it started."""
    script = (
        "import json, sys\n"
        "from appproxy.daemon.service_tap import Options, makeService\n"
        "options = Options()\n"
        f"options.parseOptions(['--config', {str(config)!r}])\n"
        "service = makeService(options)\n"
        "service.privilegedStartService()\n"
        "service.startService()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if out.returncode:
        raise AssertionError(f"building the service failed:\n{out.stderr}")
    return set(json.loads(out.stdout.splitlines()[-1]))


class DaemonImportTests(TestCase):
    timeout = 120

    def _config(self, extra: str = "") -> Path:
        apps = [{"name": "web", "external_url": "https://web.example.test/"}]
        deployment = Deployment(self, apps, 5.0, extra_toml=extra)
        return deployment.write_service_config().resolve()

    def test_without_admin_or_provider(self) -> None:
        """
        Without C{[admin]} and without the built-in provider, neither the
        admin listener's modules nor the provider's are imported.
        """
        loaded = _daemon_modules(self._config())
        self.assertIn("appproxy.daemon.service_tap", loaded)
        self.assertEqual(sorted(loaded & {*ADMIN, *IDP}), [])

    def test_first_use_modules(self) -> None:
        """
        With the metrics listener, sign-in with the built-in provider and an
        app open to WebSockets, the modules of L{FIRST_USE} are not imported
        when the service starts.
        """
        apps = [{"name": "web", "external_url": f"https://web.{DOMAIN}/", "websocket": True}]
        extra = f"""
[metrics]
listen = "tcp:0:interface=127.0.0.1"

[oidc]
issuer = "https://{LOGIN}"
client_id = "appproxy"
client_secret_file = "client-secret"
callback_url = "https://{LOGIN}/.appproxy/callback"
provider_ca = "ca.pem"

[builtin_provider]
issuer = "https://{LOGIN}"
"""
        deployment = SignInDeployment(self, apps, 5.0, extra_toml=extra)
        deployment._write("client-secret", CLIENT_SECRET.encode() + b"\n")
        deployment.state.mkdir(mode=0o700)
        deployment.add_user("alice", "correct horse")
        loaded = _daemon_modules(deployment.write_service_config().resolve())
        for running in ("appproxy.daemon.service_metrics", "appproxy.frontend.ws_gate", *IDP):
            self.assertIn(running, loaded)
        self.assertEqual(sorted(loaded & set(FIRST_USE)), [])

    def test_with_admin(self) -> None:
        """
        With C{[admin] listen}, the admin listener is imported and built as
        the service is (so what is wrong there stops the daemon at start).
        """
        loaded = _daemon_modules(self._config('[admin]\nlisten = "tcp:0:interface=127.0.0.1"\n'))
        self.assertEqual(sorted(loaded & set(ADMIN)), sorted(ADMIN))
