"""
Is the demo ready?  L{check_ready} answers by doing what the person at the
browser is about to do: it opens the app's URL over verified HTTPS, signs in
as the demo user through the built-in provider, and waits until the page of
the legacy app comes back through the service, the tunnel and the connector.

Standard library only (C{http.client}, C{ssl}, C{html.parser}): it runs in a
thread of the C{appproxy demo} process, which has no reactor.  Every host
name is reached on 127.0.0.1 (as C{*.localhost} names are by browsers), with
the certificate checked against the demo's CA for that host name.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import attrs

__all__ = ["APP_MARKER", "NotReady", "ReadyCheck", "check_ready"]

#: What the demo's legacy app puts in every HTML page it serves.
APP_MARKER = "Hello from the internal app"
#: Seconds between attempts while a part is not up yet.
RETRY_DELAY = 0.2
#: Upper bound on one request (the service may queue a request for a while).
REQUEST_TIMEOUT = 15.0
#: Redirects and refreshes followed in one navigation.
MAX_HOPS = 12


class NotReady(Exception):
    """The demo did not become ready; the message says where it stopped."""


class _OutOfTime(Exception):
    """The deadline passed before a request could start."""


@attrs.frozen
class ReadyCheck:
    """What to check and the demo user's credentials."""

    url: str
    """The app's public URL (C{https://echo.DOMAIN:PORT/})."""
    ca_pem: Path
    """The demo CA, which signs the service's certificate."""
    user: str
    password: str


@attrs.frozen
class _Page:
    url: str
    status: int
    location: str | None
    text: str


class _PageParser(HTMLParser):
    """The first form (action, method, fields) and a refresh target."""

    def __init__(self) -> None:
        super().__init__()
        self.form: tuple[str, str] | None = None
        self.fields: dict[str, str] = {}
        self.field_types: dict[str, str] = {}
        self.refresh: str | None = None
        self.text: list[str] = []
        self._in_form = False
        self._in_style = False

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attributes}
        if tag == "form" and self.form is None:
            self.form = (a.get("action", ""), a.get("method", "get").lower())
            self._in_form = True
        elif tag == "input" and self._in_form and a.get("name"):
            self.fields.setdefault(a["name"], a.get("value", ""))
            self.field_types.setdefault(a["name"], a.get("type", "text").lower())
        elif tag in ("style", "script"):
            self._in_style = True
        elif tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            _, _, target = a.get("content", "").partition("=")
            self.refresh = target.strip() or None

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag in ("style", "script"):
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if not self._in_style:
            self.text.append(data)


def _parse(text: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(text)
    parser.close()
    return parser


class _Browser:
    """
    Just enough of a browser: host-only cookies, redirects and refreshes
    followed, one form submitted; every connection to 127.0.0.1.
    """

    def __init__(self, ca_pem: Path, deadline: float) -> None:
        self.context = ssl.create_default_context(cafile=str(ca_pem))
        self.deadline = deadline
        self.jar: dict[str, dict[str, str]] = {}

    def _timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _OutOfTime()
        return min(left, REQUEST_TIMEOUT)

    def request(self, method: str, url: str, body: bytes | None = None) -> _Page:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or 443
        timeout = self._timeout()
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        connection = http.client.HTTPSConnection(host, port, timeout=timeout)
        try:
            connection.sock = self.context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        try:
            headers = {"Accept": "text/html", "User-Agent": "appproxy-demo-check"}
            cookies = self.jar.get(host, {})
            if cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
            if body is not None:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            path = parts.path or "/"
            connection.request(
                method, path + (f"?{parts.query}" if parts.query else ""), body, headers
            )
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
            for header in response.headers.get_all("Set-Cookie") or []:
                self._store(host, header)
            return _Page(url, response.status, response.getheader("Location"), text)
        finally:
            connection.close()

    def _store(self, host: str, header: str) -> None:
        pair, *attributes = header.split(";")
        name, _, value = pair.strip().partition("=")
        gone = any(a.strip().lower() in ("max-age=0", "max-age=-1") for a in attributes)
        cookies = self.jar.setdefault(host, {})
        if gone:
            cookies.pop(name, None)
        else:
            cookies[name] = value

    def follow(self, page: _Page) -> _Page:
        """Follow redirects and refreshes from C{page} to a page that stays."""
        for _ in range(MAX_HOPS):
            target = page.location if page.status in (301, 302, 303, 307, 308) else None
            if target is None and page.status == 200:
                target = _parse(page.text).refresh
            if target is None:
                return page
            page = self.request("GET", urljoin(page.url, target))
        raise NotReady(f"more than {MAX_HOPS} redirects from {page.url}")

    def sign_in(self, page: _Page, user: str, password: str) -> _Page:
        parsed = _parse(page.text)
        if parsed.form is None or "password" not in parsed.field_types.values():
            raise NotReady(f"no sign-in form at {page.url} (status {page.status})")
        action, method = parsed.form
        fields = dict(parsed.fields)
        for name, kind in parsed.field_types.items():
            if kind == "password":
                fields[name] = password
            elif kind in ("text", "email") and not fields[name]:
                fields[name] = user
        target = urljoin(page.url, action or page.url)
        body = urlencode(fields)
        if method == "post":
            return self.follow(self.request("POST", target, body.encode("ascii")))
        return self.follow(self.request("GET", f"{target}?{body}"))


def _is_app(page: _Page) -> bool:
    return page.status == 200 and APP_MARKER in page.text


def check_ready(
    check: ReadyCheck, timeout: float, stopped: Callable[[], bool] = lambda: False
) -> None:
    """
    Return once the app's page comes back to a signed-in user.

    Retries while a part is not up yet (connection refused, a 502/503 from
    the service while no connector is connected) until C{timeout} seconds
    have passed or C{stopped()} is true.

    @raise NotReady: with the last thing seen, if it never became ready.
    """
    deadline = time.monotonic() + timeout
    browser = _Browser(check.ca_pem, deadline)
    last = "nothing tried yet"
    signed_in = False
    while not stopped():
        try:
            page = browser.follow(browser.request("GET", check.url))
            if not signed_in and page.status == 200 and not _is_app(page):
                page = browser.sign_in(page, check.user, check.password)
                signed_in = True
            if _is_app(page):
                return
            last = f"{page.url} answered {page.status}"
            if page.status not in (502, 503, 504):
                raise NotReady(f"{last}: {_first_line(page.text)}")
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        except _OutOfTime:
            break
        if time.monotonic() + RETRY_DELAY >= deadline:
            break
        time.sleep(RETRY_DELAY)
    if stopped():
        raise NotReady("stopped")
    raise NotReady(f"not ready after {timeout:g} s (last: {last})")


def _first_line(text: str) -> str:
    """The page's visible text squeezed to one short line, for an error message."""
    words = " ".join(" ".join(_parse(text).text).split())
    return words[:200]
