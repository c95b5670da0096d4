"""
The daemons' text log observer (L{appproxy.daemon.text_log}): the lines
twistd's own text observer writes, the access log's buffered a moment.
"""

from __future__ import annotations

import io
import signal
import time
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogPublisher, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from appproxy.daemon.text_log import FLUSH_INTERVAL, TextLogObserver, text_observer
from appproxy.observe.lines import LineLogger


class RunningClock(Clock):
    running = True


def pair() -> tuple[io.StringIO, TextLogObserver, io.StringIO, Any, RunningClock]:
    clock = RunningClock()
    ours, theirs = io.StringIO(), io.StringIO()
    observer = TextLogObserver(ours, clock)
    return ours, observer, theirs, textFileLogObserver(theirs), clock


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


class SameLinesTests(TestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["line", "info", "warn", "nosystem", "failure"]),
                _text,
                st.floats(min_value=0, max_value=4e9, allow_nan=False),
            ),
            min_size=1,
            max_size=8,
        )
    )
    def test_same_text_as_twisted(self, events: list[tuple[str, str, float]]) -> None:
        """
        Whatever the events (access lines with braces and newlines, other
        events, failures, times just below a second), the text is twistd's.
        """
        ours, observer, theirs, reference = pair()[:4]
        publisher = LogPublisher(observer, reference)
        lines, plain = LineLogger("ns", observer=publisher), Logger("ns", observer=publisher)
        for kind, text, when in events:
            stamp = {"log_time": when}
            if kind == "line":
                lines.line(text, log_system="access", **stamp)
            elif kind == "info":
                plain.info("{t} {{x}}", t=text, log_system="sys", **stamp)
            elif kind == "warn":
                plain.warn(text.replace("{", "").replace("}", ""), **stamp)
            elif kind == "nosystem":
                lines.line(text, **stamp)
            else:
                lines.failure(text.replace("{", "{{"), Failure(ValueError("x")), log_time=when)
        observer.flush()
        self.assertEqual(ours.getvalue(), theirs.getvalue())

    def test_second_boundaries(self) -> None:
        """Times each side of a second, cached or not, show as twisted shows them."""
        ours, observer, theirs, reference = pair()[:4]
        publisher = LogPublisher(observer, reference)
        log = LineLogger("ns", observer=publisher)
        base = float(int(time.time()))
        for offset in (0.0, 0.5, 0.9999989, 0.9999994, 0.9999996, 0.99999999, 1.0, 1.2, 0.3):
            log.line("GET x", log_system="access", log_time=base + offset)
        observer.flush()
        self.assertEqual(ours.getvalue(), theirs.getvalue())


class BufferTests(TestCase):
    def setUp(self) -> None:
        self.out, self.observer, _, _, self.clock = pair()
        self.lines = LineLogger("ns", observer=self.observer)
        self.plain = Logger("ns", observer=self.observer)

    def test_access_lines_wait_a_moment(self) -> None:
        """Access lines are written out together, FLUSH_INTERVAL later."""
        self.lines.line("GET a", log_system="access")
        self.lines.line("GET b", log_system="access")
        self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(FLUSH_INTERVAL)
        self.assertIn("[access] GET a\n", self.out.getvalue())
        self.assertTrue(self.out.getvalue().endswith("[access] GET b\n"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_event_writes_them_first(self) -> None:
        """Any other event writes the waiting lines out first, in order, then itself."""
        self.lines.line("GET a", log_system="access")
        self.plain.warn("trouble")
        text = self.out.getvalue()
        self.assertLess(text.index("GET a"), text.index("trouble"))
        self.clock.advance(FLUSH_INTERVAL)
        self.assertEqual(self.out.getvalue(), text)

    def test_not_running_writes_at_once(self) -> None:
        """Before the reactor runs, and after it stopped, nothing waits."""
        self.clock.running = False
        self.lines.line("GET a", log_system="access")
        self.assertIn("GET a", self.out.getvalue())


class ChoiceTests(TestCase):
    def test_twistd_keeps_its_own(self) -> None:
        """--logger, --syslog and a daemon on standard output: twistd's choice."""
        self.assertIsNone(text_observer(None))
        self.assertIsNone(text_observer({"logger": "x.y", "logfile": None, "nodaemon": 1}))
        self.assertIsNone(text_observer({"syslog": 1, "logfile": None, "nodaemon": 0}))
        self.assertIsNone(text_observer({"logfile": "-", "nodaemon": 0}))

    def test_file(self) -> None:
        """--logfile PATH: the lines go to that file."""
        path = self.mktemp()
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        observer = text_observer({"logfile": path, "nodaemon": 1})
        assert isinstance(observer, TextLogObserver)
        self.addCleanup(observer._out.close)
        Logger("ns", observer=observer).info("hello {x}", x=1)
        with open(path) as f:
            self.assertIn("[ns#info] hello 1\n", f.read())


class LineEventTests(TestCase):
    def test_event_as_info_makes_it(self) -> None:
        """A line's event is the one C{Logger.info} would emit."""
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        log = LineLogger("ns", source=self, observer=observer)
        plain = Logger("ns", source=self, observer=observer)
        log.line("GET {x} }{", a=1, log_system="access")
        plain.info("GET {{x}} }}{{", a=1, log_system="access")
        ours, theirs = events
        self.assertLessEqual(abs(ours.pop("log_time") - theirs.pop("log_time")), 1.0)
        self.assertIs(ours.pop("log_logger"), log)
        self.assertIs(theirs.pop("log_logger"), plain)
        self.assertEqual(ours, theirs)
