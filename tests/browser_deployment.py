"""
Deployments for the real-browser tests: C{appproxy init}, then the service
and a connector as C{twistd} subprocesses (the installed code, as
L{tests.test_daemons} runs them), in front of a small app run by the test
(L{FormEcho}) on loopback.  Apps are published as
C{NAME.appproxy.localhost:PORT}, the demo's domain, which Chromium resolves
to loopback.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web import resource, server

from appproxy.idp.users import add_user
from tests.test_daemons import PYTHON, Process, free_ports, spawn, twistd

__all__ = ["DOMAIN", "Daemons", "FormEcho", "free_ports", "start_daemons", "users_file"]

DOMAIN = "appproxy.localhost"
APP = "web"

#: The form the app serves at C{/form}: posted to C{/submit}.
FORM_PAGE = b"""<!DOCTYPE html>
<html><head><title>A form</title></head><body>
<form method="post" action="/submit">
<input name="comment" value="">
<button type="submit" id="send">Send</button>
</form></body></html>
"""


class FormEcho(resource.Resource):
    """
    The internal app: C{/form} is an HTML form; anything else answers with
    the request (method, URI, headers, body) as JSON, and is remembered.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []

    def render(self, request: Any) -> bytes:
        if request.path == b"/form":
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return FORM_PAGE
        seen = {
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": {
                k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs]
                for k, vs in request.requestHeaders.getAllRawHeaders()
            },
            "body": request.content.read().decode("utf-8", "replace"),
        }
        self.requests.append(seen)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(seen).encode()


@attrs.define
class Daemons:
    """A running deployment: its directory, ports and processes."""

    config_dir: Path
    public: int
    service: Process
    connector: Process
    backend: FormEcho

    def url(self, path: str = "/", app: str = APP) -> str:
        return f"https://{app}.{DOMAIN}:{self.public}{path}"

    @property
    def login_host(self) -> str:
        return f"login.{DOMAIN}"

    def describe(self) -> str:
        return f"{self.service.describe()}\n{self.connector.describe()}"


def users_file(config: Path) -> Path:
    """The built-in provider's users file, under the service's state directory."""
    service = tomllib.loads(config.read_text())["service"]
    return config.parent / service["state_dir"] / "users.json"


@inlineCallbacks
def start_daemons(
    testcase: Any,
    *,
    users: dict[str, dict[str, Any]],
    edit: Callable[[Path], None] | None = None,
    ports: tuple[int, int] | None = None,
) -> Any:
    """
    C{appproxy init} for the app C{web} in front of a new L{FormEcho}; the
    built-in provider's C{users} (name -> password and add_user's keyword
    arguments); C{edit(service_toml)} before the daemons start.

    @param ports: the public and tunnel ports (default: free ones).
    """
    site: Any = server.Site(FormEcho())
    backend = reactor.listenTCP(0, site, interface="127.0.0.1")
    testcase.addCleanup(backend.stopListening)
    public, tunnel = ports or free_ports(2)
    parent = Path(testcase.mktemp()).absolute()
    parent.mkdir(parents=True)
    config_dir = parent / "appproxy"
    argv = [
        *(PYTHON, "-m", "appproxy", "init", "--state-dir", str(config_dir)),
        *("--domain", DOMAIN, "--app-name", APP),
        *("--port", str(public), "--tunnel-port", str(tunnel), "--metrics-listen=none"),
        *("--internal-url", f"http://127.0.0.1:{backend.getHost().port}/"),  # type: ignore[attr-defined]
    ]
    init = spawn(testcase, "appproxy init", argv, parent)
    status = yield init.ended(30.0)
    testcase.assertEqual(status, (0, None), init.describe())
    config = config_dir / "service.toml"
    path = users_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, settings in users.items():
        settings = dict(settings)
        add_user(path, name, settings.pop("password"), **settings)
    if edit is not None:
        edit(config)
    service = twistd(testcase, "appproxy", config, parent)
    yield service.wait_for("appproxy service ready", 30.0)
    connector = twistd(
        testcase, "appproxy-connector", config_dir / "connector" / "connector.toml", parent
    )
    yield service.wait_for("connected from", 30.0)
    return Daemons(config_dir, public, service, connector, site.resource)
