"""
Tests for L{appproxy.config.loader}.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.policy import DEFAULT_MFA_AMR, Assignment, MfaRule, NamedLocation, Policy
from appproxy.config.loader import (
    BACKEND_TIMEOUTS,
    AppConfig,
    BuiltinProviderConfig,
    CertificateFiles,
    ConfigError,
    ConnectorConfig,
    OidcConfig,
    RiskConfig,
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
    "allowed_users",
    "allowed_groups",
    "session_lifetime",
    "persistent_cookie",
    "http_only_cookie",
    "jwt_assertion",
    "headers",
}

#: Every key the service file knows, at any level.
KNOWN_KEYS = APP_KEYS | {
    "service",
    "tunnel",
    "apps",
    "oidc",
    "builtin_provider",
    "risk",
    "locations",
    "policies",
    "listen",
    "state_dir",
    "queue_timeout",
    "log_format",
    "certificates",
    "trusted_proxies",
    "cert",
    "key",
    "connector_ca",
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
        pre_authentication defaults to "oidc", so an app without it needs an
        [oidc] table; the error says how to publish it without sign-in.
        """
        self.assertServiceError(
            self.without_app_key("pre_authentication"),
            "apps[0].pre_authentication",
            "app 'wiki' requires sign-in ('oidc', the default) but there is no [oidc]"
            " table: add one, or set pre_authentication = 'passthrough'",
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
        """
        pre_authentication is "oidc" or "passthrough"; "oidc" needs an
        [oidc] table.
        """
        self.assertServiceError(
            self.with_app(pre_authentication="oidc"),
            "apps[0].pre_authentication",
            "app 'wiki' requires sign-in ('oidc', the default) but there is no [oidc]"
            " table: add one, or set pre_authentication = 'passthrough'",
        )
        self.assertServiceError(
            self.with_app(pre_authentication="none"),
            "apps[0].pre_authentication",
            "must be 'oidc' or 'passthrough', not 'none'",
        )
        self.assertServiceError(
            self.with_app(pre_authentication="OIDC"),
            "apps[0].pre_authentication",
            "must be 'oidc' or 'passthrough', not 'OIDC'",
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


# Sign-in: [oidc], [builtin_provider], [risk], [[locations]], [[policies]],
# the per-app sign-in keys and the checks across tables.

OIDC_SECRET = "s3cret-0123456789abcdef"

SIGNIN_TOML = """\
[service]
listen = "tcp:443"
state_dir = "state"
trusted_proxies = ["10.0.0.1", "2001:DB8::/64", "192.168.1.7/24"]

[[service.certificates]]
cert = "tls/wildcard.pem"
key = "tls/wildcard.key"

[tunnel]
listen = "tcp:8444"
cert = "tls/tunnel.pem"
key = "tls/tunnel.key"
connector_ca = "ca.pem"

[[apps]]
name = "wiki"
external_url = "https://wiki.example.com/"
internal_url = "http://10.1.2.3:8080/wiki/"
connector_group = "default"
allowed_users = ["alice", "Bob"]
allowed_groups = ["staff"]
session_lifetime = 3600
persistent_cookie = true
http_only_cookie = false
jwt_assertion = true

[apps.headers]
X-Remote-User = "preferred_username"
X_Remote_Groups = "groups"
"X-Employee-Id" = "employee_id"

[[apps]]
name = "status"
external_url = "https://status.example.com/"
internal_url = "http://10.1.2.4/"
connector_group = "default"
pre_authentication = "passthrough"

[oidc]
issuer = "https://Login.MicrosoftOnline.com/0b0e-tenant/v2.0"
client_id = "4f1c-client"
client_secret_file = "secrets/oidc-secret"
client_auth = "client_secret_post"
callback_url = "https://Login.Example.com:443/.appproxy/callback"
scopes = ["openid", "profile", "email", "offline_access"]
username_claim = "upn"
groups_claim = "roles_and_groups"
algorithms = ["RS256", "ES384", "EdDSA"]
clock_skew = 120
provider_ca = "tls/intranet-ca.pem"
provider_address = "[2001:db8::10]:8443"
mfa_amr = ["mfa", "otp"]
mfa_acr = ["urn:example:mfa"]
step_up_acr_values = "urn:example:mfa"
jwks_refetch_interval = 5

[builtin_provider]
issuer = "https://IdP.example.com/"
users_file = "people.json"
device_client_id = "connectors"

[risk]
failed_sign_in_limit = 3
failed_sign_in_window = 300
anonymizers = "tor-exits.txt"

[[locations]]
name = "office"
networks = ["192.0.2.0/24", "2001:db8:1::/48"]

[[locations]]
name = "vpn"
networks = ["198.51.100.7"]

[[policies]]
name = "block-outside"
apps = ["wiki"]
exclude_users = ["breakglass"]
exclude_locations = ["office", "vpn"]
grant = "block"

[[policies]]
name = "mfa-for-admins"
exclude_apps = ["status"]
users = ["carol"]
groups = ["admins"]
exclude_groups = ["service-accounts"]
locations = ["*"]
risks = ["anonymizer", "failed-sign-ins"]
grant = "mfa"
sign_in_frequency = 86400
"""

_ALGORITHMS_TEXT = "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA"


class SignInTestCase(ConfigTestCase):
    """
    Adds a client secret file, and valid configurations whose app signs in.
    """

    def setUp(self) -> None:
        super().setUp()
        self.secret_path = self.dir / "oidc-secret"
        self.secret_path.write_text(OIDC_SECRET + "\n")

    def oidc_data(self, **changes: Any) -> dict[str, Any]:
        oidc = {
            "issuer": "https://idp.example.net/realms/staff",
            "client_id": "appproxy",
            "client_secret_file": "oidc-secret",
            "callback_url": "https://login.example.com/.appproxy/callback",
        }
        oidc.update(changes)
        return oidc

    def signin_data(self, **tables: Any) -> dict[str, Any]:
        """
        A valid configuration with an [oidc] table and one app that signs in;
        C{tables} adds or replaces top-level tables.
        """
        data = self.service_data()
        data["apps"] = [self.app_data(pre_authentication="oidc")]
        data["oidc"] = self.oidc_data()
        data.update(tables)
        return data

    def with_oidc(self, **changes: Any) -> dict[str, Any]:
        return self.signin_data(oidc=self.oidc_data(**changes))

    def without_oidc_key(self, key: str) -> dict[str, Any]:
        data = self.signin_data()
        del data["oidc"][key]
        return data

    def with_signin_app(self, **changes: Any) -> dict[str, Any]:
        return self.signin_data(apps=[self.app_data(pre_authentication="oidc", **changes)])

    def with_builtin(self, **changes: Any) -> dict[str, Any]:
        builtin = {"issuer": "https://login.example.com"}
        builtin.update(changes)
        return self.signin_data(builtin_provider=builtin)

    def with_policy(self, **changes: Any) -> dict[str, Any]:
        policy = {"name": "p", "grant": "block"}
        policy.update(changes)
        return self.signin_data(
            locations=[{"name": "office", "networks": ["192.0.2.0/24"]}], policies=[policy]
        )

    def assertOidcError(self, key: str, value: Any, problem: str) -> None:
        self.assertServiceError(self.with_oidc(**{key: value}), f"oidc.{key}", problem)

    def assertAppError(self, key: str, changes: dict[str, Any], problem: str) -> None:
        self.assertServiceError(self.with_signin_app(**changes), f"apps[0].{key}", problem)


class ValidSignInConfigTests(SignInTestCase):
    def test_full(self) -> None:
        """
        Every sign-in key of a full file is read: URLs and networks are
        normalised, paths resolved, the client secret read and stripped.
        """
        d = self.dir
        (d / "secrets").mkdir()
        (d / "secrets/oidc-secret").write_text(f"  {OIDC_SECRET}\n\n")
        (d / "tor-exits.txt").write_text("# none yet\n")
        self.service_path.write_text(SIGNIN_TOML)
        config = load_service_config(self.service_path)

        self.assertEqual(
            config.trusted_proxies,
            (
                ipaddress.ip_network("10.0.0.1/32"),
                ipaddress.ip_network("2001:db8::/64"),
                ipaddress.ip_network("192.168.1.0/24"),
            ),
        )
        wiki, status = config.apps
        self.assertEqual(
            wiki,
            AppConfig(
                name="wiki",
                external_url="https://wiki.example.com/",
                internal_url="http://10.1.2.3:8080/wiki/",
                connector_group="default",
                pre_authentication="oidc",
                assignment=Assignment(users=("alice", "Bob"), groups=("staff",)),
                session_lifetime=3600,
                persistent_cookie=True,
                http_only_cookie=False,
                jwt_assertion=True,
                headers=(
                    ("X-Remote-User", "preferred_username"),
                    ("X_Remote_Groups", "groups"),
                    ("X-Employee-Id", "employee_id"),
                ),
            ),
        )
        self.assertTrue(wiki.signs_in)
        self.assertEqual(wiki.cookie_name, "__Host-appproxy-wiki")
        self.assertFalse(status.signs_in)
        self.assertEqual(status.assignment, Assignment())
        self.assertEqual(status.headers, ())

        self.assertEqual(
            config.oidc,
            OidcConfig(
                issuer="https://login.microsoftonline.com/0b0e-tenant/v2.0",
                client_id="4f1c-client",
                client_secret_file=d / "secrets/oidc-secret",
                client_secret=OIDC_SECRET,
                client_auth="client_secret_post",
                callback_url="https://login.example.com/.appproxy/callback",
                scopes=("openid", "profile", "email", "offline_access"),
                username_claim="upn",
                groups_claim="roles_and_groups",
                algorithms=("RS256", "ES384", "EdDSA"),
                clock_skew=120,
                provider_ca=d / "tls/intranet-ca.pem",
                provider_ca_pem=(d / "tls/intranet-ca.pem").read_bytes(),
                provider_address="[2001:db8::10]:8443",
                mfa=MfaRule(amr=("mfa", "otp"), acr=("urn:example:mfa",)),
                step_up_acr_values="urn:example:mfa",
                jwks_refetch_interval=5.0,
            ),
        )
        assert config.oidc is not None
        self.assertEqual(config.oidc.callback_host, "login.example.com")
        self.assertEqual(config.oidc.callback_path, "/.appproxy/callback")

        self.assertEqual(
            config.builtin_provider,
            BuiltinProviderConfig(
                issuer="https://idp.example.com",
                users_file=d / "state/people.json",
                device_client_id="connectors",
            ),
        )
        self.assertEqual(config.login_hosts, {"login.example.com", "idp.example.com"})
        self.assertEqual(
            config.risk,
            RiskConfig(
                failed_sign_in_limit=3, failed_sign_in_window=300.0, anonymizers=d / "tor-exits.txt"
            ),
        )
        self.assertEqual(
            config.locations,
            (
                NamedLocation(
                    name="office",
                    networks=(
                        ipaddress.ip_network("192.0.2.0/24"),
                        ipaddress.ip_network("2001:db8:1::/48"),
                    ),
                ),
                NamedLocation(name="vpn", networks=(ipaddress.ip_network("198.51.100.7/32"),)),
            ),
        )
        self.assertEqual(
            config.policies,
            (
                Policy(
                    name="block-outside",
                    apps=("wiki",),
                    exclude_users=("breakglass",),
                    exclude_locations=("office", "vpn"),
                    grant="block",
                ),
                Policy(
                    name="mfa-for-admins",
                    exclude_apps=("status",),
                    users=("carol",),
                    groups=("admins",),
                    exclude_groups=("service-accounts",),
                    risks=("anonymizer", "failed-sign-ins"),
                    grant="mfa",
                    sign_in_frequency=86400,
                ),
            ),
        )

    def test_defaults(self) -> None:
        """
        Optional sign-in keys take their documented defaults; an app signs
        in unless it says otherwise.
        """
        data = self.signin_data()
        del data["apps"][0]["pre_authentication"]
        config = self.parse_service(data)
        (app,) = config.apps
        self.assertEqual(app.pre_authentication, "oidc")
        self.assertTrue(app.signs_in)
        self.assertEqual(app.assignment, Assignment(users=(), groups=()))
        self.assertEqual(app.session_lifetime, 8 * 3600)
        self.assertIs(app.persistent_cookie, False)
        self.assertIs(app.http_only_cookie, True)
        self.assertIs(app.jwt_assertion, False)
        self.assertEqual(app.headers, ())

        oidc = config.oidc
        assert oidc is not None
        self.assertEqual(oidc.issuer, "https://idp.example.net/realms/staff")
        self.assertEqual(oidc.client_id, "appproxy")
        self.assertEqual(oidc.client_secret_file, self.secret_path)
        self.assertEqual(oidc.client_secret, OIDC_SECRET)
        self.assertEqual(oidc.client_auth, "client_secret_basic")
        self.assertEqual(oidc.scopes, ("openid", "profile", "email"))
        self.assertEqual(oidc.username_claim, "preferred_username")
        self.assertEqual(oidc.groups_claim, "groups")
        self.assertEqual(oidc.algorithms, ("RS256", "PS256", "ES256"))
        self.assertEqual(oidc.clock_skew, 60)
        self.assertIsNone(oidc.provider_ca)
        self.assertIsNone(oidc.provider_ca_pem)
        self.assertIsNone(oidc.provider_address)
        self.assertEqual(oidc.mfa, MfaRule(amr=DEFAULT_MFA_AMR, acr=()))
        self.assertEqual(oidc.mfa.amr, ("mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "pop"))
        self.assertEqual(oidc.step_up_acr_values, "mfa")
        self.assertEqual(oidc.jwks_refetch_interval, 30.0)

        self.assertIsNone(config.builtin_provider)
        self.assertEqual(config.risk, RiskConfig())
        self.assertEqual(
            (config.risk.failed_sign_in_limit, config.risk.failed_sign_in_window), (5, 600.0)
        )
        self.assertIsNone(config.risk.anonymizers)
        self.assertEqual(config.locations, ())
        self.assertEqual(config.policies, ())
        self.assertEqual(config.trusted_proxies, ())
        self.assertEqual(config.login_hosts, {"login.example.com"})

    def test_no_sign_in(self) -> None:
        """
        A file whose apps are all passthrough needs no [oidc] table.
        """
        config = self.parse_service(self.service_data())
        self.assertIsNone(config.oidc)
        self.assertIsNone(config.builtin_provider)
        self.assertEqual(config.login_hosts, frozenset())

    def test_oidc_with_passthrough_apps(self) -> None:
        """
        An [oidc] table is allowed when no app signs in.
        """
        data = self.signin_data(apps=[self.app_data()])
        config = self.parse_service(data)
        self.assertIsNotNone(config.oidc)
        self.assertFalse(config.apps[0].signs_in)

    def test_secret_not_in_repr(self) -> None:
        config = self.parse_service(self.signin_data())
        self.assertNotIn(OIDC_SECRET, repr(config))
        self.assertIn("oidc-secret", repr(config))

    def test_empty_tables_and_arrays(self) -> None:
        """
        Empty [risk], [[locations]] and [[policies]] are the same as none.
        """
        config = self.parse_service(self.signin_data(risk={}, locations=[], policies=[]))
        self.assertEqual((config.risk, config.locations, config.policies), (RiskConfig(), (), ()))


class OidcConfigTests(SignInTestCase):
    def test_required(self) -> None:
        for key in ("issuer", "client_id", "client_secret_file", "callback_url"):
            self.assertServiceError(self.without_oidc_key(key), f"oidc.{key}", "is required")

    def test_not_a_table(self) -> None:
        self.assertServiceError(
            self.signin_data(oidc="https://idp.example.net"), "oidc", "must be a table, not string"
        )

    def test_unknown_key(self) -> None:
        self.assertOidcError(
            "client_secret", "x", "unknown key (did you mean 'client_secret_file'?)"
        )

    def test_issuer_normalised(self) -> None:
        """
        The issuer's host is lowercased and port 443 elided; its path is kept
        as written, trailing slash or not (it must equal the provider's).
        """
        for value, expected in [
            (
                "https://Login.MicrosoftOnline.com/TENANT/v2.0",
                "https://login.microsoftonline.com/TENANT/v2.0",
            ),
            ("https://accounts.google.com", "https://accounts.google.com"),
            ("https://kc.example.net:443/realms/staff/", "https://kc.example.net/realms/staff/"),
            ("https://kc.example.net:8443/realms/a", "https://kc.example.net:8443/realms/a"),
            ("https://[2001:DB8::1]:8443/x", "https://[2001:db8::1]:8443/x"),
            ("https://[::1]:443", "https://[::1]"),
            ("https://127.0.0.1:9443", "https://127.0.0.1:9443"),
        ]:
            oidc = self.parse_service(self.with_oidc(issuer=value)).oidc
            assert oidc is not None
            self.assertEqual(oidc.issuer, expected)

    def test_issuer_https_only(self) -> None:
        for value in ["http://idp.example.net/", "idp.example.net", "ftp://idp.example.net/"]:
            self.assertOidcError("issuer", value, f"{value!r} is not an https URL")

    def test_issuer_userinfo(self) -> None:
        """
        A URL with a user name or password is refused without being echoed.
        """
        for key in ("issuer", "callback_url"):
            value = "https://admin:hunter2@idp.example.net/cb"
            error = self.service_error(self.with_oidc(**{key: value}))
            self.assertEqual(
                (error.key, error.problem),
                (f"oidc.{key}", "must not contain a user name or password"),
            )
            self.assertNotIn("hunter2", str(error))

    def test_issuer_malformed(self) -> None:
        for value, problem in [
            ("https:///realms/x", "has no host name"),
            ("https://:8443/x", "has no host name"),
            ("https://idp.example.net/?tenant=1", "must not have a query or fragment"),
            ("https://idp.example.net/?", "must not have a query or fragment"),
            ("https://idp.example.net/#top", "must not have a query or fragment"),
            ("https://idp.example.net:0/", "has an invalid port (must be from 1 to 65535)"),
            ("https://idp.example.net:65536/", "has an invalid port (must be from 1 to 65535)"),
            ("https://idp.example.net:https/", "has an invalid port (must be from 1 to 65535)"),
            ("https://idp%2eexample.net/", "has an invalid host name"),
            ("https://idp..example.net/", "has an invalid host name"),
            ("https://[fe80::1%25eth0]/", "has an invalid host name"),
            ("https://[::1/", "is not a valid URL"),
        ]:
            self.assertOidcError("issuer", value, f"{value!r} {problem}")

    def test_issuer_characters(self) -> None:
        for value in [
            "https://idp.example.net/ x",
            " https://idp.example.net/",
            "https://idp.example.net/\n",
            "https://bücher.example/",
        ]:
            self.assertOidcError(
                "issuer", value, "must be an ASCII URL without whitespace or control characters"
            )
        self.assertOidcError("issuer", "", "must not be empty")
        self.assertOidcError("issuer", 1, "must be a string, not integer")

    def test_client_id(self) -> None:
        self.assertOidcError("client_id", "", "must not be empty")
        self.assertOidcError("client_id", ["a"], "must be a string, not array")

    def test_client_secret_read(self) -> None:
        """
        The secret is the file's content without surrounding whitespace;
        the path is relative to the configuration file.
        """
        (self.dir / "sub").mkdir()
        (self.dir / "sub/secret").write_bytes(b"\n  p4ss word\t\r\n")
        oidc = self.parse_service(self.with_oidc(client_secret_file="sub/secret")).oidc
        assert oidc is not None
        self.assertEqual(oidc.client_secret_file, self.dir / "sub/secret")
        self.assertEqual(oidc.client_secret, "p4ss word")

    def test_client_secret_missing(self) -> None:
        self.assertOidcError(
            "client_secret_file",
            "nope",
            f"cannot read client secret file '{self.dir}/nope': No such file or directory",
        )

    def test_client_secret_unreadable(self) -> None:
        self.assertOidcError(
            "client_secret_file",
            "tls",
            f"cannot read client secret file '{self.dir}/tls': Is a directory",
        )
        self.assertOidcError(
            "client_secret_file",
            "oidc-secret/x",
            f"cannot read client secret file '{self.dir}/oidc-secret/x': Not a directory",
        )
        self.assertOidcError("client_secret_file", "a\0b", "must not contain a NUL character")

    def test_client_secret_empty(self) -> None:
        for content in [b"", b"\n", b"  \t\r\n\n"]:
            self.secret_path.write_bytes(content)
            self.assertOidcError(
                "client_secret_file", "oidc-secret", f"'{self.secret_path}' is empty"
            )

    def test_client_secret_not_utf8(self) -> None:
        self.secret_path.write_bytes(b"\xffsecret\n")
        self.assertOidcError(
            "client_secret_file", "oidc-secret", f"'{self.secret_path}' is not UTF-8 text"
        )

    def test_client_auth(self) -> None:
        for value in ["client_secret_basic", "client_secret_post"]:
            oidc = self.parse_service(self.with_oidc(client_auth=value)).oidc
            assert oidc is not None
            self.assertEqual(oidc.client_auth, value)
        for value in ["private_key_jwt", "none", "Client_Secret_Basic"]:
            self.assertOidcError(
                "client_auth",
                value,
                f"must be 'client_secret_basic' or 'client_secret_post', not {value!r}",
            )

    def test_callback_url(self) -> None:
        """
        The callback URL is an https URL with a path; its host is the login
        host.
        """
        oidc = self.parse_service(
            self.with_oidc(callback_url="https://Login.Example.com:8443/.appproxy/callback")
        ).oidc
        assert oidc is not None
        self.assertEqual(oidc.callback_url, "https://login.example.com:8443/.appproxy/callback")
        self.assertEqual(oidc.callback_host, "login.example.com:8443")
        self.assertEqual(oidc.callback_path, "/.appproxy/callback")
        for value in ["https://login.example.com", "https://login.example.com:8443"]:
            self.assertOidcError(
                "callback_url", value, f"{value!r} needs a path (for example /.appproxy/callback)"
            )
        self.assertOidcError(
            "callback_url",
            "http://login.example.com/.appproxy/callback",
            "'http://login.example.com/.appproxy/callback' is not an https URL",
        )
        self.assertOidcError(
            "callback_url",
            "https://login.example.com/cb?x=1",
            "'https://login.example.com/cb?x=1' must not have a query or fragment",
        )

    def test_scopes(self) -> None:
        oidc = self.parse_service(self.with_oidc(scopes=["email", "openid"])).oidc
        assert oidc is not None
        self.assertEqual(oidc.scopes, ("email", "openid"))
        self.assertOidcError("scopes", ["profile", "email"], "must include 'openid'")
        self.assertOidcError("scopes", [], "must include 'openid'")
        self.assertOidcError("scopes", "openid", "must be an array of strings, not string")
        self.assertServiceError(
            self.with_oidc(scopes=["openid", ""]), "oidc.scopes[1]", "must not be empty"
        )
        self.assertServiceError(
            self.with_oidc(scopes=["openid", 2]), "oidc.scopes[1]", "must be a string, not integer"
        )
        for scope in ["openid profile", 'a"b', "a\\b", "é"]:
            self.assertServiceError(
                self.with_oidc(scopes=["openid", scope]),
                "oidc.scopes[1]",
                f"{scope!r} is not a valid scope (printable ASCII, no spaces, quotes or"
                " backslashes)",
            )

    def test_algorithms(self) -> None:
        oidc = self.parse_service(self.with_oidc(algorithms=["ES512", "PS384"])).oidc
        assert oidc is not None
        self.assertEqual(oidc.algorithms, ("ES512", "PS384"))
        for algorithm in ["none", "HS256", "HS512", "rs256", "RS1", ""]:
            data = self.with_oidc(algorithms=["RS256", algorithm])
            if not algorithm:
                self.assertServiceError(data, "oidc.algorithms[1]", "must not be empty")
                continue
            self.assertServiceError(
                data,
                "oidc.algorithms[1]",
                f"{algorithm!r} is not allowed (asymmetric signatures only: {_ALGORITHMS_TEXT})",
            )
        self.assertOidcError("algorithms", [], "must name at least one algorithm")
        self.assertOidcError("algorithms", "RS256", "must be an array of strings, not string")

    def test_provider_ca(self) -> None:
        oidc = self.parse_service(self.with_oidc(provider_ca="ca.pem")).oidc
        assert oidc is not None
        self.assertEqual(oidc.provider_ca, self.dir / "ca.pem")
        self.assertEqual(oidc.provider_ca_pem, (self.dir / "ca.pem").read_bytes())
        self.assertOidcError(
            "provider_ca",
            "missing.pem",
            f"cannot read CA certificate file '{self.dir}/missing.pem': No such file or directory",
        )
        self.assertOidcError(
            "provider_ca", "ca.key", f"'{self.dir}/ca.key' does not contain a PEM certificate"
        )

    def test_provider_address(self) -> None:
        """
        provider_address is a host name or an address, with an optional
        port; IPv6 in brackets if there is a port.  It is kept as written.
        """
        for value in [
            "127.0.0.1",
            "127.0.0.1:8443",
            "idp.internal",
            "IdP.Internal:8443",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::10]:1",
            "::1",
            "2001:db8::10",
            "localhost:65535",
        ]:
            oidc = self.parse_service(self.with_oidc(provider_address=value)).oidc
            assert oidc is not None
            self.assertEqual(oidc.provider_address, value)

    def test_provider_address_invalid(self) -> None:
        for value in [
            "host:",
            "127.0.0.1:",
            "[::1]:",
            "[::1",
            "[::1]8443",
            "[::1]x",
            "[1.2.3.4]:80",
            "[idp.internal]:80",
            "[fe80::1%eth0]:80",
            "fe80::1%eth0",
            "host:0",
            "host:65536",
            "host:https",
            "host:-1",
            "host:8443:1",
            "ho st",
            "idp_internal",
            "-idp.internal",
            "https://idp.internal",
            ":8443",
        ]:
            self.assertOidcError(
                "provider_address",
                value,
                f"{value!r} is not a host name or address with an optional port"
                " (for example 127.0.0.1:8443)",
            )
        self.assertOidcError("provider_address", "", "must not be empty")

    def test_clock_skew(self) -> None:
        for value in [0, 600]:
            oidc = self.parse_service(self.with_oidc(clock_skew=value)).oidc
            assert oidc is not None
            self.assertEqual(oidc.clock_skew, value)
        for value in [-1, 601]:
            self.assertOidcError("clock_skew", value, f"must be from 0 to 600, not {value}")
        self.assertOidcError("clock_skew", 1.5, "must be an integer, not float")
        self.assertOidcError("clock_skew", True, "must be an integer, not boolean")

    def test_mfa_lists(self) -> None:
        oidc = self.parse_service(self.with_oidc(mfa_amr=["otp"], mfa_acr=["urn:x:mfa", "c2"])).oidc
        assert oidc is not None
        self.assertEqual(oidc.mfa, MfaRule(amr=("otp",), acr=("urn:x:mfa", "c2")))
        oidc = self.parse_service(self.with_oidc(mfa_amr=[])).oidc
        assert oidc is not None
        self.assertEqual(oidc.mfa, MfaRule(amr=(), acr=()))
        self.assertOidcError("mfa_amr", "mfa", "must be an array of strings, not string")
        self.assertOidcError("mfa_acr", {"a": 1}, "must be an array of strings, not table")
        self.assertServiceError(
            self.with_oidc(mfa_acr=[1]), "oidc.mfa_acr[0]", "must be a string, not integer"
        )
        self.assertServiceError(
            self.with_oidc(mfa_amr=["mfa", ""]), "oidc.mfa_amr[1]", "must not be empty"
        )

    def test_jwks_refetch_interval(self) -> None:
        for value in [0.5, 3600]:
            oidc = self.parse_service(self.with_oidc(jwks_refetch_interval=value)).oidc
            assert oidc is not None
            self.assertEqual(oidc.jwks_refetch_interval, float(value))
        for value in [0, -1, 3601]:
            self.assertOidcError(
                "jwks_refetch_interval",
                value,
                f"must be more than 0 and at most 3600, not {value}",
            )
        self.assertOidcError("jwks_refetch_interval", "30s", "must be a number, not string")

    def test_claims_and_step_up(self) -> None:
        oidc = self.parse_service(
            self.with_oidc(username_claim="upn", groups_claim="roles", step_up_acr_values="c1 c2")
        ).oidc
        assert oidc is not None
        self.assertEqual(
            (oidc.username_claim, oidc.groups_claim, oidc.step_up_acr_values),
            ("upn", "roles", "c1 c2"),
        )
        for key in ("username_claim", "groups_claim", "step_up_acr_values"):
            self.assertOidcError(key, "", "must not be empty")
            self.assertOidcError(key, ["x"], "must be a string, not array")


class BuiltinProviderConfigTests(SignInTestCase):
    def test_defaults(self) -> None:
        """
        The users file defaults to users.json in the state directory.
        """
        config = self.parse_service(self.with_builtin())
        self.assertEqual(
            config.builtin_provider,
            BuiltinProviderConfig(
                issuer="https://login.example.com",
                users_file=self.dir / "state/users.json",
                device_client_id="appproxy-connector",
            ),
        )
        assert config.builtin_provider is not None
        self.assertEqual(config.builtin_provider.host, "login.example.com")
        # The callback and the provider share the login host.
        self.assertEqual(config.login_hosts, {"login.example.com"})

    def test_users_file(self) -> None:
        """
        A relative users_file is relative to the state directory, not to the
        configuration file.
        """
        for value, expected in [
            ("idp/users.json", self.dir / "state/idp/users.json"),
            ("/etc/appproxy/users.json", Path("/etc/appproxy/users.json")),
        ]:
            builtin = self.parse_service(self.with_builtin(users_file=value)).builtin_provider
            assert builtin is not None
            self.assertEqual(builtin.users_file, expected)
        absolute_state = self.with_builtin()
        absolute_state["service"]["state_dir"] = "/var/lib/appproxy"
        builtin = self.parse_service(absolute_state).builtin_provider
        assert builtin is not None
        self.assertEqual(builtin.users_file, Path("/var/lib/appproxy/users.json"))
        self.assertServiceError(
            self.with_builtin(users_file="a\0b"),
            "builtin_provider.users_file",
            "must not contain a NUL character",
        )
        self.assertServiceError(
            self.with_builtin(users_file=""), "builtin_provider.users_file", "must not be empty"
        )

    def test_issuer_host_only(self) -> None:
        for value, expected in [
            ("https://Login.Example.com/", "https://login.example.com"),
            ("https://login.example.com:443", "https://login.example.com"),
            ("https://login.example.com:8443/", "https://login.example.com:8443"),
        ]:
            builtin = self.parse_service(self.with_builtin(issuer=value)).builtin_provider
            assert builtin is not None
            self.assertEqual(builtin.issuer, expected)
        for value in ["https://login.example.com/idp", "https://login.example.com/idp/"]:
            self.assertServiceError(
                self.with_builtin(issuer=value),
                "builtin_provider.issuer",
                "must be a host name only (https://login.example.com), no path",
            )
        self.assertServiceError(
            self.with_builtin(issuer="http://login.example.com"),
            "builtin_provider.issuer",
            "'http://login.example.com' is not an https URL",
        )
        self.assertServiceError(
            self.with_builtin(issuer="https://login.example.com/?x"),
            "builtin_provider.issuer",
            "'https://login.example.com/?x' must not have a query or fragment",
        )

    def test_required_issuer(self) -> None:
        data = self.with_builtin()
        del data["builtin_provider"]["issuer"]
        self.assertServiceError(data, "builtin_provider.issuer", "is required")

    def test_device_client_id(self) -> None:
        builtin = self.parse_service(self.with_builtin(device_client_id="conn")).builtin_provider
        assert builtin is not None
        self.assertEqual(builtin.device_client_id, "conn")
        self.assertServiceError(
            self.with_builtin(device_client_id=""),
            "builtin_provider.device_client_id",
            "must not be empty",
        )
        for value, shown in [
            ("my connector", "'my connector'"),
            ("urn:x", "'urn:x'"),
            ("é", "'é'"),
            ("x" * 256, f"'{'x' * 200}'..."),
        ]:
            self.assertServiceError(
                self.with_builtin(device_client_id=value),
                "builtin_provider.device_client_id",
                f"{shown} is not a valid client id (1 to 255 printable ASCII characters,"
                " no spaces or ':')",
            )

    def own_provider(self, **oidc: Any) -> dict[str, Any]:
        """[oidc] signing in with [builtin_provider] on the login host."""
        data = self.with_builtin()
        data["oidc"].update({"issuer": "https://login.example.com", **oidc})
        return data

    def test_own_provider(self) -> None:
        """
        appproxy may sign in with its own provider (as appproxy init sets
        up); a trailing '/' on the [oidc] issuer does not matter.
        """
        for issuer in ["https://login.example.com", "https://login.example.com/"]:
            config = self.parse_service(self.own_provider(issuer=issuer))
            assert config.oidc is not None and config.builtin_provider is not None
            self.assertEqual(config.oidc.issuer, issuer)
            self.assertEqual(config.login_hosts, {"login.example.com"})

    def test_own_provider_client_secret(self) -> None:
        """
        The built-in provider wants a client secret of 16 characters or more.
        """
        self.secret_path.write_text("0123456789abcdef\n")
        self.parse_service(self.own_provider())
        self.secret_path.write_text("0123456789abcde\n")
        self.assertServiceError(
            self.own_provider(),
            "oidc.client_secret_file",
            "the built-in provider needs a client secret of at least 16 characters",
        )
        # Another provider decides for itself.
        self.parse_service(self.with_builtin())

    def test_own_provider_client_id(self) -> None:
        self.assertServiceError(
            self.own_provider(client_id="appproxy-connector"),
            "oidc.client_id",
            "'appproxy-connector' is also builtin_provider.device_client_id:"
            " the two clients need different ids",
        )
        self.assertServiceError(
            self.own_provider(client_id="app proxy"),
            "oidc.client_id",
            "'app proxy' is not a valid client id (1 to 255 printable ASCII characters,"
            " no spaces or ':')",
        )
        # Another provider's client ids are its business.
        data = self.with_builtin()
        data["oidc"]["client_id"] = "appproxy-connector"
        self.parse_service(data)
        data["oidc"]["client_id"] = "app proxy"
        self.parse_service(data)

    def test_unknown_key(self) -> None:
        self.assertServiceError(
            self.with_builtin(user_file="u.json"),
            "builtin_provider.user_file",
            "unknown key (did you mean 'users_file'?)",
        )

    def test_needs_oidc(self) -> None:
        """
        The built-in provider only runs for sign-in: without [oidc] it is
        refused rather than silently ignored.
        """
        data = self.service_data()
        data["builtin_provider"] = {"issuer": "https://login.example.com"}
        self.assertServiceError(
            data,
            "builtin_provider",
            "needs an [oidc] table whose issuer is the built-in provider's"
            " ('https://login.example.com')",
        )


class RiskConfigTests(SignInTestCase):
    def test_values(self) -> None:
        (self.dir / "tor.txt").write_text("192.0.2.1\n")
        risk = self.parse_service(
            self.signin_data(
                risk={
                    "failed_sign_in_limit": 1000,
                    "failed_sign_in_window": 1.5,
                    "anonymizers": "tor.txt",
                }
            )
        ).risk
        self.assertEqual(
            risk,
            RiskConfig(
                failed_sign_in_limit=1000,
                failed_sign_in_window=1.5,
                anonymizers=self.dir / "tor.txt",
            ),
        )

    def test_limit(self) -> None:
        for value in [0, 1001]:
            self.assertServiceError(
                self.signin_data(risk={"failed_sign_in_limit": value}),
                "risk.failed_sign_in_limit",
                f"must be from 1 to 1000, not {value}",
            )

    def test_window(self) -> None:
        for value in [0, -5, 86401]:
            self.assertServiceError(
                self.signin_data(risk={"failed_sign_in_window": value}),
                "risk.failed_sign_in_window",
                f"must be more than 0 and at most 86400, not {value}",
            )
        for value in [0.5, 0.999]:
            self.assertServiceError(
                self.signin_data(risk={"failed_sign_in_window": value}),
                "risk.failed_sign_in_window",
                f"must be at least 1 and at most 86400, not {value}",
            )
        self.assertServiceError(
            self.signin_data(risk={"failed_sign_in_window": "10m"}),
            "risk.failed_sign_in_window",
            "must be a number, not string",
        )

    def test_anonymizers(self) -> None:
        for value in ["missing.txt", "tls"]:
            self.assertServiceError(
                self.signin_data(risk={"anonymizers": value}),
                "risk.anonymizers",
                f"'{self.dir / value}' is not a readable file",
            )

    def test_not_a_table(self) -> None:
        self.assertServiceError(self.signin_data(risk=[{}]), "risk", "must be a table, not array")

    def test_unknown_key(self) -> None:
        self.assertServiceError(
            self.signin_data(risk={"failed_sign_in_limt": 3}),
            "risk.failed_sign_in_limt",
            "unknown key (did you mean 'failed_sign_in_limit'?)",
        )


class LocationConfigTests(SignInTestCase):
    def test_networks(self) -> None:
        """
        Addresses become single-address networks; host bits are dropped.
        """
        (office,) = self.parse_service(
            self.signin_data(
                locations=[
                    {"name": "office", "networks": ["10.1.2.3/8", "192.0.2.9", "2001:DB8::1/32"]}
                ]
            )
        ).locations
        self.assertEqual(
            office,
            NamedLocation(
                name="office",
                networks=(
                    ipaddress.ip_network("10.0.0.0/8"),
                    ipaddress.ip_network("192.0.2.9/32"),
                    ipaddress.ip_network("2001:db8::/32"),
                ),
            ),
        )

    def test_duplicate_names(self) -> None:
        location = {"name": "office", "networks": ["10.0.0.0/8"]}
        self.assertServiceError(
            self.signin_data(locations=[location, location]),
            "locations[1].name",
            "'office' is already used by another location",
        )

    def test_bad_network(self) -> None:
        for value in ["10.0.0.0/33", "office", "10.0.0.256", "2001:db8::/129", "10.0.0.0/8 "]:
            self.assertServiceError(
                self.signin_data(locations=[{"name": "o", "networks": ["10.0.0.0/8", value]}]),
                "locations[0].networks[1]",
                f"{value!r} is not an IP address or network (for example 10.0.0.0/8)",
            )

    def test_no_networks(self) -> None:
        for location in [{"name": "o", "networks": []}, {"name": "o"}]:
            self.assertServiceError(
                self.signin_data(locations=[location]),
                "locations[0].networks",
                "must list at least one network (for example 10.0.0.0/8)",
            )

    def test_name(self) -> None:
        self.assertServiceError(
            self.signin_data(locations=[{"networks": ["10.0.0.0/8"]}]),
            "locations[0].name",
            "is required",
        )
        self.assertServiceError(
            self.signin_data(locations=[{"name": "head office", "networks": ["10.0.0.0/8"]}]),
            "locations[0].name",
            "'head office' is not a valid name (1 to 64 letters, digits, '-' or '_')",
        )

    def test_shape(self) -> None:
        self.assertServiceError(
            self.signin_data(locations={"name": "o"}),
            "locations",
            "must be an array of tables, not table",
        )
        self.assertServiceError(
            self.signin_data(locations=[{"name": "o", "networks": ["10.0.0.0/8"], "cidr": "x"}]),
            "locations[0].cidr",
            "unknown key",
        )


class PolicyConfigTests(SignInTestCase):
    def test_defaults(self) -> None:
        """
        A policy covers every app, user and location unless it says
        otherwise.
        """
        (policy,) = self.parse_service(self.with_policy()).policies
        self.assertEqual(policy, Policy(name="p", grant="block"))
        self.assertEqual(policy.apps, ("*",))
        self.assertEqual(policy.locations, ("*",))
        self.assertEqual(
            (policy.users, policy.groups, policy.exclude_users, policy.exclude_groups),
            ((), (), (), ()),
        )
        self.assertEqual(
            (policy.exclude_apps, policy.exclude_locations, policy.risks), ((), (), ())
        )
        self.assertIsNone(policy.sign_in_frequency)

    def test_sign_in_frequency_only(self) -> None:
        """
        A policy may set only sign_in_frequency (a session control).
        """
        (policy,) = self.parse_service(self._without_grant(sign_in_frequency=60)).policies
        self.assertEqual((policy.grant, policy.sign_in_frequency), (None, 60))
        (policy,) = self.parse_service(
            self.with_policy(grant="mfa", sign_in_frequency=90 * 24 * 3600)
        ).policies
        self.assertEqual((policy.grant, policy.sign_in_frequency), ("mfa", 7776000))

    def _without_grant(self, **changes: Any) -> dict[str, Any]:
        data = self.with_policy(**changes)
        del data["policies"][0]["grant"]
        return data

    def test_grant_required(self) -> None:
        self.assertServiceError(
            self._without_grant(),
            "policies[0].grant",
            "is required ('block' or 'mfa'), unless sign_in_frequency is set",
        )

    def test_bad_grant(self) -> None:
        for value in ["allow", "MFA", "require-mfa"]:
            self.assertServiceError(
                self.with_policy(grant=value),
                "policies[0].grant",
                f"must be 'block' or 'mfa', not {value!r}",
            )
        self.assertServiceError(
            self.with_policy(grant=["block"]), "policies[0].grant", "must be a string, not array"
        )

    def test_sign_in_frequency_range(self) -> None:
        for value in [0, 59, 90 * 24 * 3600 + 1]:
            self.assertServiceError(
                self.with_policy(sign_in_frequency=value),
                "policies[0].sign_in_frequency",
                f"must be from 60 to 7776000, not {value}",
            )
        self.assertServiceError(
            self.with_policy(sign_in_frequency="1h"),
            "policies[0].sign_in_frequency",
            "must be an integer, not string",
        )

    def test_unknown_app(self) -> None:
        for key in ("apps", "exclude_apps"):
            self.assertServiceError(
                self.with_policy(**{key: ["wiki", "nope"]}),
                f"policies[0].{key}[1]",
                "there is no app named 'nope' (use '*' for every app)",
            )
        (policy,) = self.parse_service(self.with_policy(apps=["*"], exclude_apps=["wiki"])).policies
        self.assertEqual((policy.apps, policy.exclude_apps), (("*",), ("wiki",)))

    def test_app_names_exact(self) -> None:
        """
        App names in policies are compared exactly, as in [[apps]].
        """
        self.assertServiceError(
            self.with_policy(apps=["Wiki"]),
            "policies[0].apps[0]",
            "there is no app named 'Wiki' (use '*' for every app)",
        )

    def test_unknown_location(self) -> None:
        for key in ("locations", "exclude_locations"):
            self.assertServiceError(
                self.with_policy(**{key: ["office", "home"]}),
                f"policies[0].{key}",
                "there is no [[locations]] entry named 'home' (use '*' for anywhere)",
            )
        (policy,) = self.parse_service(
            self.with_policy(locations=["*"], exclude_locations=["office"])
        ).policies
        self.assertEqual(policy.exclude_locations, ("office",))

    def test_unknown_risk(self) -> None:
        for value in ["tor", "anonymiser", "Failed-Sign-Ins"]:
            self.assertServiceError(
                self.with_policy(risks=["anonymizer", value]),
                "policies[0].risks[1]",
                f"must be 'failed-sign-ins' or 'anonymizer', not {value!r}",
            )

    def test_duplicate_names(self) -> None:
        data = self.with_policy()
        data["policies"].append({"name": "p", "grant": "mfa"})
        self.assertServiceError(data, "policies[1].name", "'p' is already used by another policy")

    def test_lists(self) -> None:
        for key in ("users", "groups", "exclude_users", "exclude_groups"):
            self.assertServiceError(
                self.with_policy(**{key: "alice"}),
                f"policies[0].{key}",
                "must be an array of strings, not string",
            )
            self.assertServiceError(
                self.with_policy(**{key: ["alice", ""]}),
                f"policies[0].{key}[1]",
                "must not be empty",
            )

    def test_name(self) -> None:
        self.assertServiceError(
            self.signin_data(policies=[{"grant": "block"}]), "policies[0].name", "is required"
        )

    def test_unknown_key(self) -> None:
        self.assertServiceError(
            self.with_policy(grants="mfa"),
            "policies[0].grants",
            "unknown key (did you mean 'grant'?)",
        )


class AppSignInConfigTests(SignInTestCase):
    def test_assignment(self) -> None:
        (app,) = self.parse_service(
            self.with_signin_app(allowed_users=["alice", "*"], allowed_groups=["g1", "G1"])
        ).apps
        self.assertEqual(app.assignment, Assignment(users=("alice", "*"), groups=("g1", "G1")))
        for key in ("allowed_users", "allowed_groups"):
            self.assertAppError(key, {key: "alice"}, "must be an array of strings, not string")
            self.assertServiceError(
                self.with_signin_app(**{key: [""]}), f"apps[0].{key}[0]", "must not be empty"
            )

    def test_session_lifetime(self) -> None:
        for value in [60, 30 * 24 * 3600]:
            (app,) = self.parse_service(self.with_signin_app(session_lifetime=value)).apps
            self.assertEqual(app.session_lifetime, value)
        for value in [59, 0, 30 * 24 * 3600 + 1]:
            self.assertAppError(
                "session_lifetime",
                {"session_lifetime": value},
                f"must be from 60 to 2592000, not {value}",
            )
        self.assertAppError(
            "session_lifetime", {"session_lifetime": 3600.0}, "must be an integer, not float"
        )

    def test_cookie_flags(self) -> None:
        (app,) = self.parse_service(
            self.with_signin_app(persistent_cookie=True, http_only_cookie=False, jwt_assertion=True)
        ).apps
        self.assertEqual(
            (app.persistent_cookie, app.http_only_cookie, app.jwt_assertion), (True, False, True)
        )
        for key in ("persistent_cookie", "http_only_cookie", "jwt_assertion"):
            self.assertAppError(key, {key: "true"}, "must be true or false, not string")
            self.assertAppError(key, {key: 1}, "must be true or false, not integer")

    def test_headers(self) -> None:
        """
        Identity headers are kept as written, in file order.
        """
        headers = {
            "X-Remote-User": "preferred_username",
            "remote_groups": "groups",
            "X-Remote-Email": "email",
            "X-Dept": "extension_department",
            "X.Odd!Token": "sub",
        }
        (app,) = self.parse_service(self.with_signin_app(headers=headers)).apps
        self.assertEqual(app.headers, tuple(headers.items()))

    def test_headers_not_a_table(self) -> None:
        self.assertAppError(
            "headers",
            {"headers": [["X-Remote-User", "sub"]]},
            "must be a table of header = claim, not array",
        )
        self.assertAppError(
            "headers", {"headers": "X-Remote-User"}, "must be a table of header = claim, not string"
        )

    def test_bad_header_name(self) -> None:
        """
        A header name is an HTTP token of at most 64 characters; the key in
        the message is written as in TOML.
        """
        for name, key in [
            ("X Remote", '"X Remote"'),
            ("X-Remote:User", '"X-Remote:User"'),
            ("X-Rémote", '"X-Rémote"'),
            ("", '""'),
            ("X" * 65, "X" * 65),
            ("X\nY", '"X\\u000AY"'),
        ]:
            self.assertServiceError(
                self.with_signin_app(headers={name: "sub"}),
                f"apps[0].headers.{key}",
                "is not a valid header name (letters, digits and '-')",
            )

    def test_reserved_header(self) -> None:
        for name in [
            "Host",
            "cookie",
            "COOKIE",
            "Content-Length",
            "Transfer_Encoding",
            "Connection",
            "Upgrade",
            "TE",
            "Proxy-Authorization",
            "X-Forwarded-For",
            "x_forwarded_for",
            "X-Forwarded-Host",
            "X-Forwarded-Proto",
            "X-Request-Id",
            "Forwarded",
            "X-AppProxy-User",
            "x_appproxy_jwt_assertion",
            "X-APPPROXY-JWT-ASSERTION",
        ]:
            self.assertServiceError(
                self.with_signin_app(headers={name: "sub"}),
                f"apps[0].headers.{name}",
                "is set by appproxy itself and cannot carry a claim",
            )

    def test_same_header_twice(self) -> None:
        """
        Header names that differ only in case, or in '-' against '_', are
        the same header (CGI back ends see X_Remote_User as X-Remote-User).
        """
        for first, second in [
            ("X-Remote-User", "x-remote-user"),
            ("X-Remote-User", "X_Remote_User"),
            ("x_remote-user", "X-REMOTE_USER"),
        ]:
            self.assertServiceError(
                self.with_signin_app(headers={first: "sub", second: "email"}),
                f"apps[0].headers.{second}",
                f"is the same header as {first!r}",
            )

    def test_claim_not_a_string(self) -> None:
        for claim, kind in [(1, "integer"), (["sub"], "array"), (True, "boolean"), ({}, "table")]:
            self.assertServiceError(
                self.with_signin_app(headers={"X-Remote-User": claim}),
                "apps[0].headers.X-Remote-User",
                f"must be a claim name (a string), not {kind}",
            )
        self.assertServiceError(
            self.with_signin_app(headers={"X-Remote-User": ""}),
            "apps[0].headers.X-Remote-User",
            "must not be empty",
        )

    def test_passthrough_refuses_user_keys(self) -> None:
        """
        A passthrough app has no signed-in user: keys that need one are
        refused; their empty or false values are harmless.
        """
        for key, value in [
            ("allowed_users", ["alice"]),
            ("allowed_groups", ["staff"]),
            ("jwt_assertion", True),
        ]:
            self.assertServiceError(
                self.with_app(**{key: value}),
                f"apps[0].{key}",
                "needs sign-in: a passthrough app has no signed-in user",
            )
        (app,) = self.parse_service(
            self.with_app(allowed_users=[], allowed_groups=[], jwt_assertion=False)
        ).apps
        self.assertEqual((app.assignment, app.jwt_assertion), (Assignment(), False))

    def test_passthrough_headers_kept(self) -> None:
        """
        A passthrough app may list identity headers: they are never filled
        in, but the proxy still strips clients' copies of them.
        """
        (app,) = self.parse_service(self.with_app(headers={"X-Remote-User": "sub"})).apps
        self.assertEqual(app.headers, (("X-Remote-User", "sub"),))


class SignInCrossCheckTests(SignInTestCase):
    def test_app_without_oidc(self) -> None:
        """
        The first app that signs in, when there is no [oidc] table, is named.
        """
        data = self.service_data()
        data["apps"].append(
            self.app_data(
                name="crm", external_url="https://crm.example.com/", pre_authentication="oidc"
            )
        )
        self.assertServiceError(
            data,
            "apps[1].pre_authentication",
            "app 'crm' requires sign-in ('oidc', the default) but there is no [oidc] table:"
            " add one, or set pre_authentication = 'passthrough'",
        )

    def test_callback_on_app_host(self) -> None:
        for callback in [
            "https://wiki.example.com/.appproxy/callback",
            "https://WIKI.example.com:443/cb",
        ]:
            self.assertServiceError(
                self.with_oidc(callback_url=callback),
                "oidc.callback_url",
                "its host 'wiki.example.com' is the host of app 'wiki': use a host of its own"
                " (login.DOMAIN)",
            )
        # Another port is another host.
        config = self.parse_service(
            self.with_oidc(callback_url="https://wiki.example.com:8443/.appproxy/callback")
        )
        self.assertEqual(config.login_hosts, {"wiki.example.com:8443"})

    def test_callback_on_passthrough_app_host(self) -> None:
        data = self.with_oidc(callback_url="https://status.example.com/.appproxy/callback")
        data["apps"].append(
            self.app_data(name="status", external_url="https://status.example.com/sub/")
        )
        self.assertServiceError(
            data,
            "oidc.callback_url",
            "its host 'status.example.com' is the host of app 'status': use a host of its own"
            " (login.DOMAIN)",
        )

    def test_builtin_issuer_on_app_host(self) -> None:
        self.assertServiceError(
            self.with_builtin(issuer="https://Wiki.Example.com"),
            "builtin_provider.issuer",
            "its host 'wiki.example.com' is the host of app 'wiki': use a host of its own"
            " (login.DOMAIN)",
        )

    def test_builtin_on_its_own_host(self) -> None:
        config = self.parse_service(self.with_builtin(issuer="https://idp.example.com"))
        self.assertEqual(config.login_hosts, {"login.example.com", "idp.example.com"})


class TrustedProxiesTests(SignInTestCase):
    def test_networks(self) -> None:
        config = self.parse_service(
            self.with_service(trusted_proxies=["127.0.0.1", "::1", "10.0.0.0/8", "fd00::1/8"])
        )
        self.assertEqual(
            config.trusted_proxies,
            (
                ipaddress.ip_network("127.0.0.1/32"),
                ipaddress.ip_network("::1/128"),
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("fd00::/8"),
            ),
        )

    def test_invalid(self) -> None:
        self.assertServiceError(
            self.with_service(trusted_proxies=["10.0.0.0/8", "proxy.internal"]),
            "service.trusted_proxies[1]",
            "'proxy.internal' is not an IP address or network (for example 10.0.0.0/8)",
        )
        self.assertServiceError(
            self.with_service(trusted_proxies="10.0.0.0/8"),
            "service.trusted_proxies",
            "must be an array of strings, not string",
        )
        self.assertServiceError(
            self.with_service(trusted_proxies=[""]),
            "service.trusted_proxies[0]",
            "must not be empty",
        )


class SignInUnknownKeyTests(SignInTestCase):
    def test_everywhere(self) -> None:
        data = self.with_policy()
        data["builtin_provider"] = {"issuer": "https://login.example.com"}
        data["risk"] = {}
        for where, key, problem in [
            (["oidc", "issuer_url"], "oidc.issuer_url", "unknown key (did you mean 'issuer'?)"),
            (["builtin_provider", "x"], "builtin_provider.x", "unknown key"),
            (
                ["risk", "anonymisers"],
                "risk.anonymisers",
                "unknown key (did you mean 'anonymizers'?)",
            ),
            (
                ["locations", 0, "network"],
                "locations[0].network",
                "unknown key (did you mean 'networks'?)",
            ),
            (["policies", 0, "app"], "policies[0].app", "unknown key (did you mean 'apps'?)"),
            (["apps", 0, "header"], "apps[0].header", "unknown key (did you mean 'headers'?)"),
            (["oidcc"], "oidcc", "unknown key (did you mean 'oidc'?)"),
        ]:
            broken = copy.deepcopy(data)
            target: Any = broken
            for step in where[:-1]:
                target = target[step]
            target[where[-1]] = 1
            self.assertServiceError(broken, key, problem)


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
        key=st.text(max_size=20).filter(lambda k: k not in KNOWN_KEYS),
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


_HEADER_WORD = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,7}", fullmatch=True)
_RESERVED_HEADER_NAMES = (
    "host",
    "cookie",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
    "forwarded",
)


def _normal(header: str) -> str:
    return header.lower().replace("_", "-")


def _is_reserved(header: str) -> bool:
    normal = _normal(header)
    return normal in _RESERVED_HEADER_NAMES or normal.startswith("x-appproxy-")


@st.composite
def _spelling(draw: st.DrawFn, words: list[str]) -> str:
    """C{words} joined with '-' or '_', each letter in either case."""
    count = len(words) - 1
    separators = draw(st.lists(st.sampled_from("-_"), min_size=count, max_size=count))
    text = words[0] + "".join(sep + word for sep, word in zip(separators, words[1:], strict=True))
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(
        char.swapcase() if flip else char for char, flip in zip(text, flips, strict=True)
    )


@st.composite
def _same_header_twice(draw: st.DrawFn) -> tuple[str, str]:
    """Two different spellings of one header name."""
    words = draw(st.lists(_HEADER_WORD, min_size=1, max_size=4))
    first = draw(_spelling(words))
    second = draw(_spelling(words).filter(lambda spelling: spelling != first))
    return first, second


@st.composite
def _reserved_spellings(draw: st.DrawFn) -> str:
    """A reserved header name, or an X-AppProxy-* name, spelled any way."""
    name = draw(
        st.sampled_from(_RESERVED_HEADER_NAMES)
        | _HEADER_WORD.map(lambda word: f"x-appproxy-{word}")
    )
    return draw(_spelling(name.split("-")))


class HeaderPropertyTests(SignInTestCase):
    @given(names=_same_header_twice(), position=st.integers(0, 2))
    def test_same_header_refused(self, names: tuple[str, str], position: int) -> None:
        """
        Two spellings of one header name (case, '-' or '_') in one app's
        [apps.headers] are refused, naming the second and the first.
        """
        first, second = names
        assume(not _is_reserved(first))
        others = [(f"X-Other-{i}", "sub") for i in range(position)]
        headers = dict([*others, (first, "email"), (second, "name")])
        self.assertServiceError(
            self.with_signin_app(headers=headers),
            f"apps[0].headers.{second}",
            f"is the same header as {first!r}",
        )

    @given(name=_reserved_spellings())
    def test_reserved_refused(self, name: str) -> None:
        """
        A header appproxy sets or strips itself is refused in any spelling.
        """
        self.assertServiceError(
            self.with_signin_app(headers={name: "sub"}),
            f"apps[0].headers.{name}",
            "is set by appproxy itself and cannot carry a claim",
        )

    @given(
        headers=st.lists(
            st.tuples(
                st.lists(_HEADER_WORD, min_size=1, max_size=3).flatmap(_spelling),
                st.text(min_size=1, max_size=20),
            ),
            max_size=6,
            unique_by=lambda pair: _normal(pair[0]),
        )
    )
    def test_distinct_headers_kept(self, headers: list[tuple[str, str]]) -> None:
        """
        Distinct header names map to any claim names, kept as written and in
        order.
        """
        assume(not any(_is_reserved(name) for name, _ in headers))
        (app,) = self.parse_service(self.with_signin_app(headers=dict(headers))).apps
        self.assertEqual(app.headers, tuple(headers))
