"""
The connector's file, C{connector.toml}: one C{[connector]} table saying
where the service is, how to trust it and how to be known to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from appproxy.config._files import ca_file, certificate_files, optional_ca_file, read_toml
from appproxy.config._table import Table, document
from appproxy.config._values import address, dns_name
from appproxy.config.model import LOG_FORMATS, SERVICE_TRUSTS, ConnectorConfig

__all__ = ["load_connector_config", "parse_connector_config"]

_CONNECTOR_KEYS = (
    "service_host",
    "service_port",
    "service_address",
    "connections",
    "capacity",
    "websocket_capacity",
    "ca",
    "service_trust",
    "cert",
    "key",
    "ping_interval",
    "log_format",
)


def load_connector_config(path: str | Path) -> ConnectorConfig:
    """
    Read and check the connector's configuration file.

    @raise ConfigError: if the file is unreadable or invalid.
    """
    return parse_connector_config(read_toml(path), Path(path))


def parse_connector_config(data: Mapping[str, object], path: Path) -> ConnectorConfig:
    """
    L{load_connector_config} for a document already parsed from the file at
    C{path}.
    """
    top = document(data, path, ("connector",))
    connector = top.table(
        "connector", _CONNECTOR_KEYS, "a [connector] table with service_host, ca, cert and key"
    )
    service_host = dns_name(connector, "service_host")
    service_trust = connector.choice("service_trust", SERVICE_TRUSTS, "ca")
    # Keys are checked in this order: the first mistake found is the one reported.
    return ConnectorConfig(
        path=top.ctx.path,
        service_host=service_host,
        service_port=connector.integer("service_port", 8444, 1, 65535),
        service_address=address(connector, "service_address", service_host),
        connections=connector.integer("connections", 4, 1, 64),
        capacity=connector.integer("capacity", 100, 1, 1000),
        websocket_capacity=connector.integer("websocket_capacity", 250, 0, 10_000),
        service_trust=service_trust,
        # With the system trust store, the connector CA is kept for reference only.
        ca=(ca := _ca(connector, service_trust))[0],
        ca_pem=ca[1],
        cert=certificate_files(connector, "cert", "key"),
        ping_interval=connector.number("ping_interval", 15.0, 3600.0),
        log_format=connector.choice("log_format", LOG_FORMATS, "text"),
    )


def _ca(connector: Table, service_trust: str) -> tuple[Path | None, bytes | None]:
    if service_trust == "system":
        return optional_ca_file(connector, "ca")
    return ca_file(connector, "ca")
