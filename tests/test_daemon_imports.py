"""
What the service daemon imports for the configuration it runs (issue 10,
its memory): the admin listener's modules only when C{[admin] listen} is
set, the built-in identity provider's only when it is the provider.  The
service is built as twistd builds it (the plugin's C{makeService} with
C{--config}), in a fresh interpreter, which then lists its modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.deployment import Deployment

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


def _daemon_modules(config: Path) -> set[str]:
    """The appproxy modules loaded once twistd's C{makeService} built the service."""
    script = (
        "import json, sys\n"
        "from appproxy.daemon.service_tap import Options, makeService\n"
        "options = Options()\n"
        f"options.parseOptions(['--config', {str(config)!r}])\n"
        "service = makeService(options)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('appproxy'))))\n"
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

    def test_with_admin(self) -> None:
        """
        With C{[admin] listen}, the admin listener is imported and built as
        the service is (so what is wrong there stops the daemon at start).
        """
        loaded = _daemon_modules(self._config('[admin]\nlisten = "tcp:0:interface=127.0.0.1"\n'))
        self.assertEqual(sorted(loaded & set(ADMIN)), sorted(ADMIN))
