"""
The service's own answers on a host whose apps are all under a path prefix
(external C{https://files.DOMAIN/ext/}): C{/robots.txt} and the assertion
keys (C{/.well-known/appproxy/jwks.json}) are answered by the service, over
HTTP/1.1 and HTTP/2, and never forwarded; a path outside the prefix is still
a 404.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests import deployment
from tests.deployment import DOMAIN, h2_exchange

JWKS = "/.well-known/appproxy/jwks.json"


class PrefixHostAnswersTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_prefix_host(self) -> Any:
        d = yield deployment.start(
            self,
            [{"name": "files", "external_url": f"https://files.{DOMAIN}/ext/"}],
            connections=1,
        )
        assert d.service is not None
        keys = d.service.frontend.jwks
        client = d.client()
        response = yield client.get(d.url("files", JWKS))
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["application/jwk-set+json"]
        )
        body = yield response.content()
        self.assertEqual(body, keys)
        self.assertIn("keys", json.loads(body))
        response = yield client.get(d.url("files", "/robots.txt"))
        self.assertEqual(response.code, 200)
        yield response.content()
        response = yield client.get(d.url("files", "/elsewhere"))
        self.assertEqual(response.code, 404)
        yield response.content()
        results = yield h2_exchange(
            d, [("GET", JWKS, b""), ("GET", "/robots.txt", b"")], app="files"
        )
        self.assertEqual(results, [(200, keys), (200, b"User-agent: *\nDisallow: /\n")])
        self.assertEqual(d.backend.hits, 0)
