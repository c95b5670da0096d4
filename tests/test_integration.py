"""
The whole path on loopback: TLS client -> service -> HTTP/2 tunnel ->
connector -> backend, with real TLS and the real daemons' services.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests import deployment


class RoundTripTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_get(self) -> Any:
        """
        A GET goes through and the backend sees the internal Host, the path
        and a request id.
        """
        d = yield deployment.start(self)
        response = yield d.client().get(d.url("web", "/echo?x=1"))
        self.assertEqual(response.code, 200)
        body = json.loads((yield response.content()))
        self.assertEqual(body["method"], "GET")
        self.assertEqual(body["uri"], "/echo?x=1")
        headers = dict((k, v) for k, v in body["headers"])
        self.assertEqual(headers["host"], f"127.0.0.1:{d.backend_port.getHost().port}")
        self.assertEqual(len(headers["x-request-id"]), 32)

    @inlineCallbacks
    def test_streamed_post(self) -> Any:
        """
        A 5 MiB POST arrives intact.
        """
        d = yield deployment.start(self)
        payload = os.urandom(5 * 1024 * 1024)
        response = yield d.client().post(d.url("web", "/echo"), data=payload)
        self.assertEqual(response.code, 200)
        body = json.loads((yield response.content()))
        self.assertEqual(body["body_length"], len(payload))
        self.assertEqual(body["body_sha256"], hashlib.sha256(payload).hexdigest())
