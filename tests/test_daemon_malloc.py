"""
The daemons collect garbage and give the C heap's free pages back now and then
(L{appproxy.daemon.malloc}).
"""

from __future__ import annotations

import gc

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appproxy.daemon import malloc


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class TrimTests(SynchronousTestCase):
    def test_trim_gives_back_holes(self) -> None:
        """
        32 MiB in 64 KiB pieces, one in eight kept: the holes stay in the
        process until a trim gives them back.
        """
        if malloc._TRIM is None:
            raise self.skipTest("no malloc_trim in this C library")
        pieces = [bytes(65536) for _ in range(512)]
        kept = pieces[::8]
        del pieces
        before = rss_kib()
        self.assertTrue(malloc.trim())
        after = rss_kib()
        self.assertEqual(len(kept), 64)
        self.assertGreater(before - after, 16 * 1024, (before, after))

    def test_tidy_collects_cycles(self) -> None:
        """Cycles left behind are collected by L{malloc.tidy}."""
        gc.disable()
        self.addCleanup(gc.enable)

        class Cyclic:
            other: object

        for _ in range(1000):
            a, b = Cyclic(), Cyclic()
            a.other, b.other = b, a
        del a, b
        self.assertTrue(any(type(o) is Cyclic for o in gc.get_objects()))
        malloc.tidy()
        self.assertFalse(any(type(o) is Cyclic for o in gc.get_objects()))

    def test_every_interval(self) -> None:
        """A trim every L{malloc.TRIM_INTERVAL} seconds, none at once."""
        clock = Clock()
        trims: list[float] = []
        self.addCleanup(gc.unfreeze)
        loop = malloc.start_trimming(clock, how=lambda: trims.append(clock.seconds()))
        self.addCleanup(loop.stop)
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertEqual(trims, [])
        for _ in range(3):
            clock.advance(malloc.TRIM_INTERVAL)
        self.assertEqual(trims, [malloc.TRIM_INTERVAL * n for n in (1, 2, 3)])
