"""
The admin listener in the real daemon (C{twistd appproxy} from the
installed package, configured by C{appproxy init} plus C{[admin]}): it
listens over HTTPS with the service's certificate, answers curl without a
bearer token 401 with C{WWW-Authenticate: Bearer}, and stops cleanly.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests import test_daemons as daemons


class AdminDaemonTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_listener(self) -> Any:
        public, tunnel, admin = daemons.free_ports(3)
        state = yield daemons.init(self, "--port", str(public), "--tunnel-port", str(tunnel))
        config = state / "service.toml"
        config.write_text(
            config.read_text()
            + f'\n[admin]\nlisten = "tcp:{admin}:interface=127.0.0.1"\n'
            + "\n[events]\nretention_days = 30\n"
        )
        service = daemons.twistd(self, "appproxy", config, state.parent)
        yield service.wait_for("appproxy service ready")
        host = f"admin.{daemons.DOMAIN}"
        out, err, code = yield getProcessOutputAndValue(
            "curl",
            [
                "-sS",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "--resolve",
                f"{host}:{admin}:127.0.0.1",
                "--cacert",
                str(state / "ca.pem"),
                f"https://{host}:{admin}/admin/v1/sign-ins",
            ],
            reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        head = out.decode("latin-1").lower()
        self.assertIn(" 401", head.splitlines()[0])
        self.assertIn('www-authenticate: bearer realm="appproxy admin"', head)
        service.signal("TERM")
        yield service.ended()
        self.assertNotIn("Traceback", service.output(), service.describe())
