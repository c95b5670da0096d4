"""
Connector trust: C{[connectors]} (registration, certificates, the pulled
configuration, the inventory) and C{[tunnel] connector_ca_key}, the
connector CA's key the service signs connector certificates with.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appproxy.config._files import _public_bytes, _read
from appproxy.config._messages import quote
from appproxy.config._table import Table
from appproxy.config.model import BuiltinProviderConfig, ConnectorsConfig

__all__ = ["connector_ca_key", "connectors"]

_CONNECTORS_KEYS = (
    "device_client_id",
    "admin_claim",
    "admin_value",
    "certificate_days",
    "renew_after_days",
    "inactive_after_days",
    "config_interval",
    "connections",
)


def connectors(top: Table, builtin: BuiltinProviderConfig | None) -> ConnectorsConfig:
    """
    C{[connectors]}, all defaults when absent.  Device registration's client
    id defaults to the built-in provider's C{device_client_id} when the
    built-in provider is on; otherwise, unless set, registration takes
    enrolment tokens only.
    """
    default_client = builtin.device_client_id if builtin is not None else None
    table = top.optional_table("connectors", _CONNECTORS_KEYS)
    if table is None:
        return ConnectorsConfig(device_client_id=default_client)
    return ConnectorsConfig(
        device_client_id=table.optional_string("device_client_id") or default_client,
        admin_claim=table.optional_string("admin_claim") or "roles",
        admin_value=table.optional_string("admin_value") or "Application Administrator",
        certificate_days=table.integer("certificate_days", 365, 1, 3650),
        renew_after_days=table.integer("renew_after_days", 180, 1, 3650),
        inactive_after_days=table.integer("inactive_after_days", 10, 1, 3650),
        config_interval=float(table.integer("config_interval", 120, 10, 86400)),
        connections=(table.integer("connections", 4, 1, 64) if table.has("connections") else None),
    )


def connector_ca_key(
    tunnel: Table, ca_pem: bytes, ca_path: Path
) -> tuple[Path | None, bytes | None]:
    """
    C{[tunnel] connector_ca_key}, if set: the connector CA's private key,
    which must be unencrypted and match the (first) certificate of
    C{connector_ca}.
    """
    if not tunnel.has("connector_ca_key"):
        return None, None
    path = tunnel.path("connector_ca_key")
    key_pem = _read(tunnel, "connector_ca_key", path, "key")
    shown = quote(str(path))
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        tunnel.fail("connector_ca_key", f"{shown} is encrypted; appproxy needs an unencrypted key")
    except ValueError:
        tunnel.fail("connector_ca_key", f"{shown} does not contain a PEM private key")
    ca = x509.load_pem_x509_certificates(ca_pem)[0]
    if _public_bytes(key.public_key()) != _public_bytes(ca.public_key()):
        tunnel.fail(
            "connector_ca_key",
            f"{shown} is not the key of the connector CA {quote(str(ca_path))}",
        )
    return path, key_pem
