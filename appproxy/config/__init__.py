"""
Configuration: TOML files -> frozen attrs classes, every mistake a one-line
L{ConfigError} (file, key, problem).

The public names are here: L{load_service_config} and
L{load_connector_config} read a file, the C{parse_*} functions check an
already parsed one, and the classes they return are in
L{appproxy.config.model}.  Inside: C{service} and C{connector} (one per
file), the sections of C{service.toml} (C{_apps}, C{_signin},
C{_policies}, C{_connectors}), the checked table C{_table}, the value checkers C{_values}
and C{_endpoint}, the file readers C{_files}, and C{_messages} (how values
are shown in an error).

Pure: may import appproxy.http and appproxy.access (policy model), never
Twisted.
"""

from appproxy.config.connector import load_connector_config, parse_connector_config
from appproxy.config.model import (
    BACKEND_TIMEOUTS,
    AppConfig,
    BuiltinProviderConfig,
    CertificateFiles,
    ConfigError,
    ConnectorConfig,
    ConnectorsConfig,
    OidcConfig,
    RiskConfig,
    ServiceConfig,
)
from appproxy.config.service import load_service_config, parse_service_config

__all__ = [
    "BACKEND_TIMEOUTS",
    "AppConfig",
    "BuiltinProviderConfig",
    "CertificateFiles",
    "ConfigError",
    "ConnectorConfig",
    "ConnectorsConfig",
    "OidcConfig",
    "RiskConfig",
    "ServiceConfig",
    "load_connector_config",
    "load_service_config",
    "parse_connector_config",
    "parse_service_config",
]
