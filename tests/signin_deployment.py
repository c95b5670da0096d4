"""
Deployments that sign users in: the real service, connector and backend
(L{tests.deployment}), with the built-in identity provider, the independent
C{oidc-provider} (npm), or a rogue provider that issues bad tokens.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks

from appproxy.idp.users import add_user
from tests.browser import Browser, Page
from tests.deployment import DOMAIN, Deployment

LOGIN = f"login.{DOMAIN}"
CLIENT_SECRET = "a-client-secret-of-some-length-0123"

__all__ = [
    "CLIENT_SECRET",
    "LOGIN",
    "SignInDeployment",
    "backend_headers",
    "free_port",
    "start_builtin",
    "start_external",
]


def free_port() -> int:
    """A port free on 127.0.0.1 now (the service binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def backend_headers(page: Page) -> dict[str, list[str]]:
    """The headers the backend echoed, by lowercase name."""
    assert page.status == 200, f"{page.status} at {page.url}: {page.text[:500]}"
    echoed = json.loads(page.body)
    result: dict[str, list[str]] = {}
    for name, value in echoed["headers"]:
        result.setdefault(name, []).append(value)
    return result


class SignInDeployment(Deployment):
    """A L{Deployment} whose apps sign users in."""

    browser_cas: list[bytes]
    #: Other hosts the browser reaches on loopback (an external provider).
    extra_ports: dict[str, int] = {}

    def browser(self) -> Browser:
        ports = {host: self.public_port for host in self.hosts}
        ports.update(self.extra_ports)
        return Browser(self.browser_cas, ports)

    @property
    def hosts(self) -> list[str]:
        return [LOGIN, *(f"{app['name']}.{DOMAIN}" for app in self.apps)]

    @property
    def state(self) -> Path:
        return self.root / "state"

    def add_user(self, username: str, password: str, **kwargs: Any) -> None:
        add_user(self.state / "users.json", username, password, **kwargs)


def _apps(apps: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if apps is None:
        apps = [
            {
                "name": "web",
                "external_url": f"https://web.{DOMAIN}/",
                "headers": {
                    "X-Remote-User": "preferred_username",
                    "X-Remote-Groups": "groups",
                    "X-Remote-Email": "email",
                    "X-Remote-Name": "name",
                },
            }
        ]
    return [{"pre_authentication": "oidc", **app} for app in apps]


@inlineCallbacks
def start_builtin(
    testcase: Any,
    apps: list[dict[str, Any]] | None = None,
    extra_toml: str = "",
    users: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """
    Service + connector + backend, signing in with the built-in provider at
    C{https://login.appproxy.test} (the same listener).
    """
    port = free_port()
    toml = f"""
[oidc]
issuer = "https://{LOGIN}"
client_id = "appproxy"
client_secret_file = "client-secret"
callback_url = "https://{LOGIN}/.appproxy/callback"
provider_ca = "ca.pem"
provider_address = "127.0.0.1:{port}"

[builtin_provider]
issuer = "https://{LOGIN}"
{extra_toml}
"""
    d = SignInDeployment(testcase, _apps(apps), 5.0, extra_toml=toml)
    d.browser_cas = [d.ca.cert_pem]
    d._write("client-secret", CLIENT_SECRET.encode() + b"\n")
    d.state.mkdir(mode=0o700)
    for username, settings in (users or {"alice": {"password": "correct horse"}}).items():
        settings = dict(settings)
        d.add_user(username, settings.pop("password"), **settings)
    service = d.start_service(public=port)
    testcase.addCleanup(_close_relying_party, service)
    d.start_connector(connections=1)
    yield d.wait_for_connections(1)
    return d


@inlineCallbacks
def start_external(
    testcase: Any,
    *,
    issuer: str,
    provider_ca_pem: bytes,
    provider_address: str | None,
    client_secret: str,
    apps: list[dict[str, Any]] | None = None,
    extra_toml: str = "",
    client_auth: str = "client_secret_basic",
) -> Any:
    """
    Service + connector + backend, signing in with an external provider.
    """
    address = f'provider_address = "{provider_address}"' if provider_address else ""
    toml = f"""
[oidc]
issuer = "{issuer}"
client_id = "appproxy"
client_secret_file = "client-secret"
client_auth = "{client_auth}"
callback_url = "https://{LOGIN}/.appproxy/callback"
provider_ca = "provider-ca.pem"
{address}
{extra_toml}
"""
    d = SignInDeployment(testcase, _apps(apps), 5.0, extra_toml=toml)
    d.browser_cas = [d.ca.cert_pem, provider_ca_pem]
    d._write("client-secret", client_secret.encode() + b"\n")
    d._write("provider-ca.pem", provider_ca_pem)
    service = d.start_service()
    testcase.addCleanup(_close_relying_party, service)
    d.start_connector(connections=1)
    yield d.wait_for_connections(1)
    return d


def _close_relying_party(service: Any) -> Any:
    sign_in = service.sign_in.sign_in
    if sign_in is not None:
        return sign_in.relying_party.close()
    return None
