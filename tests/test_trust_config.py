"""
C{[connectors]} and C{[tunnel] connector_ca_key} in C{service.toml}: the
defaults, the built-in provider's device client as the default, the ranges,
and a CA key that is not the connector CA's.
"""

from __future__ import annotations

from typing import Any

from appproxy.config import ConnectorsConfig
from tests.test_config import ConfigTestCase


class ConnectorsConfigTests(ConfigTestCase):
    def test_defaults(self) -> None:
        config = self.parse_service(self.service_data())
        self.assertEqual(config.connectors, ConnectorsConfig())
        self.assertIsNone(config.connectors.device_client_id)
        self.assertEqual(config.connectors.admin_claim, "roles")
        self.assertEqual(config.connectors.admin_value, "Application Administrator")
        self.assertEqual(
            (config.connectors.certificate_days, config.connectors.renew_after_days), (365, 180)
        )
        self.assertEqual(config.connectors.inactive_after_days, 10)
        self.assertEqual(config.connectors.config_interval, 120.0)
        self.assertIsNone(config.connectors.connections)
        self.assertIsNone(config.connector_ca_key)
        self.assertIsNone(config.connector_ca_key_pem)

    def test_values(self) -> None:
        data = self.service_data()
        data["tunnel"]["connector_ca_key"] = "ca.key"
        data["connectors"] = {
            "device_client_id": "connectors",
            "admin_claim": "groups",
            "admin_value": "ops",
            "certificate_days": 30,
            "renew_after_days": 20,
            "inactive_after_days": 2,
            "config_interval": 60,
            "connections": 8,
        }
        config = self.parse_service(data)
        self.assertEqual(
            config.connectors,
            ConnectorsConfig(
                device_client_id="connectors",
                admin_claim="groups",
                admin_value="ops",
                certificate_days=30,
                renew_after_days=20,
                inactive_after_days=2,
                config_interval=60.0,
                connections=8,
            ),
        )
        self.assertEqual(config.connector_ca_key, self.dir / "ca.key")
        self.assertEqual(config.connector_ca_key_pem, (self.dir / "ca.key").read_bytes())
        self.assertNotIn("PRIVATE", repr(config))

    def test_builtin_device_client(self) -> None:
        data = self.service_data()
        (self.dir / "users.json").write_text("{}")
        (self.dir / "secret").write_text("a-client-secret-of-some-length\n")
        data["oidc"] = {
            "issuer": "https://login.example.com",
            "client_id": "appproxy",
            "client_secret_file": "secret",
            "callback_url": "https://login.example.com/.appproxy/callback",
        }
        data["builtin_provider"] = {"issuer": "https://login.example.com"}
        config = self.parse_service(data)
        self.assertEqual(config.connectors.device_client_id, "appproxy-connector")

    def test_errors(self) -> None:
        bad: list[tuple[str, Any, str]] = [
            ("certificate_days", 0, "must be from 1 to 3650, not 0"),
            ("certificate_days", 3651, "must be from 1 to 3650, not 3651"),
            ("config_interval", 5, "must be from 10 to 86400, not 5"),
            ("connections", 65, "must be from 1 to 64, not 65"),
            ("admin_claim", "", "must not be empty"),
            ("device_client_id", 3, "must be a string, not integer"),
        ]
        for key, value, problem in bad:
            data = self.service_data()
            data["connectors"] = {key: value}
            error = self.error(data, key)
            self.assertEqual((error.key, error.problem), (f"connectors.{key}", problem))
        data = self.service_data()
        data["connectors"] = {"renew_after": 3}
        self.assertIn("unknown key", self.error(data).problem)

    def test_ca_key_must_match(self) -> None:
        data = self.service_data()
        data["tunnel"]["connector_ca_key"] = "connector.key"
        error = self.error(data)
        self.assertEqual(error.key, "tunnel.connector_ca_key")
        self.assertIn("is not the key of the connector CA", error.problem)
        data["tunnel"]["connector_ca_key"] = "ca.pem"
        self.assertIn("does not contain a PEM private key", self.error(data).problem)
