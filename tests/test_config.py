"""
Tests for L{appproxy.config}.
"""

from __future__ import annotations

import copy
import datetime
import os
import tomllib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.config import (
    BACKEND_TIMEOUTS,
    AppConfig,
    CertificateFiles,
    ConfigError,
    ConnectorConfig,
    ServiceConfig,
    load_connector_config,
    load_service_config,
    parse_connector_config,
    parse_service_config,
)

APP_KEYS = {
    "name",
    "external_url",
    "internal_url",
    "connector_group",
    "pre_authentication",
    "translate_urls_in_headers",
    "backend_timeout",
    "verify_backend_tls",
    "backend_ca",
}


def write_certificate(directory: Path, stem: str, name: str, *, ca: bool = False) -> None:
    """
    Write a self-signed EC P-256 certificate for C{name} to C{stem}.pem and its
    key to C{stem}.key under C{directory}.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / stem
    path.parent.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


SERVICE_TOML = """\
[service]
listen = "tcp:443"
state_dir = "state"
queue_timeout = 12.5
log_format = "json"

[[service.certificates]]
cert = "tls/wildcard.pem"
key = "tls/wildcard.key"

[[service.certificates]]
cert = "tls/other.pem"
key = "tls/other.key"

[tunnel]
listen = "tcp:8444:interface=0.0.0.0"
cert = "tls/tunnel.pem"
key = "tls/tunnel.key"
connector_ca = "ca.pem"

[[apps]]
name = "wiki"
external_url = "HTTPS://Wiki.Example.COM:443"
internal_url = "http://10.1.2.3:8080/wiki/"
connector_group = "default"
pre_authentication = "passthrough"
translate_urls_in_headers = false
backend_timeout = "long"
verify_backend_tls = false
backend_ca = "tls/intranet-ca.pem"

[[apps]]
name = "files_2"
external_url = "https://apps.example.com:8443/files/"
internal_url = "https://[FE80::1]:443/"
connector_group = "site-b"
pre_authentication = "passthrough"
"""

CONNECTOR_TOML = """\
[connector]
service_host = "Tunnel.Example.com"
service_port = 9444
service_address = "203.0.113.7"
connections = 8
capacity = 50
ca = "ca.pem"
cert = "connector.pem"
key = "connector.key"
ping_interval = 30
log_format = "json"
"""


class ConfigTestCase(SynchronousTestCase):
    """
    Writes certificates and a CA to a temporary directory, and offers valid
    configurations as dicts to break.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        write_certificate(self.dir, "tls/wildcard", "*.example.com")
        write_certificate(self.dir, "tls/other", "apps.example.com")
        write_certificate(self.dir, "tls/tunnel", "tunnel.example.com")
        write_certificate(self.dir, "ca", "appproxy CA", ca=True)
        write_certificate(self.dir, "tls/intranet-ca", "intranet CA", ca=True)
        write_certificate(self.dir, "connector", "connector-1")
        self.service_path = self.dir / "service.toml"
        self.connector_path = self.dir / "connector.toml"

    def service_data(self) -> dict[str, Any]:
        return {
            "service": {
                "listen": "tcp:443",
                "state_dir": "state",
                "certificates": [{"cert": "tls/wildcard.pem", "key": "tls/wildcard.key"}],
            },
            "tunnel": {
                "listen": "tcp:8444",
                "cert": "tls/tunnel.pem",
                "key": "tls/tunnel.key",
                "connector_ca": "ca.pem",
            },
            "apps": [self.app_data()],
        }

    def app_data(self, **changes: Any) -> dict[str, Any]:
        app = {
            "name": "wiki",
            "external_url": "https://wiki.example.com/",
            "internal_url": "http://10.1.2.3:8080/wiki/",
            "connector_group": "default",
            "pre_authentication": "passthrough",
        }
        app.update(changes)
        return app

    def connector_data(self) -> dict[str, Any]:
        return {
            "connector": {
                "service_host": "tunnel.example.com",
                "ca": "ca.pem",
                "cert": "connector.pem",
                "key": "connector.key",
            }
        }

    def parse_service(self, data: dict[str, Any]) -> ServiceConfig:
        return parse_service_config(data, self.service_path)

    def service_error(self, data: dict[str, Any]) -> ConfigError:
        error = self.assertRaises(ConfigError, self.parse_service, data)
        self.assertEqual(error.file, str(self.service_path))
        self.assertTrue(str(error).isprintable(), str(error))
        return error

    def connector_error(self, data: dict[str, Any]) -> ConfigError:
        error = self.assertRaises(ConfigError, parse_connector_config, data, self.connector_path)
        self.assertEqual(error.file, str(self.connector_path))
        self.assertTrue(str(error).isprintable(), str(error))
        return error

    def assertServiceError(self, data: dict[str, Any], key: str, problem: str) -> None:
        error = self.service_error(data)
        self.assertEqual((error.key, error.problem), (key, problem))

    def assertConnectorError(self, data: dict[str, Any], key: str, problem: str) -> None:
        error = self.connector_error(data)
        self.assertEqual((error.key, error.problem), (key, problem))

    def with_app(self, **changes: Any) -> dict[str, Any]:
        data = self.service_data()
        data["apps"] = [self.app_data(**changes)]
        return data

    def without_app_key(self, key: str) -> dict[str, Any]:
        data = self.service_data()
        del data["apps"][0][key]
        return data

    def with_service(self, **changes: Any) -> dict[str, Any]:
        data = self.service_data()
        data["service"].update(changes)
        return data

    def with_tunnel(self, **changes: Any) -> dict[str, Any]:
        data = self.service_data()
        data["tunnel"].update(changes)
        return data

    def with_connector(self, **changes: Any) -> dict[str, Any]:
        data = self.connector_data()
        data["connector"].update(changes)
        return data


class ValidServiceConfigTests(ConfigTestCase):
    def test_full(self) -> None:
        """
        Every key of a full file is read; relative paths are resolved against
        the file's directory; URLs are normalised.
        """
        self.service_path.write_text(SERVICE_TOML)
        config = load_service_config(str(self.service_path))
        d = self.dir
        self.assertEqual(config.path, self.service_path)
        self.assertEqual(config.listen, "tcp:443")
        self.assertEqual(config.state_dir, d / "state")
        self.assertEqual(config.queue_timeout, 12.5)
        self.assertEqual(config.log_format, "json")
        self.assertEqual(
            config.certificates,
            (
                CertificateFiles(
                    cert=d / "tls/wildcard.pem",
                    key=d / "tls/wildcard.key",
                    cert_pem=(d / "tls/wildcard.pem").read_bytes(),
                    key_pem=(d / "tls/wildcard.key").read_bytes(),
                ),
                CertificateFiles(
                    cert=d / "tls/other.pem",
                    key=d / "tls/other.key",
                    cert_pem=(d / "tls/other.pem").read_bytes(),
                    key_pem=(d / "tls/other.key").read_bytes(),
                ),
            ),
        )
        self.assertEqual(config.tunnel_listen, "tcp:8444:interface=0.0.0.0")
        self.assertEqual(config.tunnel_cert.cert, d / "tls/tunnel.pem")
        self.assertEqual(config.tunnel_cert.key_pem, (d / "tls/tunnel.key").read_bytes())
        self.assertEqual(config.connector_ca, d / "ca.pem")
        self.assertEqual(config.connector_ca_pem, (d / "ca.pem").read_bytes())
        wiki, files = config.apps
        self.assertEqual(
            wiki,
            AppConfig(
                name="wiki",
                external_url="https://wiki.example.com/",
                internal_url="http://10.1.2.3:8080/wiki/",
                connector_group="default",
                pre_authentication="passthrough",
                translate_urls_in_headers=False,
                backend_timeout=180.0,
                verify_backend_tls=False,
                backend_ca=d / "tls/intranet-ca.pem",
                backend_ca_pem=(d / "tls/intranet-ca.pem").read_bytes(),
            ),
        )
        self.assertEqual(
            files,
            AppConfig(
                name="files_2",
                external_url="https://apps.example.com:8443/files/",
                internal_url="https://[fe80::1]/",
                connector_group="site-b",
                pre_authentication="passthrough",
                translate_urls_in_headers=True,
                backend_timeout=85.0,
                verify_backend_tls=True,
                backend_ca=None,
                backend_ca_pem=None,
            ),
        )

    def test_defaults(self) -> None:
        """
        Optional keys take their documented defaults.
        """
        config = self.parse_service(self.service_data())
        self.assertEqual(config.queue_timeout, 10.0)
        self.assertEqual(config.log_format, "text")
        (app,) = config.apps
        self.assertIs(app.translate_urls_in_headers, True)
        self.assertEqual(app.backend_timeout, 85.0)
        self.assertIs(app.verify_backend_tls, True)
        self.assertIsNone(app.backend_ca)
        self.assertIsNone(app.backend_ca_pem)
        self.assertEqual(BACKEND_TIMEOUTS, {"default": 85.0, "long": 180.0})

    def test_relative_config_path(self) -> None:
        """
        The config path is made absolute; so are the paths in it.
        """
        relative = Path(os.path.relpath(self.service_path))
        self.assertFalse(relative.is_absolute())
        config = parse_service_config(self.service_data(), relative)
        self.assertEqual(config.path, self.service_path)
        self.assertEqual(config.state_dir, self.dir / "state")
        self.assertEqual(config.tunnel_cert.cert, self.dir / "tls/tunnel.pem")

    def test_absolute_paths_kept(self) -> None:
        data = self.with_service(state_dir="/var/lib/appproxy")
        self.assertEqual(self.parse_service(data).state_dir, Path("/var/lib/appproxy"))

    def test_integer_number(self) -> None:
        """
        An integer is accepted where a number of seconds is expected.
        """
        timeout = self.parse_service(self.with_service(queue_timeout=3600)).queue_timeout
        self.assertEqual(timeout, 3600.0)
        self.assertIsInstance(timeout, float)

    def test_endpoints(self) -> None:
        """
        The endpoint types that appproxy can wrap in TLS are accepted.
        """
        for endpoint in [
            "tcp:443",
            "tcp:0",
            "tcp:port=8443:interface=127.0.0.1",
            "tcp:8443:interface=127.0.0.1:backlog=10",
            "tcp6:443:interface=\\:\\:1",
            "unix:/run/appproxy.sock",
            "unix:address=/run/appproxy.sock:mode=660:lockfile=0",
            "systemd:domain=INET:index=0",
            "systemd:domain=INET6:name=https",
        ]:
            config = self.parse_service(self.with_service(listen=endpoint))
            self.assertEqual(config.listen, endpoint)

    def test_app_properties(self) -> None:
        app = self.parse_service(
            self.with_app(
                external_url="https://Apps.Example.com:8443/wiki/",
                internal_url="http://[::1]:8080/x/",
            )
        ).apps[0]
        self.assertEqual(app.external_host, "apps.example.com:8443")
        self.assertEqual(app.external_path, "/wiki/")
        self.assertEqual(app.internal_scheme, "http")
        self.assertEqual(app.internal_netloc, "[::1]:8080")
        self.assertEqual(app.internal_host, "::1")
        self.assertEqual(app.internal_port, 8080)
        self.assertEqual(app.internal_path, "/x/")

    def test_app_default_ports(self) -> None:
        app = self.parse_service(
            self.with_app(
                external_url="https://wiki.example.com:443/",
                internal_url="HTTPS://Intranet.Local:443/",
            )
        ).apps[0]
        self.assertEqual(app.external_url, "https://wiki.example.com/")
        self.assertEqual(app.external_host, "wiki.example.com")
        self.assertEqual(app.external_path, "/")
        self.assertEqual(app.internal_url, "https://intranet.local/")
        self.assertEqual(app.internal_scheme, "https")
        self.assertEqual(app.internal_netloc, "intranet.local")
        self.assertEqual(app.internal_host, "intranet.local")
        self.assertEqual(app.internal_port, 443)
        http = self.parse_service(self.with_app(internal_url="http://intranet:80/")).apps[0]
        self.assertEqual((http.internal_netloc, http.internal_port), ("intranet", 80))

    def test_key_not_in_repr(self) -> None:
        """
        The private key's content is not in a config's C{repr}.
        """
        config = self.parse_service(self.service_data())
        self.assertNotIn("PRIVATE", repr(config))
        self.assertIn("wildcard.key", repr(config))


class ValidConnectorConfigTests(ConfigTestCase):
    def test_full(self) -> None:
        self.connector_path.write_text(CONNECTOR_TOML)
        config = load_connector_config(self.connector_path)
        d = self.dir
        self.assertEqual(
            config,
            ConnectorConfig(
                path=self.connector_path,
                service_host="tunnel.example.com",
                service_port=9444,
                service_address="203.0.113.7",
                connections=8,
                capacity=50,
                ca=d / "ca.pem",
                ca_pem=(d / "ca.pem").read_bytes(),
                cert=CertificateFiles(
                    cert=d / "connector.pem",
                    key=d / "connector.key",
                    cert_pem=(d / "connector.pem").read_bytes(),
                    key_pem=(d / "connector.key").read_bytes(),
                ),
                ping_interval=30.0,
                log_format="json",
            ),
        )

    def test_defaults(self) -> None:
        config = parse_connector_config(self.connector_data(), self.connector_path)
        self.assertEqual(config.service_port, 8444)
        self.assertEqual(config.service_address, "tunnel.example.com")
        self.assertEqual(config.connections, 4)
        self.assertEqual(config.capacity, 100)
        self.assertEqual(config.ping_interval, 15.0)
        self.assertEqual(config.log_format, "text")

    def test_service_address(self) -> None:
        for value, expected in [
            ("2001:DB8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("Tunnel-2.Example.com", "tunnel-2.example.com"),
        ]:
            data = self.with_connector(service_address=value)
            config = parse_connector_config(data, self.connector_path)
            self.assertEqual(config.service_address, expected)


class FileErrorTests(ConfigTestCase):
    def test_toml_syntax(self) -> None:
        self.service_path.write_text('[service]\nlisten = "tcp:443\n')
        error = self.assertRaises(ConfigError, load_service_config, self.service_path)
        self.assertEqual(error.key, "")
        self.assertTrue(error.problem.startswith("invalid TOML: "), error.problem)
        self.assertIn("line 2", error.problem)
        self.assertEqual(str(error), f"{self.service_path}: {error.problem}")

    def test_not_utf8(self) -> None:
        self.connector_path.write_bytes(b"[connector]\nservice_host = '\xff'\n")
        error = self.assertRaises(ConfigError, load_connector_config, self.connector_path)
        self.assertEqual(
            (error.key, error.problem), ("", "invalid TOML: the file is not UTF-8 text (byte 28)")
        )

    def test_unreadable(self) -> None:
        path = self.dir / "missing.toml"
        error = self.assertRaises(ConfigError, load_connector_config, path)
        self.assertEqual(str(error), f"{path}: cannot read: No such file or directory")
        error = self.assertRaises(ConfigError, load_service_config, self.dir)
        self.assertEqual((error.file, error.key), (str(self.dir), ""))
        self.assertEqual(error.problem, "cannot read: Is a directory")


class ConfigErrorTests(SynchronousTestCase):
    def test_str(self) -> None:
        error = ConfigError("/etc/appproxy/service.toml", "apps[1].internal_url", "bad")
        self.assertEqual(str(error), "/etc/appproxy/service.toml: apps[1].internal_url: bad")
        self.assertEqual(
            (error.file, error.key, error.problem),
            ("/etc/appproxy/service.toml", "apps[1].internal_url", "bad"),
        )
        self.assertIsInstance(error, Exception)

    def test_str_no_key(self) -> None:
        self.assertEqual(
            str(ConfigError("f.toml", "", "invalid TOML: x")), "f.toml: invalid TOML: x"
        )

    def test_one_line(self) -> None:
        """
        Control characters are escaped so the message stays on one line.
        """
        self.assertEqual(str(ConfigError("a\nb", "k", "p\r")), "a\\nb: k: p\\r")


class MissingKeyTests(ConfigTestCase):
    def test_service_key(self) -> None:
        data = self.service_data()
        del data["service"]["listen"]
        self.assertServiceError(data, "service.listen", "is required")

    def test_service_table(self) -> None:
        data = self.service_data()
        del data["service"]
        error = self.service_error(data)
        self.assertEqual(error.key, "service")
        self.assertTrue(error.problem.startswith("is required ("), error.problem)

    def test_tunnel_key(self) -> None:
        data = self.service_data()
        del data["tunnel"]["connector_ca"]
        self.assertServiceError(data, "tunnel.connector_ca", "is required")

    def test_app_key(self) -> None:
        self.assertServiceError(
            self.without_app_key("internal_url"), "apps[0].internal_url", "is required"
        )

    def test_pre_authentication(self) -> None:
        """
        The missing pre-authentication error explains what passthrough means.
        """
        self.assertServiceError(
            self.without_app_key("pre_authentication"),
            "apps[0].pre_authentication",
            'is required ("passthrough" publishes the app without sign-in)',
        )

    def test_no_apps(self) -> None:
        data = self.service_data()
        del data["apps"]
        self.assertServiceError(data, "apps", "is required (at least one [[apps]] table)")
        data["apps"] = []
        self.assertServiceError(data, "apps", "must have at least one entry")

    def test_no_certificates(self) -> None:
        data = self.with_service(certificates=[])
        self.assertServiceError(data, "service.certificates", "must have at least one entry")
        del data["service"]["certificates"]
        error = self.service_error(data)
        self.assertEqual(error.key, "service.certificates")
        self.assertTrue(error.problem.startswith("is required"))

    def test_certificate_key(self) -> None:
        data = self.with_service(certificates=[{"cert": "tls/wildcard.pem"}])
        self.assertServiceError(data, "service.certificates[0].key", "is required")

    def test_connector_key(self) -> None:
        data = self.connector_data()
        del data["connector"]["key"]
        self.assertConnectorError(data, "connector.key", "is required")
        del data["connector"]
        self.assertEqual(self.connector_error(data).key, "connector")


class WrongTypeTests(ConfigTestCase):
    def test_string(self) -> None:
        self.assertServiceError(
            self.with_service(listen=443), "service.listen", "must be a string, not integer"
        )
        self.assertServiceError(
            self.with_app(name=["wiki"]), "apps[0].name", "must be a string, not array"
        )

    def test_empty_string(self) -> None:
        self.assertServiceError(
            self.with_service(state_dir=""), "service.state_dir", "must not be empty"
        )

    def test_boolean(self) -> None:
        for value, kind in [("yes", "string"), (1, "integer"), (0, "integer")]:
            self.assertServiceError(
                self.with_app(translate_urls_in_headers=value),
                "apps[0].translate_urls_in_headers",
                f"must be true or false, not {kind}",
            )
        self.assertServiceError(
            self.with_app(verify_backend_tls="false"),
            "apps[0].verify_backend_tls",
            "must be true or false, not string",
        )

    def test_boolean_for_number(self) -> None:
        """
        TOML booleans are not numbers even though Python's bool is an int.
        """
        self.assertServiceError(
            self.with_service(queue_timeout=True),
            "service.queue_timeout",
            "must be a number, not boolean",
        )
        self.assertConnectorError(
            self.with_connector(connections=True),
            "connector.connections",
            "must be an integer, not boolean",
        )

    def test_other_number_types(self) -> None:
        self.assertConnectorError(
            self.with_connector(service_port=8444.0),
            "connector.service_port",
            "must be an integer, not float",
        )
        self.assertConnectorError(
            self.with_connector(ping_interval="15"),
            "connector.ping_interval",
            "must be a number, not string",
        )
        self.assertConnectorError(
            self.with_connector(capacity=datetime.date(2024, 1, 1)),
            "connector.capacity",
            "must be an integer, not date",
        )

    def test_table(self) -> None:
        data = self.service_data()
        data["tunnel"] = "tcp:8444"
        self.assertServiceError(data, "tunnel", "must be a table, not string")

    def test_array_of_tables(self) -> None:
        data = self.service_data()
        data["apps"] = self.app_data()
        self.assertServiceError(data, "apps", "must be an array of tables, not table")
        data["apps"] = [self.app_data(), "wiki"]
        self.assertServiceError(data, "apps[1]", "must be a table, not string")


class ValueTests(ConfigTestCase):
    def test_number_ranges(self) -> None:
        for value in [0, -1, 3600.5, float("inf"), float("nan")]:
            error = self.service_error(self.with_service(queue_timeout=value))
            self.assertEqual(error.key, "service.queue_timeout")
            self.assertEqual(error.problem, f"must be more than 0 and at most 3600, not {value!r}")
        self.assertConnectorError(
            self.with_connector(ping_interval=0),
            "connector.ping_interval",
            "must be more than 0 and at most 3600, not 0",
        )

    def test_integer_ranges(self) -> None:
        for key, value, low, high in [
            ("connections", 0, 1, 64),
            ("connections", 65, 1, 64),
            ("capacity", 1001, 1, 1000),
            ("service_port", 0, 1, 65535),
            ("service_port", 65536, 1, 65535),
            ("capacity", -(10**5000), 1, 1000),
        ]:
            shown = value if value > -1000 else "a very large number"
            self.assertConnectorError(
                self.with_connector(**{key: value}),
                f"connector.{key}",
                f"must be from {low} to {high}, not {shown}",
            )

    def test_choices(self) -> None:
        self.assertServiceError(
            self.with_service(log_format="xml"),
            "service.log_format",
            "must be 'text' or 'json', not 'xml'",
        )
        self.assertConnectorError(
            self.with_connector(log_format="JSON"),
            "connector.log_format",
            "must be 'text' or 'json', not 'JSON'",
        )
        self.assertServiceError(
            self.with_app(backend_timeout="short"),
            "apps[0].backend_timeout",
            "must be 'default' or 'long', not 'short'",
        )
        self.assertServiceError(
            self.with_app(backend_timeout=True),
            "apps[0].backend_timeout",
            'must be "default", "long" or a number of seconds, not boolean',
        )
        self.assertServiceError(
            self.with_app(backend_timeout=0),
            "apps[0].backend_timeout",
            "must be more than 0 and at most 3600, not 0",
        )

    def test_backend_timeout_seconds(self) -> None:
        """
        backend_timeout takes "default" (85 s), "long" (180 s) or seconds.
        """
        for value, seconds in [("default", 85.0), ("long", 180.0), (30, 30.0), (2.5, 2.5)]:
            config = self.parse_service(self.with_app(backend_timeout=value))
            self.assertEqual(config.apps[0].backend_timeout, seconds)

    def test_pre_authentication(self) -> None:
        self.assertServiceError(
            self.with_app(pre_authentication="oidc"),
            "apps[0].pre_authentication",
            "'oidc' is not supported (only 'passthrough' for now)",
        )

    def test_names(self) -> None:
        for value in ["wi ki", "wiki.example", "x" * 65, "wiki\n"]:
            error = self.service_error(self.with_app(name=value))
            self.assertEqual(error.key, "apps[0].name")
            self.assertTrue(
                error.problem.endswith("is not a valid name (1 to 64 letters, digits, '-' or '_')")
            )
        error = self.service_error(self.with_app(connector_group="site/b"))
        self.assertEqual(
            (error.key, error.problem),
            (
                "apps[0].connector_group",
                "'site/b' is not a valid name (1 to 64 letters, digits, '-' or '_')",
            ),
        )

    def test_service_host(self) -> None:
        for value in ["203.0.113.7", "::1", "[::1]"]:
            error = self.connector_error(self.with_connector(service_host=value))
            self.assertEqual(error.key, "connector.service_host")
            self.assertTrue(error.problem.startswith("must be a DNS name, not an IP address"))
        for value in [
            "-tunnel.example.com",
            "tunnel..example.com",
            "tunnel.example.com.",
            "a" * 64 + ".com",
            "tun_nel.example.com",
            "tünnel.example.com",
        ]:
            error = self.connector_error(self.with_connector(service_host=value))
            self.assertEqual(error.key, "connector.service_host")
            self.assertIn("is not a valid DNS name", error.problem)

    def test_service_address(self) -> None:
        self.assertConnectorError(
            self.with_connector(service_address="tunnel host"),
            "connector.service_address",
            "'tunnel host' is not a valid host name or IP address",
        )


class URLTests(ConfigTestCase):
    def assertURLError(self, key: str, url: str, problem: str) -> None:
        self.assertServiceError(self.with_app(**{key: url}), f"apps[0].{key}", problem)

    def test_internal_scheme(self) -> None:
        """
        The documentation's example error.
        """
        data = self.service_data()
        data["apps"].append(
            self.app_data(
                name="intranet",
                external_url="https://intranet.example.com/",
                internal_url="ftp://intranet/",
            )
        )
        error = self.service_error(data)
        self.assertEqual(
            str(error),
            f"{self.service_path}: apps[1].internal_url:"
            " 'ftp://intranet/' is not an http or https URL",
        )

    def test_external_scheme(self) -> None:
        self.assertURLError(
            "external_url",
            "http://wiki.example.com/",
            "'http://wiki.example.com/' is not an https URL",
        )
        self.assertURLError(
            "external_url", "wiki.example.com/", "'wiki.example.com/' is not an https URL"
        )

    def test_userinfo(self) -> None:
        """
        A URL with a user name or password is refused without being echoed.
        """
        for key in ["external_url", "internal_url"]:
            url = "https://user:s3cret@host.example.com/"
            error = self.service_error(self.with_app(**{key: url}))
            self.assertEqual(
                (error.key, error.problem),
                (f"apps[0].{key}", "must not contain a user name or password"),
            )
            self.assertNotIn("s3cret", str(error))

    def test_query_and_fragment(self) -> None:
        self.assertURLError(
            "external_url",
            "https://wiki.example.com/?a=b",
            "'https://wiki.example.com/?a=b' must not have a query ('?...')",
        )
        self.assertURLError(
            "internal_url",
            "http://intranet/?",
            "'http://intranet/?' must not have a query ('?...')",
        )
        self.assertURLError(
            "internal_url",
            "http://intranet/#top",
            "'http://intranet/#top' must not have a fragment ('#...')",
        )

    def test_trailing_slash(self) -> None:
        self.assertURLError(
            "external_url",
            "https://wiki.example.com/wiki",
            "'https://wiki.example.com/wiki' must end with '/' (its path is a prefix)",
        )
        self.assertURLError(
            "internal_url",
            "http://intranet/index.html",
            "'http://intranet/index.html' must end with '/' (its path is a prefix)",
        )

    def test_bad_port(self) -> None:
        for url in [
            "https://wiki.example.com:0/",
            "https://wiki.example.com:65536/",
            "https://wiki.example.com:https/",
            "https://wiki.example.com:/",
            "https://wiki.example.com:-1/",
            "https://[::1]x/",
            "https://wiki.example.com:" + "4" * 5000 + "/",
        ]:
            self.assertURLError(
                "external_url",
                url,
                f"{url[:200]!r}{'...' if len(url) > 200 else ''}"
                " has an invalid port (must be from 1 to 65535)",
            )

    def test_bad_host(self) -> None:
        self.assertURLError("internal_url", "http:///x/", "'http:///x/' has no host name")
        self.assertURLError("internal_url", "http:intranet/", "'http:intranet/' has no host name")
        self.assertURLError("internal_url", "http://:80/", "'http://:80/' has no host name")
        self.assertURLError(
            "internal_url", "http://intra%6eet/", "'http://intra%6eet/' has an invalid host name"
        )
        self.assertURLError(
            "internal_url",
            "http://[fe80::1%25eth0]/",
            "'http://[fe80::1%25eth0]/' has an invalid IPv6 address",
        )
        self.assertURLError("internal_url", "http://[::1/", "is not a valid URL")

    def test_whitespace_and_control(self) -> None:
        for url in [
            "https://wiki.example.com/ x/",
            "https://wiki.example.com/\n",
            " https://w/",
            "https://wiki\x00.example.com/",
            "https://wiki.example.com/\u200b/",
        ]:
            self.assertURLError(
                "external_url", url, "must not contain whitespace or control characters"
            )

    def test_non_ascii(self) -> None:
        error = self.service_error(self.with_app(external_url="https://bücher.example/"))
        self.assertEqual(error.key, "apps[0].external_url")
        self.assertTrue(error.problem.startswith("must contain only ASCII characters"))

    def test_dot_segments(self) -> None:
        self.assertURLError(
            "internal_url",
            "http://intranet/a/../",
            "'http://intranet/a/../' must not contain '.' or '..' path segments",
        )

    def test_empty_path(self) -> None:
        """
        A URL without a path means its root.
        """
        app = self.parse_service(self.with_app(internal_url="http://Intranet:8080")).apps[0]
        self.assertEqual(app.internal_url, "http://intranet:8080/")


class DuplicateTests(ConfigTestCase):
    def test_name(self) -> None:
        data = self.service_data()
        data["apps"].append(self.app_data(external_url="https://other.example.com/"))
        self.assertServiceError(data, "apps[1].name", "'wiki' is already used by apps[0]")

    def test_external_url(self) -> None:
        """
        External URLs are compared after normalisation.
        """
        data = self.service_data()
        data["apps"].append(
            self.app_data(name="wiki2", external_url="https://WIKI.example.com:443")
        )
        self.assertServiceError(
            data,
            "apps[1].external_url",
            "'https://wiki.example.com/' is already used by apps[0] (wiki)",
        )

    def test_prefixes_allowed(self) -> None:
        data = self.service_data()
        data["apps"].append(self.app_data(name="sub", external_url="https://wiki.example.com/sub/"))
        self.assertEqual(len(self.parse_service(data).apps), 2)


class UnknownKeyTests(ConfigTestCase):
    def test_app_did_you_mean(self) -> None:
        """
        A misspelt key is reported as unknown, with the likely intended key,
        rather than the intended key as missing.
        """
        data = self.service_data()
        data["apps"][0]["internl_url"] = data["apps"][0].pop("internal_url")
        self.assertServiceError(
            data, "apps[0].internl_url", "unknown key (did you mean 'internal_url'?)"
        )

    def test_everywhere(self) -> None:
        cases = [
            (["servce"], "servce", "unknown key (did you mean 'service'?)"),
            (["service", "listne"], "service.listne", "unknown key (did you mean 'listen'?)"),
            (["tunnel", "zzz"], "tunnel.zzz", "unknown key"),
            (["apps", 0, "Name"], "apps[0].Name", "unknown key (did you mean 'name'?)"),
            (
                ["service", "certificates", 0, "crt"],
                "service.certificates[0].crt",
                "unknown key (did you mean 'cert'?)",
            ),
            (["service", "a.b"], 'service."a.b"', "unknown key"),
        ]
        for where, key, problem in cases:
            data = self.service_data()
            target: Any = data
            for step in where[:-1]:
                target = target[step]
            target[where[-1]] = 1
            self.assertServiceError(data, key, problem)

    def test_connector(self) -> None:
        self.assertConnectorError(
            self.with_connector(pinginterval=5),
            "connector.pinginterval",
            "unknown key (did you mean 'ping_interval'?)",
        )
        data = self.connector_data()
        data["service"] = {}
        self.assertConnectorError(data, "service", "unknown key")


class CertificateFileTests(ConfigTestCase):
    def test_unreadable_cert(self) -> None:
        data = self.with_service(certificates=[{"cert": "tls/nope.pem", "key": "tls/wildcard.key"}])
        self.assertServiceError(
            data,
            "service.certificates[0].cert",
            f"cannot read certificate file '{self.dir}/tls/nope.pem': No such file or directory",
        )

    def test_unreadable_key(self) -> None:
        self.assertServiceError(
            self.with_tunnel(key="tls"),
            "tunnel.key",
            f"cannot read key file '{self.dir}/tls': Is a directory",
        )

    def test_not_pem_cert(self) -> None:
        (self.dir / "junk.pem").write_bytes(b"not a certificate\n")
        self.assertServiceError(
            self.with_tunnel(cert="junk.pem"),
            "tunnel.cert",
            f"'{self.dir}/junk.pem' does not contain a PEM certificate",
        )
        # A key is not a certificate.
        self.assertServiceError(
            self.with_tunnel(cert="tls/tunnel.key"),
            "tunnel.cert",
            f"'{self.dir}/tls/tunnel.key' does not contain a PEM certificate",
        )

    def test_not_pem_key(self) -> None:
        error = self.service_error(self.with_tunnel(key="tls/tunnel.pem"))
        self.assertEqual(
            (error.key, error.problem),
            ("tunnel.key", f"'{self.dir}/tls/tunnel.pem' does not contain a PEM private key"),
        )

    def test_key_mismatch(self) -> None:
        error = self.connector_error(self.with_connector(key="tls/tunnel.key"))
        self.assertEqual(
            (error.key, error.problem),
            (
                "connector.key",
                f"'{self.dir}/tls/tunnel.key' does not match the certificate in"
                f" '{self.dir}/connector.pem'",
            ),
        )
        self.assertNotIn("PRIVATE", str(error))

    def test_encrypted_key(self) -> None:
        key = serialization.load_pem_private_key(
            (self.dir / "connector.key").read_bytes(), password=None
        )
        (self.dir / "encrypted.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            )
        )
        self.assertConnectorError(
            self.with_connector(key="encrypted.key"),
            "connector.key",
            f"'{self.dir}/encrypted.key' is encrypted; appproxy needs an unencrypted key",
        )

    def test_chain(self) -> None:
        """
        A chain after the leaf is allowed; the key must match the leaf.
        """
        chain = (self.dir / "connector.pem").read_bytes() + (self.dir / "ca.pem").read_bytes()
        (self.dir / "chain.pem").write_bytes(chain)
        config = parse_connector_config(self.with_connector(cert="chain.pem"), self.connector_path)
        self.assertEqual(config.cert.cert_pem, chain)
        self.assertConnectorError(
            self.with_connector(cert="chain.pem", key="ca.key"),
            "connector.key",
            f"'{self.dir}/ca.key' does not match the certificate in '{self.dir}/chain.pem'",
        )

    def test_ca_files(self) -> None:
        self.assertConnectorError(
            self.with_connector(ca="nope.pem"),
            "connector.ca",
            f"cannot read CA certificate file '{self.dir}/nope.pem': No such file or directory",
        )
        self.assertServiceError(
            self.with_tunnel(connector_ca="ca.key"),
            "tunnel.connector_ca",
            f"'{self.dir}/ca.key' does not contain a PEM certificate",
        )
        self.assertServiceError(
            self.with_app(backend_ca="tls/intranet-ca.key"),
            "apps[0].backend_ca",
            f"'{self.dir}/tls/intranet-ca.key' does not contain a PEM certificate",
        )

    def test_nul_in_path(self) -> None:
        self.assertConnectorError(
            self.with_connector(ca="ca\x00.pem"),
            "connector.ca",
            "must not contain a NUL character",
        )


class EndpointTests(ConfigTestCase):
    def assertEndpointError(self, endpoint: str, problem: str) -> None:
        self.assertServiceError(self.with_service(listen=endpoint), "service.listen", problem)

    def test_ssl(self) -> None:
        self.assertEndpointError(
            "ssl:443:privateKey=key.pem",
            "appproxy adds TLS itself: use a tcp: endpoint and [[service.certificates]]",
        )
        self.assertServiceError(
            self.with_tunnel(listen="ssl:8444"),
            "tunnel.listen",
            "appproxy adds TLS itself: use a tcp: endpoint and tunnel.cert/tunnel.key",
        )

    def test_unknown_type(self) -> None:
        self.assertEndpointError(
            "quic:443",
            "'quic:443' is not a valid endpoint: unknown type 'quic'"
            " (use tcp:, tcp6:, unix: or systemd:)",
        )
        self.assertEndpointError("443", "'443' is not an endpoint string (did you mean 'tcp:443'?)")
        self.assertEndpointError("localhost", "'localhost' is not an endpoint string")

    def test_port(self) -> None:
        self.assertEndpointError(
            "tcp:", "'tcp:' is not a valid endpoint: port must be a number from 0 to 65535, not ''"
        )
        self.assertEndpointError(
            "tcp", "'tcp' is not a valid endpoint: it needs a port number (for example 'tcp:443')"
        )
        self.assertEndpointError(
            "tcp:interface=127.0.0.1",
            "'tcp:interface=127.0.0.1' is not a valid endpoint:"
            " it needs a port number (for example 'tcp:443')",
        )
        self.assertEndpointError(
            "tcp:65536",
            "'tcp:65536' is not a valid endpoint:"
            " port must be a number from 0 to 65535, not '65536'",
        )
        self.assertEndpointError(
            "tcp6:port=https",
            "'tcp6:port=https' is not a valid endpoint:"
            " port must be a number from 0 to 65535, not 'https'",
        )

    def test_options(self) -> None:
        self.assertEndpointError(
            "tcp:443:bogus=1",
            "'tcp:443:bogus=1' is not a valid endpoint:"
            " unknown option 'bogus' (known: port, interface, backlog)",
        )
        self.assertEndpointError(
            "tcp:443:port=443", "'tcp:443:port=443' is not a valid endpoint: port is given twice"
        )
        self.assertEndpointError(
            "tcp:443:127.0.0.1:50:x",
            "'tcp:443:127.0.0.1:50:x' is not a valid endpoint:"
            " too many arguments for a tcp: endpoint",
        )
        self.assertEndpointError(
            "unix:",
            "'unix:' is not a valid endpoint:"
            " it needs a socket path (for example 'unix:/run/appproxy.sock')",
        )
        self.assertEndpointError(
            "systemd:domain=INET",
            "'systemd:domain=INET' is not a valid endpoint:"
            " it needs exactly one of index= and name=",
        )
        self.assertEndpointError(
            "systemd:domain=BOGUS:index=0",
            "'systemd:domain=BOGUS:index=0' is not a valid endpoint:"
            " unknown address family 'BOGUS' (for example INET or INET6)",
        )
        self.assertEndpointError(
            "tcp:443\\", "'tcp:443\\\\' is not a valid endpoint: it ends with a lone backslash"
        )

    def test_empty(self) -> None:
        self.assertEndpointError("", "must not be empty")


# Property tests

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_SEGMENT = st.from_regex(r"[A-Za-z0-9_~-][A-Za-z0-9._~%-]{0,9}", fullmatch=True)


@st.composite
def _hosts(draw: st.DrawFn) -> str:
    """A DNS name in mixed case."""
    host = ".".join(draw(st.lists(_LABEL, min_size=1, max_size=4)))
    upper = draw(st.lists(st.booleans(), min_size=len(host), max_size=len(host)))
    return "".join(c.upper() if u else c for c, u in zip(host, upper, strict=True))


_PATHS = st.lists(_SEGMENT, max_size=4).map(
    lambda segments: "/" + "".join(s + "/" for s in segments)
)
_PORTS = st.none() | st.integers(1, 65535)


def _expected(scheme: str, host: str, port: int | None, path: str) -> str:
    default = {"http": 80, "https": 443}[scheme]
    netloc = host.lower() if port in (None, default) else f"{host.lower()}:{port}"
    return f"{scheme}://{netloc}{path}"


class PropertyTests(ConfigTestCase):
    @given(
        host=_hosts(),
        port=_PORTS,
        path=_PATHS,
        scheme=st.sampled_from(["HTTPS", "https", "Https"]),
        internal_scheme=st.sampled_from(["http", "https"]),
        internal_host=_hosts() | st.ip_addresses(v=4).map(str),
        internal_port=_PORTS,
        internal_path=_PATHS,
        name=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
        timeout=st.sampled_from(sorted(BACKEND_TIMEOUTS)),
        translate=st.booleans(),
    )
    def test_valid_app(
        self,
        host: str,
        port: int | None,
        path: str,
        scheme: str,
        internal_scheme: str,
        internal_host: str,
        internal_port: int | None,
        internal_path: str,
        name: str,
        timeout: str,
        translate: bool,
    ) -> None:
        """
        Any valid app parses, with its URLs normalised.
        """
        external_url = f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"
        internal_url = (
            f"{internal_scheme}://{internal_host}"
            f"{'' if internal_port is None else f':{internal_port}'}{internal_path}"
        )
        data = self.with_app(
            name=name,
            external_url=external_url,
            internal_url=internal_url,
            backend_timeout=timeout,
            translate_urls_in_headers=translate,
        )
        app = self.parse_service(data).apps[0]
        expected = _expected("https", host, port, path)
        self.assertEqual(app.external_url, expected)
        self.assertEqual(app.name, name)
        self.assertEqual(app.backend_timeout, BACKEND_TIMEOUTS[timeout])
        self.assertIs(app.translate_urls_in_headers, translate)
        self.assertEqual(
            app.internal_url,
            _expected(internal_scheme, internal_host, internal_port, internal_path),
        )
        self.assertEqual(app.external_path, path)
        self.assertEqual(app.internal_path, internal_path)
        self.assertEqual(app.internal_host, internal_host.lower())
        self.assertEqual(
            app.internal_port,
            internal_port or {"http": 80, "https": 443}[internal_scheme],
        )
        # Normalisation is idempotent.
        again = self.parse_service(self.with_app(external_url=app.external_url)).apps[0]
        self.assertEqual(again.external_url, expected)

    @given(
        key=st.text(max_size=20).filter(
            lambda k: k not in APP_KEYS | {"service", "tunnel", "apps"}
        ),
        where=st.sampled_from(["", "service", "tunnel", "apps[0]", "service.certificates[0]"]),
    )
    def test_unknown_key(self, key: str, where: str) -> None:
        """
        Any unknown key is reported, named so that it can be found in the file.
        """
        data = self.service_data()
        target = {
            "": data,
            "service": data["service"],
            "tunnel": data["tunnel"],
            "apps[0]": data["apps"][0],
            "service.certificates[0]": data["service"]["certificates"][0],
        }[where]
        if key in target:
            return
        target[key] = "x"
        error = self.service_error(data)
        prefix = f"{where}." if where else ""
        self.assertTrue(error.key.startswith(prefix), error.key)
        written = error.key[len(prefix) :]
        self.assertEqual(tomllib.loads(f"{written} = 1"), {key: 1})
        self.assertTrue(error.problem.startswith("unknown key"), error.problem)

    @given(url=st.text(max_size=40) | st.text(max_size=20).map(lambda s: "https://" + s))
    def test_any_url(self, url: str) -> None:
        """
        Any string as a URL either parses or gives a one-line L{ConfigError}.
        """
        data = copy.deepcopy(self.with_app(external_url=url))
        try:
            self.parse_service(data)
        except ConfigError as error:
            self.assertEqual(error.key, "apps[0].external_url")
            self.assertTrue(str(error).isprintable(), str(error))
