"""
The device authorization grant (RFC 8628), the connector's side: how
C{appproxy-connector register} gets an administrator's ID token from the
service's OpenID provider without a browser on the connector's host.

It asks the provider's device authorization endpoint for a user code, shows
the verification URL and the code, and polls the token endpoint, honouring
C{interval}, C{slow_down} (5 s more each time), C{authorization_pending},
C{access_denied} and C{expired_token}.  TLS to the provider trusts the
system's store, plus a CA file if one is given (a private provider).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography import x509
from OpenSSL import crypto
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.task import deferLater
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from appproxy.connector.enrolment import CALL_TIMEOUT, UnreachableService
from appproxy.tunnel.enrolment import MAX_BODY, RegistrationInfo

__all__ = ["DeviceFlowError", "SystemTrustPlus", "device_id_token"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: RFC 8628 section 3.5: a C{slow_down} adds this many seconds to the interval.
SLOW_DOWN_STEP = 5.0


class DeviceFlowError(Exception):
    """The device flow ended without a token; the text says why and what to do."""


@implementer(IOpenSSLTrustRoot)
class SystemTrustPlus:
    """The system's trust store, plus the certificates of a PEM bundle."""

    def __init__(self, extra_pem: bytes | None = None) -> None:
        self._extra = x509.load_pem_x509_certificates(extra_pem) if extra_pem else []

    def _addCACertsToContext(self, context: Any) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        for certificate in self._extra:
            store.add_cert(crypto.X509.from_cryptography(certificate))


async def _post_form(
    reactor: Any, agent: Agent, url: str, form: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    body = FileBodyProducer(io.BytesIO(urlencode(form).encode()))
    headers = Headers(
        {
            b"content-type": [b"application/x-www-form-urlencoded"],
            b"accept": [b"application/json"],
        }
    )
    try:
        call = agent.request(b"POST", url.encode("ascii"), headers, body)
        call.addTimeout(CALL_TIMEOUT, reactor)
        response = await call
        reading = readBody(response)
        reading.addTimeout(CALL_TIMEOUT, reactor)
        answer = await reading
    except Exception as e:
        raise UnreachableService(f"the OpenID provider at {url}: {e}") from None
    if len(answer) > MAX_BODY:
        raise DeviceFlowError(f"the OpenID provider's answer at {url} is too large")
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise DeviceFlowError(
            f"the OpenID provider's answer at {url} (HTTP {response.code}) is not a JSON object"
        )
    return response.code, data


def _https(url: str | None, what: str) -> str:
    if not url or urlsplit(url).scheme != "https":
        raise DeviceFlowError(f"the provider's {what} is not an https URL: {url!r}")
    return url


async def device_id_token(
    reactor: Any,
    info: RegistrationInfo,
    show: Callable[[str], None],
    *,
    idp_ca_pem: bytes | None = None,
    slow_down_step: float = SLOW_DOWN_STEP,
    now: Callable[[], float] = time.monotonic,
) -> str:
    """
    Run the device flow with the provider C{info} names; C{show} is given
    the lines the administrator must read (the URL and the code).  Returns
    the ID token.

    @raise DeviceFlowError: the provider refused, the user denied, the code
        expired, or the service offers no device registration.
    @raise UnreachableService: the provider could not be reached.
    """
    if info.device_authorization_endpoint is None or info.client_id is None:
        raise DeviceFlowError(
            "the service offers no registration with an administrator's sign-in"
            " (no device client configured): use --token-file with a token from"
            " 'appproxy connectors token create --group GROUP' on the service host"
        )
    start_url = _https(info.device_authorization_endpoint, "device authorization endpoint")
    token_url = _https(info.token_endpoint, "token endpoint")
    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(SystemTrustPlus(idp_ca_pem)))
    status, start = await _post_form(
        reactor, agent, start_url, {"client_id": info.client_id, "scope": info.scope}
    )
    if status != 200:
        raise DeviceFlowError(
            f"the OpenID provider refused the device authorization request:"
            f" {start.get('error', status)}: {start.get('error_description', '')}".rstrip(": ")
        )
    device_code, user_code = start.get("device_code"), start.get("user_code")
    verification = start.get("verification_uri")
    if not (isinstance(device_code, str) and isinstance(user_code, str) and device_code):
        raise DeviceFlowError("the OpenID provider's device authorization answer is incomplete")
    if not isinstance(verification, str) or not verification:
        raise DeviceFlowError("the OpenID provider's device authorization answer is incomplete")
    interval = start.get("interval", 5)
    expires_in = start.get("expires_in", 600)
    if not isinstance(interval, int | float) or not isinstance(expires_in, int | float):
        raise DeviceFlowError("the OpenID provider's device authorization answer is malformed")
    interval = max(float(interval), 0.1)
    complete = start.get("verification_uri_complete")
    show("To register this connector, an administrator signs in at:")
    show(f"  {verification}")
    show(f"and enters the code: {user_code}")
    if isinstance(complete, str) and complete:
        show(f"(or opens {complete})")
    deadline = now() + float(expires_in)
    while now() < deadline:
        await deferLater(reactor, interval, lambda: None)
        form = {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": info.client_id}
        status, answer = await _post_form(reactor, agent, token_url, form)
        if status == 200:
            id_token = answer.get("id_token")
            if not isinstance(id_token, str) or not id_token:
                raise DeviceFlowError(
                    "the OpenID provider gave no ID token (is 'openid' in the scope?)"
                )
            return id_token
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += slow_down_step
            continue
        if error == "access_denied":
            raise DeviceFlowError("the sign-in was denied at the OpenID provider")
        if error == "expired_token":
            break
        raise DeviceFlowError(
            f"the OpenID provider refused the token request: {error}:"
            f" {answer.get('error_description', '')}".rstrip(": ")
        )
    raise DeviceFlowError("the code expired before an administrator approved it: run this again")
