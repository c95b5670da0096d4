"""
A real browser for the tests: Debian's Chromium (C{/usr/bin/chromium})
driven by Playwright for Python (the pip package carries its driver; no
browser is ever downloaded).

Playwright's sync API blocks, so a whole browser session runs in one thread
of the reactor's pool (L{run_in_chromium}): launch, the scenario, close.
The daemons it talks to are subprocesses, so the reactor only has to keep
the test's own backend, if any, serving meanwhile.

Every step of a scenario is run through L{ChromiumSession.step}: a failing
step saves a screenshot, the page's HTML and the browser's console log
under the test's temporary directory and names them in the failure.

Chromium is required, never skipped: without it the tests fail saying how to
install it (C{apt-get install chromium}).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

__all__ = [
    "CHROMIUM",
    "ChromiumSession",
    "StepFailed",
    "chromium_missing",
    "run_in_chromium",
]

T = TypeVar("T")

#: The browser binary (Debian's C{chromium} package).
CHROMIUM = Path(os.environ.get("APPPROXY_CHROMIUM", "/usr/bin/chromium"))
#: Bound on any one wait of a step (milliseconds, as Playwright counts).
STEP_TIMEOUT_MS = 15_000
#: Host names the tests use, all on loopback (C{*.localhost} already is).
HOST_RULES = "MAP *.appproxy.localhost 127.0.0.1, MAP *.appproxy.test 127.0.0.1"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    f"--host-resolver-rules={HOST_RULES}",
]
_INSTALL = (
    "install Debian's chromium package (`apt-get install chromium`; .ci/run does) and"
    " Playwright for Python (`make install` brings it with the dev extra)"
)


def chromium_missing() -> str | None:
    """What is missing to run the browser tests, or L{None}."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing: {_INSTALL}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the playwright module is missing: {_INSTALL}"
    return None


class StepFailed(AssertionError):
    """A scenario's step failed; the message names the saved artifacts."""


class ChromiumSession:
    """
    One browser (a fresh profile), used from the one thread that made it.

    @ivar console: every console message and page error so far, as lines.
    @ivar navigations: the URL of every main-frame navigation, in order.
    @ivar documents: C{(status, URL)} of every main-frame document response.
    """

    def __init__(self, browser: Any, artifacts: Path) -> None:
        self._browser = browser
        self._artifacts = artifacts
        self.console: list[str] = []
        self.navigations: list[str] = []
        self.documents: list[tuple[int, str]] = []
        self.page: Any = None
        self._steps = 0

    def new_page(self) -> Any:
        """
        A page in a new context (no cookies), made the current one;
        L{navigations} and L{documents} start again.
        """
        self.navigations = []
        self.documents = []
        context = self._browser.new_context(ignore_https_errors=True)
        context.set_default_timeout(STEP_TIMEOUT_MS)
        context.set_default_navigation_timeout(STEP_TIMEOUT_MS)
        page = context.new_page()
        page.on("console", lambda m: self.console.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

        def navigated(frame: Any) -> None:
            if frame == page.main_frame:
                self.navigations.append(frame.url)

        def responded(response: Any) -> None:
            request = response.request
            if request.is_navigation_request() and request.frame == page.main_frame:
                self.documents.append((response.status, response.url))

        page.on("framenavigated", navigated)
        page.on("response", responded)
        self.page = page
        return page

    def step(self, name: str, action: Callable[[Any], T]) -> T:
        """
        Run C{action(page)}; if it fails, save the page and the console log
        and fail naming them.
        """
        self._steps += 1
        try:
            return action(self.page)
        except Exception as e:
            saved = self._save(f"{self._steps:02d}-{name}")
            raise StepFailed(
                f"step {name!r} failed: {type(e).__name__}: {e}\n"
                f"  page: {getattr(self.page, 'url', None)}\n"
                f"  documents: {self.documents[-8:]}\n"
                f"  console: {self.console[-8:]}\n"
                f"  screenshot, HTML and console log: {saved}"
            ) from e

    def _save(self, name: str) -> Path:
        directory = self._artifacts
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}-console.log").write_text("\n".join(self.console) + "\n")
        if self.page is not None:
            try:
                self.page.screenshot(path=str(directory / f"{name}.png"), timeout=5_000)
                (directory / f"{name}.html").write_text(self.page.content())
            except Exception as e:  # the page may be gone: keep the console log
                (directory / f"{name}-screenshot-error.txt").write_text(f"{e}\n")
        return directory


def _run(artifacts: Path, scenario: Callable[[ChromiumSession], T]) -> T:
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            timeout=30_000,
        )  # a fresh temporary profile, removed on close
        try:
            session = ChromiumSession(browser, artifacts)
            session.new_page()
            return scenario(session)
        finally:
            browser.close()
            (artifacts / "duration.txt").write_text(f"{time.monotonic() - started:.1f} s\n")


def run_in_chromium(testcase: Any, scenario: Callable[[ChromiumSession], T]) -> Deferred[T]:
    """
    Run C{scenario} with a fresh Chromium in a thread; fire with its result.
    Fails (never skips) when Chromium or Playwright is missing.
    """
    missing = chromium_missing()
    if missing is not None:
        testcase.fail(f"the browser tests need Chromium: {missing}")
    artifacts = Path(testcase.mktemp()).absolute() / "chromium"
    artifacts.mkdir(parents=True)
    # Playwright's driver is Node.js; keep it from fetching anything.
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    threads = cast(IReactorThreads, reactor)
    return deferToThreadPool(threads, threads.getThreadPool(), _run, artifacts, scenario)
