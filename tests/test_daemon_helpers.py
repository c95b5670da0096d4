"""
The small daemon helpers: configuration loading at start and log format.
"""

from __future__ import annotations

import io
from pathlib import Path

from twisted.application.service import Application
from twisted.logger import ILogObserver
from twisted.trial.unittest import SynchronousTestCase

from appproxy.config import load_service_config
from appproxy.daemon.runtime import EX_CONFIG, load_or_exit, use_log_format


class LoadOrExitTests(SynchronousTestCase):
    def test_one_line_and_ex_config(self) -> None:
        path = Path(self.mktemp())
        path.write_text("[service\n")
        err = io.StringIO()
        with self.assertRaises(SystemExit) as caught:
            load_or_exit(load_service_config, str(path), stderr=err)
        self.assertEqual(caught.exception.code, EX_CONFIG)
        lines = err.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith(f"appproxy: configuration error: {path.resolve()}"))


class LogFormatTests(SynchronousTestCase):
    def test_json_sets_observer(self) -> None:
        application = Application("x")
        use_log_format(application, "json")
        self.assertIsNotNone(application.getComponent(ILogObserver, None))

    def test_text_leaves_twistd_default(self) -> None:
        application = Application("x")
        use_log_format(application, "text")
        self.assertIsNone(application.getComponent(ILogObserver, None))
