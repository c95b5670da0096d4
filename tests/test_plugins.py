"""
The twistd plugins and the console script, as installed.

The in-process tests check the plugin objects; the subprocess tests run the
virtualenv's interpreter from a directory outside the repository, so that
what they find is the installed package (the dropin must ship in the wheel),
not the source tree.  Install first: C{.venv/bin/pip install -q .}
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.plugin import IPlugin, getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

_REPO = Path(__file__).resolve().parents[1]
_VENV_BIN = _REPO / ".venv" / "bin"
#: The virtualenv the package is installed into (the running one otherwise).
BIN = _VENV_BIN if (_VENV_BIN / "python").exists() else Path(sys.executable).parent
PYTHON = str(BIN / "python")

TAPNAMES = ("appproxy", "appproxy-connector")
TIMEOUT = 20.0


def installed_env() -> dict[str, str]:
    """
    The environment for a subprocess that must see only installed code: no
    C{PYTHONPATH} pointing into the source tree, no systemd socket.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NOTIFY_SOCKET")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run(testcase: TestCase, argv: list[str]) -> Deferred[tuple[str, str, int]]:
    """
    Run C{argv} in a fresh temporary directory (never the repository root)
    and return its decoded stdout, stderr and exit code.
    """
    cwd = Path(testcase.mktemp())
    cwd.mkdir(parents=True)
    d = getProcessOutputAndValue(argv[0], argv[1:], env=installed_env(), path=str(cwd))
    d.addTimeout(TIMEOUT, reactor)
    d.addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))
    return d


class PluginObjectTests(TestCase):
    """
    The plugins as L{twisted.plugin.getPlugins} finds them.
    """

    def makers(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        for maker in getPlugins(IServiceMaker):
            found.setdefault(maker.tapname, []).append(maker)
        return found

    def test_both_tapnames_once(self) -> None:
        found = self.makers()
        for tapname in TAPNAMES:
            self.assertIn(tapname, found)
            self.assertEqual(len(found[tapname]), 1, f"{tapname} is provided more than once")

    def test_interfaces(self) -> None:
        found = self.makers()
        for tapname in TAPNAMES:
            maker = found[tapname][0]
            self.assertTrue(verifyObject(IServiceMaker, maker))
            self.assertTrue(verifyObject(IPlugin, maker))
            self.assertTrue(maker.description)

    def test_options_parse_config(self) -> None:
        found = self.makers()
        for tapname in TAPNAMES:
            options = found[tapname][0].options()
            options.parseOptions(["--config", "x.toml"])
            self.assertEqual(options["config"], "x.toml")
            short = found[tapname][0].options()
            short.parseOptions(["-c", "y.toml"])
            self.assertEqual(short["config"], "y.toml")

    def test_options_defaults(self) -> None:
        found = self.makers()
        service = found["appproxy"][0].options()
        service.parseOptions([])
        self.assertEqual(service["config"], "/etc/appproxy/service.toml")
        connector = found["appproxy-connector"][0].options()
        connector.parseOptions([])
        self.assertEqual(connector["config"], "/etc/appproxy/connector/connector.toml")

    def test_options_reject_unknown(self) -> None:
        options = self.makers()["appproxy"][0].options()
        self.assertRaises(UsageError, options.parseOptions, ["--no-such-option"])


class InstalledPackageTests(TestCase):
    """
    The installed distribution, seen from outside the source tree.
    """

    @inlineCallbacks
    def test_twist_help_lists_plugins(self) -> Any:
        out, err, code = yield run(self, [PYTHON, "-m", "twisted", "--help"])
        self.assertEqual(code, 0, err)
        commands = {line.split()[0] for line in out.splitlines() if line.startswith("    ")}
        for tapname in TAPNAMES:
            self.assertIn(tapname, commands, out)
        self.assertNotIn("Traceback", out + err)

    @inlineCallbacks
    def test_dropin_is_installed(self) -> Any:
        """
        The dropin imported outside the source tree is the installed one, it
        is listed in the distribution's files, and the wheel does not ship a
        C{twisted/__init__.py} or C{twisted/plugins/__init__.py} that would
        shadow Twisted's own.
        """
        script = (
            "import importlib.metadata, json, sysconfig\n"
            "import twisted.plugins.appproxy_plugins as p\n"
            "files = [str(f) for f in importlib.metadata.files('appproxy')]\n"
            "print(json.dumps({'file': p.__file__, 'files': files,"
            " 'purelib': sysconfig.get_paths()['purelib']}))\n"
        )
        out, err, code = yield run(self, [PYTHON, "-c", script])
        self.assertEqual(code, 0, err)
        info = json.loads(out)
        purelib = Path(info["purelib"]).resolve()
        dropin = Path(info["file"]).resolve()
        self.assertEqual(dropin, purelib / "twisted" / "plugins" / "appproxy_plugins.py")
        self.assertIn("twisted/plugins/appproxy_plugins.py", info["files"])
        self.assertNotIn("twisted/plugins/__init__.py", info["files"])
        self.assertNotIn("twisted/__init__.py", info["files"])

    @inlineCallbacks
    def test_console_script_help(self) -> Any:
        script = BIN / "appproxy"
        self.assertTrue(script.exists(), f"{script} is not installed")
        out, err, code = yield run(self, [str(script), "--help"])
        self.assertEqual(code, 0, err)
        self.assertIn("usage: appproxy", out)
        self.assertIn("init", out)
        self.assertNotIn("Traceback", out + err)
