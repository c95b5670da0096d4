"""
Start an independent OpenID provider for interoperability tests.

The provider is C{oidc-provider} from npm (panva's certified implementation),
run by Node.js from C{tests/interop/provider.mjs} with a JSON configuration
written here: HTTPS on 127.0.0.1 with a server certificate from a fresh test CA
(L{appproxy.daemon.pki}), static clients, users with a password and an optional
one-time code, and a private signing key set generated here, so that a key
rotation is a restart with new keys and new key ids.  The device authorization
grant (RFC 8628) is on for clients that ask for it: L{device_client} makes the
metadata of a public one, as C{appproxy-connector register} uses.

Its JavaScript dependencies are installed by C{npm ci --prefix tests/interop};
L{node_available} says what is missing, and tests that need the provider must
fail (not skip) when it says anything.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.defer import (
    Deferred,
    TimeoutError,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from appproxy.daemon import pki

__all__ = [
    "DEVICE_CODE_GRANT",
    "INSTALL_HINT",
    "NODE_DIR",
    "SIGNING_ALGORITHMS",
    "NodeProvider",
    "NodeProviderError",
    "device_client",
    "generate_jwks",
    "node_available",
    "public_jwks",
    "start_node_provider",
]

NODE_DIR = Path(__file__).resolve().parent / "interop"
"""The npm project holding C{provider.mjs}, its C{package.json} and lockfile."""

INSTALL_HINT = "run `npm ci --prefix tests/interop` (needs Node.js 18 or newer)"

SIGNING_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
"""The ID token signing algorithms L{generate_jwks} makes keys for."""

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
"""The grant type of the device flow's token request."""

_SCRIPT = NODE_DIR / "provider.mjs"
_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_STDERR_LIMIT = 64 * 1024
_CLIENT_DEFAULTS: Mapping[str, Any] = {
    "grant_types": ["authorization_code"],
    "response_types": ["code"],
    "token_endpoint_auth_method": "client_secret_basic",
}


class NodeProviderError(Exception):
    """
    The provider could not be started or stopped cleanly; the message holds
    the end of what it wrote on its standard error.
    """


def node_available() -> str | None:
    """
    Say what is missing to run the provider.

    @return: C{None} when the C{node} binary is on C{PATH} and the pinned
        C{oidc-provider} is installed under L{NODE_DIR}; otherwise what is
        missing and how to install it.
    """
    if shutil.which("node") is None:
        return f"the `node` binary is not on PATH: install Node.js, then {INSTALL_HINT}"
    installed = NODE_DIR / "node_modules" / "oidc-provider" / "package.json"
    if not installed.is_file():
        return f"{installed.parent} is missing: {INSTALL_HINT}"
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["oidc-provider"]
    version = json.loads(installed.read_text()).get("version")
    if version != pinned:
        return f"oidc-provider {version} is installed but {pinned} is pinned: {INSTALL_HINT}"
    return None


def device_client(client_id: str, **extra: Any) -> dict[str, Any]:
    """
    The metadata of a public client of the device flow: no secret
    (C{token_endpoint_auth_method} C{none}), the device code grant only, no
    redirect URIs; C{extra} overrides or adds metadata.
    """
    return {
        "client_id": client_id,
        "client_name": "appproxy connector registration",
        "token_endpoint_auth_method": "none",
        "grant_types": [DEVICE_CODE_GRANT],
        "response_types": [],
        "redirect_uris": [],
        **extra,
    }


def _b64_uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _private_jwk(alg: str) -> dict[str, str]:
    jwk: dict[str, str] = {"kid": secrets.token_urlsafe(12), "use": "sig", "alg": alg}
    if alg in ("RS256", "PS256"):
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = rsa_key.private_numbers()
        public = numbers.public_numbers
        jwk.update(
            kty="RSA",
            n=_b64_uint(public.n),
            e=_b64_uint(public.e),
            d=_b64_uint(numbers.d),
            p=_b64_uint(numbers.p),
            q=_b64_uint(numbers.q),
            dp=_b64_uint(numbers.dmp1),
            dq=_b64_uint(numbers.dmq1),
            qi=_b64_uint(numbers.iqmp),
        )
    elif alg == "ES256":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        ec_numbers = ec_key.private_numbers()
        jwk.update(
            kty="EC",
            crv="P-256",
            x=_b64_uint(ec_numbers.public_numbers.x, 32),
            y=_b64_uint(ec_numbers.public_numbers.y, 32),
            d=_b64_uint(ec_numbers.private_value, 32),
        )
    elif alg == "EdDSA":
        ed_key = ed25519.Ed25519PrivateKey.generate()
        jwk.update(
            kty="OKP",
            crv="Ed25519",
            x=_b64(ed_key.public_key().public_bytes_raw()),
            d=_b64(ed_key.private_bytes_raw()),
        )
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r}: use one of {SIGNING_ALGORITHMS}")
    return jwk


def generate_jwks(algorithms: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    """
    Make a private JSON Web Key Set with one new signing key per algorithm,
    each with a new random C{kid}, in the order given (duplicates dropped).
    """
    algs = list(dict.fromkeys(algorithms))
    if not algs:
        raise ValueError("at least one signing algorithm is needed")
    return {"keys": [_private_jwk(alg) for alg in algs]}


def public_jwks(jwks: Mapping[str, Sequence[Mapping[str, str]]]) -> dict[str, list[dict[str, str]]]:
    """
    The public half of a private JSON Web Key Set, as a relying party sees it.
    """
    private = {"d", "p", "q", "dp", "dq", "qi"}
    return {"keys": [{k: v for k, v in key.items() if k not in private} for key in jwks["keys"]]}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class _NodeProcess(ProcessProtocol):
    """
    Waits for the provider's C{READY <port>} line and keeps the end of its
    standard error for error messages.

    @ivar ready: fires with the port once the provider listens, or fails if
        it exits first.
    @ivar exit_code: the exit code once the process ended (C{None} while it
        runs, or if it was killed by a signal).
    @ivar ended: whether the process has ended.
    """

    def __init__(self) -> None:
        self.ready: Deferred[int] = Deferred()
        self.exit_code: int | None = None
        self.ended = False
        self._stdout = b""
        self._stderr = bytearray()
        self._waiters: list[Deferred[None]] = []

    @property
    def stderr(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def outReceived(self, data: bytes) -> None:
        if self.ready.called:
            return
        self._stdout += data
        *lines, self._stdout = self._stdout.split(b"\n")
        for line in lines:
            if line.startswith(b"READY "):
                self._stdout = b""
                self.ready.callback(int(line.split()[1]))
                return

    def errReceived(self, data: bytes) -> None:
        self._stderr += data
        del self._stderr[:-_STDERR_LIMIT]

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.exit_code = getattr(reason.value, "exitCode", None)
        if not self.ready.called:
            self.ready.errback(
                NodeProviderError(
                    f"the provider exited (code {self.exit_code}) before it was ready:\n"
                    f"{self.stderr}"
                )
            )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_ended(self) -> Deferred[None]:
        """A new L{Deferred} that fires when the process has ended."""
        if self.ended:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter


class NodeProvider:
    """
    A running oidc-provider: made by L{start_node_provider}; stop it with
    L{stop} (register that as the test's cleanup).

    @ivar issuer: the issuer URL, C{https://HOSTNAME:PORT}.
    @ivar port: the TCP port it listens on, on 127.0.0.1 only.
    @ivar ca_pem: the PEM certificate of the CA that issued its server
        certificate: the one root a client must trust.
    @ivar jwks_private: the private JSON Web Key Set it signs with now
        (replaced by L{rotate_keys}).
    @ivar clients: the client metadata it was given, with defaults filled in.
    @ivar users: the users it was given (account id -> claims, password, otp).
    """

    def __init__(
        self,
        *,
        reactor: Any,
        state: Path,
        issuer: str,
        port: int,
        ca_pem: bytes,
        cert_path: Path,
        key_path: Path,
        clients: list[dict[str, Any]],
        users: dict[str, dict[str, Any]],
        jwks_private: dict[str, list[dict[str, str]]],
        ttl: dict[str, int],
        device_interval: int | None = None,
    ) -> None:
        self.issuer = issuer
        self.port = port
        self.ca_pem = ca_pem
        self.jwks_private = jwks_private
        self.clients = clients
        self.users = users
        self._reactor = reactor
        self._state = state
        self._cert_path = cert_path
        self._key_path = key_path
        self._ttl = ttl
        self._device_interval = device_interval
        self._process: _NodeProcess | None = None
        self._transport: IProcessTransport | None = None

    @property
    def discovery_url(self) -> str:
        """The URL of the provider's discovery document."""
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def jwks_public(self) -> dict[str, list[dict[str, str]]]:
        """The public keys, as the provider's C{jwks_uri} publishes them."""
        return public_jwks(self.jwks_private)

    @property
    def kids(self) -> list[str]:
        """The key ids of the current signing keys."""
        return [key["kid"] for key in self.jwks_private["keys"]]

    @property
    def stderr(self) -> str:
        """The end of what the provider process wrote on its standard error."""
        return self._process.stderr if self._process is not None else ""

    def _write_config(self) -> Path:
        config = {
            "port": self.port,
            "issuer": self.issuer,
            "cert": str(self._cert_path),
            "key": str(self._key_path),
            "clients": self.clients,
            "users": self.users,
            "jwks": self.jwks_private,
            "ttl": self._ttl,
        }
        if self._device_interval is not None:
            config["device_interval"] = self._device_interval
        path = self._state / "provider.json"
        _write_private(path, json.dumps(config, indent=2).encode("utf-8"))
        return path

    def _spawn(self) -> Deferred[None]:
        """Start node with the current configuration and wait for C{READY}."""
        config_path = self._write_config()
        node = shutil.which("node")
        if node is None:
            raise NodeProviderError(node_available() or "node is missing")
        process = _NodeProcess()
        self._process = process
        self._transport = self._reactor.spawnProcess(
            process,
            node,
            [node, str(_SCRIPT), str(config_path)],
            env=dict(os.environ),
            path=str(NODE_DIR),
        )
        ready = process.ready
        ready.addTimeout(_READY_TIMEOUT, self._reactor)

        def started(port: int) -> Deferred[None] | None:
            if port == self.port:
                return None
            error = NodeProviderError(f"the provider listens on {port}, not {self.port}")
            return self.stop().addBoth(lambda _: Failure(error))

        def not_started(failure: Failure) -> Deferred[None] | Failure:
            if not failure.check(TimeoutError):
                return failure
            self._signal(self._transport, "KILL")
            self._transport = None
            error = NodeProviderError(
                f"the provider was not ready within {_READY_TIMEOUT:.0f} s:\n{process.stderr}"
            )
            return process.when_ended().addCallback(lambda _: Failure(error))

        return ready.addCallbacks(started, not_started)

    @staticmethod
    def _signal(transport: IProcessTransport | None, signal: str) -> None:
        if transport is not None:
            try:
                transport.signalProcess(signal)
            except ProcessExitedAlready:
                pass

    @inlineCallbacks
    def stop(self) -> Any:
        """
        Stop the provider: SIGTERM, then SIGKILL if it has not exited within
        10 seconds. Calling it again does nothing.

        @return: a L{Deferred} that fires once the process has ended, and
            fails with L{NodeProviderError} (with the end of its standard
            error) if it did not exit cleanly, or had died before.
        """
        process, transport = self._process, self._transport
        if process is None or transport is None:
            return
        # A second call finds no transport and does nothing; the process (and
        # so its stderr) is kept.
        self._transport = None
        if not process.ended:
            self._signal(transport, "TERM")
            ended = process.when_ended()
            ended.addTimeout(_STOP_TIMEOUT, self._reactor)
            try:
                yield ended
            except TimeoutError:
                self._signal(transport, "KILL")
                yield process.when_ended()
                raise NodeProviderError(
                    f"the provider did not stop within {_STOP_TIMEOUT:.0f} s:\n{process.stderr}"
                ) from None
        if process.exit_code != 0:
            raise NodeProviderError(
                f"the provider exited with code {process.exit_code}:\n{process.stderr}"
            )

    @inlineCallbacks
    def rotate_keys(self) -> Any:
        """
        Restart the provider with new signing keys (same algorithms, new key
        ids), on the same port and with the same users and clients. Sessions
        held by the provider are lost, as after any restart.

        @return: a L{Deferred} that fires with C{None} once it is ready again.
        """
        yield self.stop()
        self.jwks_private = generate_jwks(key["alg"] for key in self.jwks_private["keys"])
        yield self._spawn()


def _prepare_clients(
    clients: Sequence[Mapping[str, Any]], signing_alg: str
) -> list[dict[str, Any]]:
    prepared = []
    for client in clients:
        if not client.get("client_id"):
            raise ValueError("every client needs a client_id")
        metadata = {**_CLIENT_DEFAULTS, "id_token_signed_response_alg": signing_alg}
        metadata.update(copy.deepcopy(dict(client)))
        prepared.append(metadata)
    if not prepared:
        raise ValueError("at least one client is needed")
    return prepared


def start_node_provider(
    *,
    reactor: Any,
    state: Path,
    users: Mapping[str, Mapping[str, Any]],
    clients: Sequence[Mapping[str, Any]],
    signing_alg: str = "RS256",
    port: int = 0,
    hostname: str = "localhost",
    ttl: Mapping[str, int] | None = None,
    device_interval: int | None = None,
) -> Deferred[NodeProvider]:
    """
    Start oidc-provider on 127.0.0.1 with HTTPS.

    @param reactor: an C{IReactorProcess} and C{IReactorTime} provider.
    @param state: an existing directory (a test's temporary directory) for the
        CA, the server certificate and key, and the configuration file.
    @param users: account id (the C{sub}) -> C{password}, optional C{otp} (the
        code the second step of a sign-in asks for when the authorization
        request has C{acr_values=mfa}), and claims: C{preferred_username},
        C{name}, C{email}, C{groups} and C{roles} (lists of strings), and any
        other claim (it comes with the C{profile} scope). The C{login} form
        field takes the account id or the C{preferred_username}.
    @param clients: oidc-provider client metadata (C{client_id},
        C{client_secret}, C{redirect_uris}, C{post_logout_redirect_uris}, ...);
        C{grant_types}, C{response_types}, C{token_endpoint_auth_method}
        (C{client_secret_basic}) and C{id_token_signed_response_alg}
        (C{signing_alg}) are filled in when absent.
    @param signing_alg: the default ID token signing algorithm, one of
        L{SIGNING_ALGORITHMS}; a key is made for it and for every other
        algorithm a client asks for.
    @param port: the port to listen on; 0 picks a free one.
    @param hostname: the issuer's host name, named by the server certificate;
        it must resolve to 127.0.0.1 for clients that use it.
    @param ttl: lifetimes in seconds by oidc-provider model name
        (C{IdToken}, C{AccessToken}, C{AuthorizationCode}, C{DeviceCode},
        C{Session}, C{Interaction}, C{Grant}).
    @param device_interval: the C{interval} (seconds) the device
        authorization endpoint tells clients to wait between polls; L{None}
        leaves it out (clients then wait 5 seconds).
    @return: a L{Deferred} that fires with the running L{NodeProvider}, or
        fails with L{NodeProviderError} (with the provider's standard error)
        if it did not start within 30 seconds.
    """
    return maybeDeferred(
        _start,
        reactor=reactor,
        state=state,
        users=users,
        clients=clients,
        signing_alg=signing_alg,
        port=port,
        hostname=hostname,
        ttl=ttl,
        device_interval=device_interval,
    )


def _start(
    *,
    reactor: Any,
    state: Path,
    users: Mapping[str, Mapping[str, Any]],
    clients: Sequence[Mapping[str, Any]],
    signing_alg: str = "RS256",
    port: int = 0,
    hostname: str = "localhost",
    ttl: Mapping[str, int] | None = None,
    device_interval: int | None = None,
) -> Deferred[NodeProvider]:
    problem = node_available()
    if problem is not None:
        raise NodeProviderError(problem)
    if signing_alg not in SIGNING_ALGORITHMS:
        raise ValueError(
            f"unsupported signing_alg {signing_alg!r}: use one of {SIGNING_ALGORITHMS}"
        )
    state = state.resolve()
    prepared = _prepare_clients(clients, signing_alg)
    user_map = {str(sub): copy.deepcopy(dict(claims)) for sub, claims in users.items()}
    for sub, claims in user_map.items():
        if not isinstance(claims.get("password"), str):
            raise ValueError(f"user {sub!r} needs a password")
    algs = [signing_alg, *(c["id_token_signed_response_alg"] for c in prepared)]
    if port == 0:
        port = _free_port()

    ca = pki.generate_ca("appproxy interop test CA")
    server = pki.issue_server_certificate(ca, [hostname])
    (state / "ca.pem").write_bytes(ca.cert_pem)
    cert_path = state / "server.pem"
    key_path = state / "server-key.pem"
    cert_path.write_bytes(server.cert_pem)
    _write_private(key_path, server.key_pem)

    provider = NodeProvider(
        reactor=reactor,
        state=state,
        issuer=f"https://{hostname}:{port}",
        port=port,
        ca_pem=ca.cert_pem,
        cert_path=cert_path,
        key_path=key_path,
        clients=prepared,
        users=user_map,
        jwks_private=generate_jwks(algs),
        ttl=dict(ttl or {}),
        device_interval=device_interval,
    )
    return provider._spawn().addCallback(lambda _: provider)
