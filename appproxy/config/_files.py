"""
Files a configuration reads: the TOML file itself, and the files it names
(certificates and their keys, CA certificates, a client secret).  A message
about a file names it, never its content.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from appproxy.config._messages import quote, strerror
from appproxy.config._table import Table
from appproxy.config.model import CertificateFiles, ConfigError


def read_toml(path: str | Path) -> dict[str, Any]:
    """
    The parsed TOML document at C{path}.

    @raise ConfigError: (naming the absolute path) if it is unreadable or not
        TOML.
    """
    absolute = Path(path).absolute()
    file = str(absolute)
    try:
        with absolute.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(file, "", f"cannot read: {strerror(e)}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            file, "", f"invalid TOML: the file is not UTF-8 text (byte {e.start})"
        ) from None


def _read(table: Table, name: str, path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        table.fail(name, f"cannot read {what} file {quote(str(path))}: {strerror(e)}")


def _certificates(table: Table, name: str, path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certificates = []
    if not certificates:
        table.fail(name, f"{quote(str(path))} does not contain a PEM certificate")
    return certificates


def ca_file(table: Table, name: str) -> tuple[Path, bytes]:
    """A file of one or more PEM CA certificates: its path and content."""
    path = table.path(name)
    pem = _read(table, name, path, "CA certificate")
    _certificates(table, name, path, pem)
    return path, pem


def optional_ca_file(table: Table, name: str) -> tuple[Path | None, bytes | None]:
    """L{ca_file}, or C{(None, None)} if the key is absent."""
    return ca_file(table, name) if table.has(name) else (None, None)


def certificate_files(table: Table, cert_name: str, key_name: str) -> CertificateFiles:
    """A certificate chain and the private key of its leaf certificate."""
    cert_path = table.path(cert_name)
    key_path = table.path(key_name)
    cert_pem = _read(table, cert_name, cert_path, "certificate")
    leaf = _certificates(table, cert_name, cert_path, cert_pem)[0]
    key_pem = _read(table, key_name, key_path, "key")
    shown = quote(str(key_path))
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        table.fail(key_name, f"{shown} is encrypted; appproxy needs an unencrypted key")
    except (ValueError, UnsupportedAlgorithm):
        table.fail(key_name, f"{shown} does not contain a PEM private key")
    try:
        matches = _public_bytes(private_key.public_key()) == _public_bytes(leaf.public_key())
    except (ValueError, UnsupportedAlgorithm):
        matches = False
    if not matches:
        table.fail(
            key_name,
            f"{shown} does not match the certificate in {quote(str(cert_path))}",
        )
    return CertificateFiles(cert=cert_path, key=key_path, cert_pem=cert_pem, key_pem=key_pem)


def _public_bytes(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def client_secret_file(table: Table, name: str) -> tuple[Path, str]:
    """A client secret's file: its path, and its text without surrounding whitespace."""
    path = table.path(name)
    content = _read(table, name, path, "client secret")
    try:
        secret = content.decode("utf-8").strip()
    except UnicodeDecodeError:
        table.fail(name, f"{quote(str(path))} is not UTF-8 text")
    if not secret:
        table.fail(name, f"{quote(str(path))} is empty")
    return path, secret
