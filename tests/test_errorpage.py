"""
Tests for L{appproxy.frontend.errorpage}.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.frontend.errorpage import (
    ROBOTS_TXT,
    VIEWPORT_META,
    ErrorPage,
    format_timestamp,
    html_page,
    prefers_json,
    render_error,
    render_not_found,
)

HTML = b"text/html; charset=utf-8"
JSON = b"application/json"

PAGE = ErrorPage(
    status=503,
    title="No connector available",
    detail="No connector available for wiki.",
    source="connector",
    request_id="0123456789abcdef0123456789abcdef",
    timestamp="2024-05-01T12:00:00Z",
)


class _TextAndTags(HTMLParser):
    """Collects the visible text and the names of elements and links."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(body: bytes) -> _TextAndTags:
    parser = _TextAndTags()
    parser.feed(body.decode("utf-8"))
    parser.close()
    return parser


class PrefersJsonTests(SynchronousTestCase):
    def test_examples(self) -> None:
        for accept, expected in [
            (None, False),
            (b"", False),
            (b"*/*", False),
            (b"application/json", True),
            (b"Application/JSON", True),
            (b"application/json, */*", True),
            (b"application/json, text/plain", True),
            (b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
            (b"text/html, application/json", False),
            (b"application/json, text/html", False),
            (b"application/json;q=0.9, text/html;q=0.8", True),
            (b"application/json;q=0.8, text/html;q=0.9", False),
            (b"text/html;q=0.5, application/json", True),
            (b"application/json;q=0", False),
            (b"application/json;q=0.000", False),
            (b"application/json; q=0.001", True),
            (b"application/json;q=bogus", False),
            (b"application/json;q=2", False),
            (b"application/json;charset=utf-8", True),
            (b"application/json;q=0.5, application/json;q=0, text/html;q=0.4", True),
            (b"text/html;q=bogus, application/json", True),
            (b"application/problem+json", False),
        ]:
            self.assertEqual(prefers_json(accept), expected, accept)


class RenderErrorTests(SynchronousTestCase):
    def test_html_default(self) -> None:
        for accept in [None, b"*/*", b"text/html", b"text/html,application/json"]:
            content_type, body = render_error(PAGE, accept)
            self.assertEqual(content_type, HTML)
            self.assertTrue(body.startswith(b"<!DOCTYPE html>"))

    def test_html_content(self) -> None:
        _, body = render_error(PAGE, None)
        parsed = parse(body)
        text = " ".join(" ".join(parsed.text).split())
        for expected in [
            "503",
            "No connector available",
            "No connector available for wiki.",
            "Source: connector",
            "Request ID: 0123456789abcdef0123456789abcdef",
            "Time: 2024-05-01T12:00:00Z",
        ]:
            self.assertIn(expected, text)
        self.assertIn(b"<title>503 No connector available</title>", body)
        self.assertIn(b'<meta name="robots" content="noindex">', body)

    def test_html_self_contained(self) -> None:
        """No scripts, no external resources."""
        _, body = render_error(PAGE, None)
        parsed = parse(body)
        self.assertNotIn("script", parsed.tags)
        self.assertNotIn("link", parsed.tags)
        self.assertNotIn("img", parsed.tags)
        for name, _ in parsed.attributes:
            self.assertNotIn(name, {"src", "href"})
        self.assertNotIn(b"url(", body)
        self.assertNotIn(b"@import", body)

    def test_html_escaped(self) -> None:
        page = ErrorPage(
            status=502,
            title="<script>alert(1)</script>",
            detail='"><img src=x onerror=alert(1)>',
            source="<b>x</b>",
            request_id="'&",
            timestamp="<t>",
        )
        _, body = render_error(page, None)
        self.assertNotIn(b"<script", body)
        self.assertNotIn(b"<img", body)
        self.assertNotIn(b"<b>", body)
        self.assertNotIn(b"<t>", body)
        self.assertIn(b"&lt;script&gt;alert(1)&lt;/script&gt;", body)
        self.assertIn(b"&quot;&gt;&lt;img src=x onerror=alert(1)&gt;", body)
        self.assertIn(b"&#x27;&amp;", body)

    def test_html_non_ascii(self) -> None:
        page = ErrorPage(503, "Caf\u00e9 \u2603", "d\u00e9tail", "connector", "id", "t")
        _, body = render_error(page, None)
        self.assertIn("Caf\u00e9 \u2603".encode(), body)

    def test_html_lone_surrogate(self) -> None:
        page = ErrorPage(503, "bad \ud800", "d", "connector", "id", "t")
        content_type, body = render_error(page, None)
        self.assertEqual(content_type, HTML)
        body.decode("utf-8")

    def test_json(self) -> None:
        content_type, body = render_error(PAGE, b"application/json")
        self.assertEqual(content_type, JSON)
        self.assertEqual(
            body,
            b'{"status":503,"error":"No connector available",'
            b'"detail":"No connector available for wiki.","source":"connector",'
            b'"request_id":"0123456789abcdef0123456789abcdef","time":"2024-05-01T12:00:00Z"}',
        )


class RenderNotFoundTests(SynchronousTestCase):
    def test_html(self) -> None:
        content_type, body = render_not_found(
            "nope.example.com", "rid", "2024-05-01T12:00:00Z", None
        )
        self.assertEqual(content_type, HTML)
        text = " ".join(" ".join(parse(body).text).split())
        self.assertIn("404", text)
        self.assertIn("Unknown host", text)
        self.assertIn("No application is published at nope.example.com.", text)
        self.assertIn("Source: appproxy service", text)
        self.assertIn("Request ID: rid", text)

    def test_json(self) -> None:
        content_type, body = render_not_found("nope.example.com", "rid", "T", b"application/json")
        self.assertEqual(content_type, JSON)
        self.assertEqual(
            json.loads(body),
            {
                "status": 404,
                "error": "Unknown host",
                "detail": "No application is published at nope.example.com.",
                "source": "appproxy service",
                "request_id": "rid",
                "time": "T",
            },
        )

    def test_escaped(self) -> None:
        _, body = render_not_found("<script>x</script>", "rid", "T", None)
        self.assertNotIn(b"<script", body)
        self.assertIn(b"&lt;script&gt;x&lt;/script&gt;", body)

    def test_long_host_shortened(self) -> None:
        _, body = render_not_found("a" * 10_000, "rid", "T", b"application/json")
        detail = json.loads(body)["detail"]
        self.assertLess(len(detail), 400)
        self.assertIn("a" * 255 + "\u2026", detail)


class RobotsTests(SynchronousTestCase):
    def test_robots(self) -> None:
        self.assertEqual(ROBOTS_TXT, b"User-agent: *\nDisallow: /\n")


class HtmlPageTests(SynchronousTestCase):
    def test_shell(self) -> None:
        """The title is escaped; the head lines, style and main content are kept as given."""
        body = html_page(
            title="<Sign in> & more",
            style="p{margin:0}",
            head=[VIEWPORT_META, '<meta name="referrer" content="no-referrer">'],
            main="<p>Hello</p>\n",
        )
        text = body.decode("utf-8")
        self.assertTrue(text.startswith("<!DOCTYPE html>\n"))
        self.assertIn(f'{VIEWPORT_META}\n<meta name="referrer" content="no-referrer">\n', text)
        self.assertIn("<title>&lt;Sign in&gt; &amp; more</title>", text)
        self.assertIn("<style>p{margin:0}</style>", text)
        self.assertIn("<main>\n<p>Hello</p>\n</main>", text)
        parsed = parse(body)
        self.assertEqual(parsed.tags.count("meta"), 4)
        self.assertIn(("name", "robots"), parsed.attributes)


class TimestampTests(SynchronousTestCase):
    def test_format(self) -> None:
        self.assertEqual(format_timestamp(0), "1970-01-01T00:00:00Z")
        self.assertEqual(format_timestamp(1714564800.9), "2024-05-01T12:00:00Z")


texts = st.text(max_size=40)
hostile = st.builds(
    lambda before, after: before + "<script>alert(1)</script>" + after, texts, texts
)
texts_or_hostile = st.one_of(texts, hostile)
pages = st.builds(
    ErrorPage,
    status=st.integers(400, 599),
    title=texts_or_hostile,
    detail=texts_or_hostile,
    source=texts_or_hostile,
    request_id=texts_or_hostile,
    timestamp=texts_or_hostile,
)


class ErrorPagePropertyTests(SynchronousTestCase):
    @given(pages)
    def test_html_escaped(self, page: ErrorPage) -> None:
        """No user-controlled text can open an element."""
        content_type, body = render_error(page, None)
        self.assertEqual(content_type, HTML)
        self.assertNotIn(b"<script", body.lower())
        tags = parse(body).tags
        self.assertEqual(
            tags,
            [
                "html",
                "head",
                "meta",
                "meta",
                "meta",
                "meta",
                "title",
                "style",
                "body",
                "main",
                "p",
                "h1",
                "p",
                "dl",
                "dt",
                "dd",
                "dt",
                "dd",
                "dt",
                "dd",
            ],
        )

    @given(texts_or_hostile, texts, texts)
    def test_not_found_html_escaped(self, host: str, request_id: str, timestamp: str) -> None:
        _, body = render_not_found(host, request_id, timestamp, b"text/html")
        self.assertNotIn(b"<script", body.lower())

    @given(pages, st.sampled_from([b"application/json", b"text/html;q=0.1, application/json"]))
    def test_json_round_trip(self, page: ErrorPage, accept: bytes) -> None:
        content_type, body = render_error(page, accept)
        self.assertEqual(content_type, JSON)
        self.assertEqual(
            json.loads(body),
            {
                "status": page.status,
                "error": page.title,
                "detail": page.detail,
                "source": page.source,
                "request_id": page.request_id,
                "time": page.timestamp,
            },
        )

    @given(texts_or_hostile, texts, texts)
    def test_not_found_json_round_trip(self, host: str, request_id: str, timestamp: str) -> None:
        content_type, body = render_not_found(host, request_id, timestamp, b"application/json")
        self.assertEqual(content_type, JSON)
        document = json.loads(body)
        self.assertEqual(document["status"], 404)
        self.assertEqual(document["error"], "Unknown host")
        self.assertEqual(document["request_id"], request_id)
        self.assertEqual(document["time"], timestamp)
        if len(host) <= 255:
            self.assertEqual(document["detail"], f"No application is published at {host}.")
