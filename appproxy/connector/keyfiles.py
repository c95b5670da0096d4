"""
The connector's key and certificate files, written so that a crash never
leaves a key that does not match its certificate.

A private key is created 0600 (never readable by others, not even for a
moment), written to a temporary name, flushed to disk and renamed into
place.  A renewal replaces two files, which no single rename can do:

  1. the new key goes to C{KEY.new} and the new certificate to C{CERT.new}
     (each flushed, then the directory);
  2. C{CERT.new} is renamed to C{CERT};
  3. C{KEY.new} is renamed to C{KEY}.

A crash between 2 and 3 leaves a certificate that matches C{KEY.new}, not
C{KEY}; before 2, the old pair is intact but the service has already
retired it.  So at start (L{recover_renewal}) the connector finishes an
interrupted renewal: both C{.new} files there and matching each other ->
steps 2 and 3; only C{KEY.new}, matching C{CERT} -> step 3; anything else
left over is removed.  Blocking (the daemon runs it in a thread, or before
the reactor starts).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["install_renewal", "key_matches", "recover_renewal", "write_file"]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write C{path} afresh (any old one removed first), C{mode} from creation, flushed."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace C{path} atomically (a temporary file, flushed, then renamed)."""
    temporary = path.with_name(path.name + ".tmp")
    _write_new(temporary, data, mode)
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _new(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the key belongs to the (first) certificate; False if either is unreadable."""
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)
    except (ValueError, TypeError, IndexError):
        return False


def install_renewal(cert_path: Path, key_path: Path, cert_pem: bytes, key_pem: bytes) -> None:
    """Put a renewed certificate and its key in place (steps 1 to 3 above)."""
    if not key_matches(cert_pem, key_pem):
        raise ValueError("the renewed certificate does not match the new key")
    _write_new(_new(key_path), key_pem, 0o600)
    _write_new(_new(cert_path), cert_pem, 0o644)
    _fsync_directory(key_path.parent)
    if cert_path.parent != key_path.parent:
        _fsync_directory(cert_path.parent)
    os.replace(_new(cert_path), cert_path)
    _fsync_directory(cert_path.parent)
    os.replace(_new(key_path), key_path)
    _fsync_directory(key_path.parent)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def recover_renewal(cert_path: Path, key_path: Path) -> str | None:
    """
    Finish (or clean up after) a renewal a crash interrupted; what was done,
    for the log, or L{None} if there was nothing to do.
    """
    new_cert, new_key = _read(_new(cert_path)), _read(_new(key_path))
    if new_cert is None and new_key is None:
        return None
    if new_cert is not None and new_key is not None and key_matches(new_cert, new_key):
        os.replace(_new(cert_path), cert_path)
        _fsync_directory(cert_path.parent)
        os.replace(_new(key_path), key_path)
        _fsync_directory(key_path.parent)
        return f"finished an interrupted renewal: {cert_path} and {key_path} replaced"
    current = _read(cert_path)
    if new_cert is None and new_key is not None and current and key_matches(current, new_key):
        os.replace(_new(key_path), key_path)
        _fsync_directory(key_path.parent)
        return f"finished an interrupted renewal: {key_path} replaced"
    _new(cert_path).unlink(missing_ok=True)
    _new(key_path).unlink(missing_ok=True)
    return f"removed the unusable files of an interrupted renewal next to {cert_path}"
