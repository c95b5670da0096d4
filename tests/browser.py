"""
A browser stand-in for integration tests: HTTPS to loopback (every host name
resolves to 127.0.0.1, TLS verified against a given CA with the URL's host
name), a cookie jar that follows the rules the service relies on (host-only
cookies, C{Secure}, C{Max-Age}, C{__Host-} prefix), redirects followed by
hand, and HTML forms filled and submitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import attrs
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

__all__ = ["Browser", "Form", "Page", "find_forms", "meta_refresh"]


@implementer(IAgentEndpointFactory)
class _Loopback:
    def __init__(self, ca_pems: list[bytes], ports: Mapping[str, int]) -> None:
        self.trust = trustRootFromCertificates([Certificate.loadPEM(pem) for pem in ca_pems])
        self.ports = ports

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        port = self.ports.get(host, uri.port)
        options = optionsForClientTLS(host, trustRoot=self.trust)
        return wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))


@attrs.frozen
class Page:
    url: str
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@attrs.frozen
class Form:
    action: str
    method: str
    fields: dict[str, str]


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs_}
        if tag == "form":
            self._current = Form(a.get("action", ""), a.get("method", "get").lower(), {})
            self.forms.append(self._current)
        elif tag in ("input", "button", "textarea") and self._current is not None:
            name = a.get("name")
            if name and a.get("type", "").lower() not in ("submit", "button"):
                self._current.fields.setdefault(name, a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def find_forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


class _RefreshParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.contents: list[str] = []

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs_}
        if tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            self.contents.append(a.get("content", ""))


def meta_refresh(html: str) -> str | None:
    """
    The URL of an immediate meta refresh (C{content="0;url=..."}, the
    attribute's entities decoded) on the page, if there is one.
    """
    parser = _RefreshParser()
    parser.feed(html)
    for content in parser.contents:
        delay, _, rest = content.partition(";")
        key, _, url = rest.strip().partition("=")
        if delay.strip() == "0" and key.strip().lower() == "url" and url.strip():
            return url.strip()
    return None


@attrs.define
class _Cookie:
    value: str
    expires: float | None


class Browser:
    """
    Fetch pages as a browser would, keeping cookies per host.

    @ivar history: every URL requested, in order.
    @ivar sent_cookies: the C{Cookie} header sent with each request, by URL.
    """

    def __init__(
        self, ca_pems: list[bytes], ports: Mapping[str, int] | None = None, max_redirects: int = 12
    ) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent.usingEndpointFactory(
            reactor, _Loopback(ca_pems, ports or {}), pool=self.pool
        )
        self.jar: dict[str, dict[str, _Cookie]] = {}
        self.history: list[str] = []
        self.max_redirects = max_redirects

    def cookies(self, host: str) -> dict[str, str]:
        now = reactor.seconds()
        return {
            name: cookie.value
            for name, cookie in self.jar.get(host, {}).items()
            if cookie.expires is None or cookie.expires > now
        }

    def set_cookie(self, host: str, name: str, value: str) -> None:
        self.jar.setdefault(host, {})[name] = _Cookie(value, None)

    def _store(self, host: str, header: str) -> None:
        pair, *attributes = header.split(";")
        name, _, value = pair.strip().partition("=")
        names = {a.strip().split("=", 1)[0].lower(): a.strip() for a in attributes}
        if "secure" not in names:
            raise AssertionError(f"cookie {name} set without Secure")
        if name.startswith("__Host-") and ("domain" in names or names.get("path") != "Path=/"):
            raise AssertionError(f"__Host- cookie {name} with Domain or without Path=/")
        expires: float | None = None
        if "max-age" in names:
            expires = reactor.seconds() + int(names["max-age"].split("=", 1)[1])
        cookies = self.jar.setdefault(host, {})
        if expires is not None and expires <= reactor.seconds():
            cookies.pop(name, None)
        else:
            cookies[name] = _Cookie(value, expires)

    @inlineCallbacks
    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, list[str]] | None = None,
    ) -> Any:
        """One request (no redirect followed); cookies sent and stored."""
        from io import BytesIO

        from twisted.web.client import FileBodyProducer

        host = urlsplit(url).hostname or ""
        sent = Headers({k: v for k, v in (headers or {}).items()})
        cookies = self.cookies(host)
        if cookies:
            sent.setRawHeaders(
                "cookie", ["; ".join(f"{name}={value}" for name, value in cookies.items())]
            )
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        self.history.append(url)
        response = yield self.agent.request(method.encode(), url.encode(), sent, producer)
        content = yield readBody(response)
        for header in response.headers.getRawHeaders("set-cookie", []):
            self._store(host, header)
        return Page(url=url, status=response.code, headers=response.headers, body=content)

    @staticmethod
    def next_url(page: Page) -> str | None:
        """Where the browser goes on from C{page}: a redirect or meta refresh."""
        if page.status in (301, 302, 303, 307, 308):
            location = page.header("location")
            assert location is not None, "redirect without Location"
            return urljoin(page.url, location)
        content_type = page.header("content-type") or ""
        if page.status == 200 and content_type.startswith("text/html"):
            refresh = meta_refresh(page.text)
            if refresh is not None:
                return urljoin(page.url, refresh)
        return None

    @inlineCallbacks
    def follow(self, page: Page) -> Any:
        """Follow redirects and immediate meta refreshes from C{page}."""
        for _ in range(self.max_redirects):
            target = self.next_url(page)
            if target is None:
                return page
            page = yield self.request("GET", target)
        raise AssertionError(f"more than {self.max_redirects} redirects: {self.history[-6:]}")

    @inlineCallbacks
    def go(self, url: str, **kwargs: Any) -> Any:
        """GET C{url} and follow redirects to the final page."""
        page = yield self.request("GET", url, **kwargs)
        result = yield self.follow(page)
        return result

    @inlineCallbacks
    def submit(
        self, page: Page, values: Mapping[str, str], index: int = 0, follow: bool = True
    ) -> Any:
        """Fill the page's form and submit it; follow redirects unless told not to."""
        forms = find_forms(page.text)
        assert forms, f"no form on {page.url}: {page.text[:300]}"
        form = forms[index]
        fields = {**form.fields, **values}
        action = urljoin(page.url, form.action or page.url)
        if form.method == "post":
            result = yield self.request(
                "POST",
                action,
                body=urlencode(fields).encode(),
                headers={"content-type": ["application/x-www-form-urlencoded"]},
            )
        else:
            result = yield self.request("GET", f"{action}?{urlencode(fields)}")
        if not follow:
            return result
        final = yield self.follow(result)
        return final
