"""
L{appproxy.daemon.side_http.answer_as_site}: the metrics listener and the
enrolment API, served by twisted.web's C{http} module alone, answer as
twisted.web's site did; and L{appproxy.http.render.NOT_DONE_YET}, which
stands for twisted.web's.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase
from twisted.web import http, server
from twisted.web.test.requesthelper import DummyChannel

from appproxy.daemon.side_http import SERVER, answer_as_site
from appproxy.http.render import NOT_DONE_YET


def _request(method: bytes) -> tuple[http.Request, Any]:
    channel: Any = DummyChannel()
    request = http.Request(channel)
    request.method = method
    request.clientproto = b"HTTP/1.1"
    return request, channel.transport


class AnswerAsSiteTests(TestCase):
    def test_get(self) -> None:
        """The body with its length, twisted.web's Server and a Date field."""
        request, transport = _request(b"GET")
        answer_as_site(request, lambda r: b"hello")
        self.assertTrue(request.finished)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"server"), [SERVER])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [b"5"])
        self.assertIsNotNone(request.responseHeaders.getRawHeaders(b"date"))
        self.assertTrue(transport.written.getvalue().endswith(b"\r\n\r\nhello"))

    def test_head(self) -> None:
        """HEAD gets the GET answer's fields, length included, and no body."""
        request, transport = _request(b"HEAD")
        answer_as_site(request, lambda r: b"hello")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [b"5"])
        self.assertTrue(transport.written.getvalue().endswith(b"\r\n\r\n"))

    def test_later(self) -> None:
        """An answer to come (NOT_DONE_YET) is left to the resource."""
        request, transport = _request(b"GET")
        answer_as_site(request, lambda r: NOT_DONE_YET)
        self.assertFalse(request.finished)
        self.assertEqual(transport.written.getvalue(), b"")

    def test_not_done_yet(self) -> None:
        """The service's own pages answer later with twisted.web's value."""
        self.assertIs(NOT_DONE_YET, server.NOT_DONE_YET)
