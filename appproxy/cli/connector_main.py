"""
The C{appproxy-connector} command, run on a connector's host (the daemon
itself is C{twistd appproxy-connector}):

    appproxy-connector register --service https://HOST[:PORT] --state-dir DIR
        (--ca-fingerprint sha256:HEX | --system-trust) [--group NAME]
        [--token-file FILE] [--address IP] [--idp-ca FILE] [--name HOSTNAME]
        [--force]

Registration, step by step:

  1. C{GET /v1/ca} from the service's tunnel listener without verifying it;
     the CA's SHA-256 fingerprint must be the one given (else nothing is
     sent: the connection may be intercepted).  From then on that CA is the
     only trust root, and the service's certificate must name HOST.
     With C{--system-trust} (a tunnel listener with a publicly trusted
     certificate), every call, this one included, is verified against the
     system trust store instead, HOST checked, and C{connector.toml} says
     C{service_trust = "system"} (the connector CA is written for reference).
  2. The token: C{--token-file} (a one-time enrolment token, or an
     administrator's ID token), or the device flow (RFC 8628) against the
     service's OpenID provider, which C{GET /v1/registration} names.
  3. A new key, made here (it never leaves this host), and a CSR, sent with
     the token (C{POST /v1/register}); the certificate the service signed
     comes back.  DIR gets C{connector.key} (0600), C{connector.pem},
     C{ca.pem} and C{connector.toml}.

Errors are one line on stderr and exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import datetime
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import attrs
from cryptography import x509

from appproxy import __version__
from appproxy.config import ConfigError, load_connector_config
from appproxy.connector.device import DeviceFlowError, device_id_token
from appproxy.connector.enrolment import (
    ApiFailure,
    EnrolmentClient,
    ServiceAddress,
    UnreachableService,
    failure_reason,
    fetch_ca,
    verified_tls,
)
from appproxy.connector.keyfiles import key_matches, write_file
from appproxy.daemon import pki
from appproxy.daemon.csr import make_csr, new_connector_key
from appproxy.tunnel.enrolment import (
    REGISTER_PATH,
    REGISTRATION_PATH,
    CertificateAnswer,
    RegisterRequest,
    RegistrationInfo,
)

__all__ = ["main"]

_PROG = "appproxy-connector"
DEFAULT_PORT = 8444
#: The files registration writes into the state directory.
CONFIG_FILE, CERT_FILE, KEY_FILE, CA_FILE = (
    "connector.toml",
    "connector.pem",
    "connector.key",
    "ca.pem",
)


class RegistrationError(Exception):
    """Registration cannot go on; the text says why and what to do."""


@attrs.frozen
class Registration:
    """What C{register} needs, checked."""

    service: ServiceAddress
    state_dir: Path
    fingerprint: str | None
    """The connector CA's fingerprint; L{None}: the system trust store verifies the service."""
    group: str | None
    token_file: Path | None
    idp_ca: Path | None
    host_name: str
    force: bool


def parse_service(text: str) -> tuple[str, int]:
    """C{https://HOST[:PORT]} -> (host, port); the port defaults to 8444."""
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"--service {text!r} must be https://HOST or https://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"--service {text!r} must be only https://HOST[:PORT], no path")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"--service {text!r} has an invalid port") from None
    return parts.hostname, port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="The appproxy connector's commands (the daemon: twistd)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register = commands.add_parser(
        "register",
        help="register this host as a connector with the service",
        description="Register this host as a connector: the key is made here and never"
        " leaves it; the service signs its certificate.",
    )
    register.add_argument("--service", required=True, metavar="https://HOST[:PORT]")
    register.add_argument("--state-dir", required=True, type=Path, metavar="DIR")
    trust = register.add_mutually_exclusive_group(required=True)
    trust.add_argument(
        "--ca-fingerprint",
        metavar="sha256:HEX",
        help="the connector CA's SHA-256 fingerprint, as the service's administrator gave it",
    )
    trust.add_argument(
        "--system-trust",
        action="store_true",
        help="the service's tunnel listener has a publicly trusted certificate: verify it"
        " with the system trust store (now and from then on) instead of a pinned CA",
    )
    register.add_argument("--group", help="the connector group (default: the token's, or default)")
    register.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="an enrolment token (appproxy connectors token create) or an administrator's"
        " ID token; without it, an administrator signs in with the device flow",
    )
    register.add_argument("--address", help="dial this address instead of resolving HOST")
    register.add_argument(
        "--idp-ca", type=Path, metavar="FILE", help="extra CA certificates for the OpenID provider"
    )
    register.add_argument("--name", help="this host's name in the inventory (default: hostname)")
    register.add_argument(
        "--force", action="store_true", help="replace an existing registration in DIR"
    )
    return parser


def _registration(args: argparse.Namespace) -> Registration:
    host, port = parse_service(args.service)
    return Registration(
        service=ServiceAddress(host, port, args.address),
        state_dir=args.state_dir,
        fingerprint=None if args.system_trust else pki.parse_fingerprint(args.ca_fingerprint),
        group=args.group,
        token_file=args.token_file,
        idp_ca=args.idp_ca,
        host_name=args.name or socket.gethostname(),
        force=args.force,
    )


def _check_state_dir(reg: Registration) -> None:
    existing = [
        name for name in (CONFIG_FILE, CERT_FILE, KEY_FILE) if (reg.state_dir / name).exists()
    ]
    if existing and not reg.force:
        raise RegistrationError(
            f"{reg.state_dir} holds a registration already ({', '.join(existing)}):"
            " add --force to replace it"
        )
    if reg.state_dir.exists() and not reg.state_dir.is_dir():
        raise RegistrationError(f"{reg.state_dir} is not a directory")


def _read_token(path: Path, err: TextIO) -> str:
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise RegistrationError(f"cannot read the token file {path}: {e}") from None
    if mode & stat.S_IROTH:
        err.write(f"{_PROG}: warning: {path} is readable by every user; keep tokens private\n")
    if not token:
        raise RegistrationError(f"the token file {path} is empty")
    return token


async def register(reactor: Any, reg: Registration, out: TextIO, err: TextIO) -> int:
    """Register (see the module); the exit status."""
    _check_state_dir(reg)
    # With the system trust store, the first call is verified as all others.
    system = verified_tls(reg.service.host, None) if reg.fingerprint is None else None
    ca = await fetch_ca(reactor, reg.service, system)
    ca_pem = ca.ca.encode("ascii")
    try:
        found = pki.ca_fingerprint(ca_pem)
    except ValueError:
        raise RegistrationError(f"{reg.service} sent no readable CA certificate") from None
    if reg.fingerprint is not None and found != reg.fingerprint:
        raise RegistrationError(
            f"the connector CA of {reg.service} has the fingerprint {found}, not"
            f" {reg.fingerprint}: the connection may be intercepted, or the fingerprint"
            " is mistyped (nothing was sent)"
        )
    tls = system or verified_tls(reg.service.host, ca_pem)
    client = EnrolmentClient(reactor, reg.service, tls)
    if reg.token_file is not None:
        token = _read_token(reg.token_file, err)
    else:
        info: RegistrationInfo = await client.get(REGISTRATION_PATH, RegistrationInfo)
        idp_ca = reg.idp_ca.read_bytes() if reg.idp_ca is not None else None

        def show(line: str) -> None:
            out.write(line + "\n")
            out.flush()

        token = await device_id_token(reactor, info, show, idp_ca_pem=idp_ca)
    key_pem = new_connector_key()
    request = RegisterRequest(
        token=token,
        csr=make_csr(key_pem).decode("ascii"),
        group=reg.group,
        host_name=reg.host_name,
        version=__version__,
    )
    answer: CertificateAnswer = await client.post(REGISTER_PATH, request, CertificateAnswer)
    cert_pem = answer.certificate.encode("ascii")
    _check_certificate(cert_pem, key_pem, ca_pem)
    config = _write(reg, ca_pem, cert_pem, key_pem, answer)
    when = datetime.datetime.fromtimestamp(answer.not_after, datetime.UTC)
    out.write(
        f"Registered connector {answer.connector_id} in group {answer.group}"
        f" (certificate valid until {when:%Y-%m-%d %H:%M} UTC).\n"
        f"Its files are in {reg.state_dir} (the key {KEY_FILE} is readable by its owner only).\n"
        f"Next, start it: twistd appproxy-connector --config {config}\n"
    )
    return 0


def _check_certificate(cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> None:
    if not key_matches(cert_pem, key_pem):
        raise RegistrationError("the service's certificate is not for the key sent")
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError) as e:
        raise RegistrationError(f"the service's certificate is not signed by its CA: {e}") from e


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write(
    reg: Registration, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, answer: CertificateAnswer
) -> Path:
    directory = reg.state_dir
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    service = reg.service
    lines = [
        f"# Written by appproxy-connector register: connector {answer.connector_id},",
        f"# group {answer.group}. The service renews the certificate; keep the key private.",
        "[connector]",
        f"service_host = {_toml_string(service.host)}",
        f"service_port = {service.port}",
    ]
    if service.address:
        lines.append(f"service_address = {_toml_string(service.address)}")
    if reg.fingerprint is None:
        lines += [
            "# The service's certificate is verified with the system trust store;",
            "# the connector CA is kept for reference.",
            'service_trust = "system"',
        ]
    lines += [
        f'ca = "{CA_FILE}"',
        f'cert = "{CERT_FILE}"',
        f'key = "{KEY_FILE}"',
    ]
    write_file(directory / KEY_FILE, key_pem, 0o600)
    write_file(directory / CERT_FILE, cert_pem)
    write_file(directory / CA_FILE, ca_pem)
    config = directory / CONFIG_FILE
    write_file(config, ("\n".join(lines) + "\n").encode())
    load_connector_config(config)  # what the daemon will read must load
    return config


def _explained(error: Exception, reg: Registration) -> str:
    """The error's text; a TLS failure in the operator's terms (as the daemon says it)."""
    if not isinstance(error, UnreachableService) or error.cause is None:
        return str(error)
    hint = (
        "with --system-trust, the system trust store must hold its issuer"
        if reg.fingerprint is None
        else "if it is publicly trusted, register with --system-trust"
    )
    reason = failure_reason(error, reg.service.host, hint)
    return str(error).removesuffix(error.detail) + reason


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    try:
        reg = _registration(args)
    except ValueError as e:
        err.write(f"{_PROG}: error: {e}\n")
        return 2
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    status: list[int] = []

    async def run() -> None:
        try:
            status.append(await register(reactor, reg, out, err))
        except (
            RegistrationError,
            ApiFailure,
            UnreachableService,
            DeviceFlowError,
            ConfigError,
            OSError,
            ValueError,
        ) as e:
            prefix = "registration refused: " if isinstance(e, ApiFailure) else ""
            err.write(f"{_PROG}: error: {prefix}{_explained(e, reg)}\n")
            status.append(1)
        except Exception as e:  # a bug: still one line
            err.write(f"{_PROG}: error: unexpected {e!r}\n")
            status.append(1)

    def stop(_: object) -> None:
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(run()).addBoth(stop))
    reactor.run()
    return status[0] if status else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
