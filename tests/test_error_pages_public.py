"""
What the public sees when the way to an app fails, through the real daemons
(C{twistd appproxy}, C{twistd appproxy-connector}) and real C{curl}:

  - a 502 names the app (its name and external URL) in the user's terms; the
    internal URL and the technical reason are in the service's log line,
    with the request id, not on the page;
  - a 503 for a group with no connector connected comes in seconds, not
    after the whole queue timeout: at start, and after the last connector
    went away.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.test_daemons import (
    APP,
    DOMAIN,
    Process,
    free_ports,
    init,
    replace_once,
    twistd,
)

#: The queue timeout of these tests: a 503 that waited it would be far too late.
QUEUE_TIMEOUT = 30
#: How soon the 503 must come when no connector is connected.
PROMPT = 5.0
#: Bound on each curl run (well under the queue timeout).
CURL_MAX_TIME = "15"


def curl(*args: str) -> Any:
    return getProcessOutputAndValue("curl", ["-sS", "--max-time", CURL_MAX_TIME, *args])


def split_response(out: bytes) -> tuple[int, dict[str, str], str]:
    """Status, headers (lowercase names) and body of C{curl -i} output."""
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body.decode("utf-8")


class _Deployment:
    """The daemons as C{appproxy init} sets them up, the app passthrough."""

    def __init__(self, state: Path, public: int, closed: int) -> None:
        self.state = state
        self.public = public
        self.closed = closed
        self.host = f"{APP}.{DOMAIN}:{public}"
        self.external_url = f"https://{self.host}/"

    def get(self, path: str, *headers: str) -> Any:
        extra = [arg for header in headers for arg in ("-H", header)]
        return curl(
            "-i",
            "--resolve",
            f"{self.host}:127.0.0.1",
            "--cacert",
            str(self.state / "ca.pem"),
            *extra,
            f"https://{self.host}{path}",
        )


@inlineCallbacks
def deploy(testcase: TestCase) -> Any:
    """
    C{appproxy init} with the app's internal URL on a port nothing listens
    on, the app published without sign-in and a long queue timeout; the
    service started.
    """
    public, tunnel, closed = free_ports(3)
    state = yield init(
        testcase,
        "--port",
        str(public),
        "--tunnel-port",
        str(tunnel),
        "--listen",
        f"tcp:{public}:interface=127.0.0.1",
        "--internal-url",
        f"http://127.0.0.1:{closed}/",
    )
    config = state / "service.toml"
    replace_once(config, 'pre_authentication = "oidc"', 'pre_authentication = "passthrough"')
    replace_once(config, "queue_timeout = 10\n", f"queue_timeout = {QUEUE_TIMEOUT}\n")
    service = twistd(testcase, "appproxy", config, state.parent)
    yield service.wait_for("appproxy service ready")
    return _Deployment(state, public, closed), service


def start_connector(testcase: TestCase, deployment: _Deployment) -> Process:
    state = deployment.state
    return twistd(
        testcase, "appproxy-connector", state / "connector" / "connector.toml", state.parent
    )


def log_line(process: Process, needle: str) -> str:
    lines = [line for line in process.output().splitlines() if needle in line]
    if not lines:
        raise AssertionError(f"no log line with {needle!r}\n{process.describe()}")
    return "\n".join(lines)


class BadGatewayPageTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_502_names_the_app_not_the_internal_url(self) -> Any:
        d, service = yield deploy(self)
        connector = start_connector(self, d)
        yield service.wait_for("of group default connected")
        internal = f"127.0.0.1:{d.closed}"

        out, err, code = yield d.get("/some/path?q=1", "Accept: text/html")
        self.assertEqual(code, 0, err)
        status, headers, page = split_response(out)
        self.assertEqual(status, 502, out)
        request_id = headers["x-request-id"]
        self.assertIn(f"{APP} ({d.external_url})", page)
        self.assertIn(request_id, page)
        for internal_detail in (internal, str(d.closed), "http://127", "refused"):
            self.assertNotIn(internal_detail, page)

        # JSON clients get the same words.
        out, err, code = yield d.get("/", "Accept: application/json")
        self.assertEqual(code, 0, err)
        status, headers, body = split_response(out)
        self.assertEqual(status, 502, out)
        document = json.loads(body)
        self.assertIn(f"{APP} ({d.external_url})", document["detail"])
        self.assertNotIn(internal, body)
        self.assertNotIn(str(d.closed), body)

        # The detail is in the service's log, on the line with the request id.
        yield service.wait_for(request_id)
        line = log_line(service, request_id)
        self.assertIn("502", line)
        self.assertIn(f"http://{internal}/some/path?q=... refused the connection", line)
        # And in the connector's.
        yield connector.wait_for(request_id)
        self.assertIn(internal, log_line(connector, request_id))


class NoConnectorTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def assertPrompt503(self, d: _Deployment, service: Process) -> Any:
        started = time.monotonic()
        out, err, code = yield d.get("/", "Accept: text/html")
        elapsed = time.monotonic() - started
        self.assertEqual(code, 0, err)
        status, headers, page = split_response(out)
        self.assertEqual(status, 503, out)
        self.assertLess(elapsed, PROMPT, f"the 503 took {elapsed:.1f} s")
        self.assertIn(f"{APP} ({d.external_url})", page)
        request_id = headers["x-request-id"]
        yield service.wait_for(request_id)
        self.assertIn("no connector of group 'default' is connected", log_line(service, request_id))

    @inlineCallbacks
    def test_no_connector_ever(self) -> Any:
        """No connector has connected since the service started."""
        d, service = yield deploy(self)
        yield self.assertPrompt503(d, service)

    @inlineCallbacks
    def test_last_connector_gone(self) -> Any:
        """The group's only connector was there and is gone (killed)."""
        d, service = yield deploy(self)
        connector = start_connector(self, d)
        yield service.wait_for("of group default connected")
        connector.signal("KILL")
        yield connector.ended()
        yield service.wait_for("of group default disconnected")
        yield self.assertPrompt503(d, service)
