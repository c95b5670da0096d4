"""
The daemons' heap report on demand (L{appproxy.daemon.heap}): off unless the
environment asks, then one JSON line per SIGUSR2.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import TestCase

from appproxy.daemon import heap


class HeapReportTests(TestCase):
    def setUp(self) -> None:
        previous = signal.getsignal(signal.SIGUSR2)
        self.addCleanup(signal.signal, signal.SIGUSR2, previous)
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def _install(self, environ: dict[str, str]) -> heap.HeapReporter | None:
        def now(f: Callable[[], object]) -> None:
            f()

        protocols = [SimpleNamespace(streams={1: 0, 3: 0}), SimpleNamespace(streams={})]
        return heap.install("service", lambda: heap.tunnel_counts(protocols), now, environ)

    def _reports(self) -> list[dict[str, Any]]:
        files = list(self.dir.iterdir())
        self.assertEqual(len(files), 1, files)
        self.assertEqual(files[0].name, f"heap-service-{os.getpid()}.jsonl")
        return [json.loads(line) for line in files[0].read_text().splitlines()]

    def test_off_by_default(self) -> None:
        """
        Without the variable nothing is installed: SIGUSR2 keeps its
        handler and no tracing starts.
        """
        before = signal.getsignal(signal.SIGUSR2)
        self.assertIsNone(self._install({heap.ENV_TRACE: "4"}))
        self.assertIs(signal.getsignal(signal.SIGUSR2), before)
        self.assertFalse(tracemalloc.is_tracing())
        self.assertEqual(list(self.dir.iterdir()), [])

    def test_report_on_signal(self) -> None:
        """
        With C{APPPROXY_HEAP_DIR}, each SIGUSR2 appends a report with the
        RSS, Python's blocks, and the probes (tunnel connections, streams).
        """
        reporter = self._install({heap.ENV_DIR: str(self.dir)})
        self.assertIsNotNone(reporter)
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGUSR2)
        reports = self._reports()
        self.assertEqual([r["n"] for r in reports], [1, 2])
        first = reports[0]
        self.assertEqual(first["probes"], {"tunnel_connections": 2, "tunnel_streams": 2})
        self.assertGreater(first["rss_kib"], 0)
        self.assertGreater(first["python_blocks"], 0)
        self.assertNotIn("grown", first)
        self.assertFalse(tracemalloc.is_tracing())

    def test_collect_and_types(self) -> None:
        """
        C{APPPROXY_HEAP_COLLECT} collects garbage first and says how much it
        freed; C{APPPROXY_HEAP_TYPES} counts the objects by type.
        """
        self._install({heap.ENV_DIR: str(self.dir), heap.ENV_COLLECT: "1", heap.ENV_TYPES: "1"})

        class Cyclic:
            pass

        gc.disable()  # so that the cycles wait for the report's collection
        self.addCleanup(gc.enable)
        for _ in range(5000):
            a, b = Cyclic(), Cyclic()
            a.other, b.other = b, a  # type: ignore[attr-defined]
        del a, b
        os.kill(os.getpid(), signal.SIGUSR2)
        (report,) = self._reports()
        collected = report["collected"]
        assert isinstance(collected, dict)
        self.assertGreaterEqual(collected["objects"], 2 * 5000)
        types = dict(report["types"])
        self.assertNotIn("Cyclic", types)
        self.assertIn("function", types)

    def test_traced_report_names_growth(self) -> None:
        """
        With C{APPPROXY_HEAP_TRACEMALLOC} too, reports list the allocation
        sites grown since the first report: memory kept between two reports
        shows up with its line.
        """
        self.addCleanup(tracemalloc.stop)
        reporter = self._install({heap.ENV_DIR: str(self.dir), heap.ENV_TRACE: "2"})
        assert reporter is not None
        self.assertTrue(tracemalloc.is_tracing())
        os.kill(os.getpid(), signal.SIGUSR2)
        kept = [bytearray(1024) for _ in range(2048)]  # 2 MiB, held
        os.kill(os.getpid(), signal.SIGUSR2)
        reports = self._reports()
        self.assertEqual(len(kept), 2048)
        grown = reports[1]["grown"]
        assert isinstance(grown, list)
        site, kib, count = grown[0]
        self.assertIn("test_daemon_heap.py", site)
        self.assertGreaterEqual(kib, 2048)
        self.assertGreaterEqual(count, 2048)
        self.assertGreater(reports[1]["traced_kib"], reports[0]["traced_kib"])
