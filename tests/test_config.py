"""
Tests for L{appproxy.config}.

Most checks are rows of tables: a L{Bad} row changes one key of a valid
configuration and names the one-line L{ConfigError} it must give; a L{Good}
row changes one key and names the value the configuration must then hold.
A failing row is named in the failure message by its place in its table.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appproxy.access.policy import DEFAULT_MFA_AMR, Assignment, MfaRule, NamedLocation, Policy
from appproxy.config import (
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

APP_KEYS = set(
    "name external_url internal_url connector_group pre_authentication translate_urls_in_headers"
    " backend_timeout verify_backend_tls backend_ca allowed_users allowed_groups session_lifetime"
    " persistent_cookie http_only_cookie jwt_assertion headers".split()
)

#: Every key the service file knows, at any level.
KNOWN_KEYS = APP_KEYS | set(
    "service tunnel apps oidc builtin_provider risk locations policies listen state_dir"
    " queue_timeout log_format certificates trusted_proxies cert key connector_ca".split()
)


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


# The tables' rows, and how a row changes a configuration.


class Bad(NamedTuple):
    """
    Set C{path} (a key as L{ConfigError} names it) to C{value}, or remove it
    if C{value} is L{DELETE}; expect C{problem} at C{key} (by default
    C{path}).  In C{problem}, C{{dir}} stands for the test's directory.
    """

    path: str
    value: object
    problem: str
    key: str | None = None


class Good(NamedTuple):
    """
    Set C{path} to C{value}; expect C{expected} at C{attribute} of the
    parsed configuration (by default C{path}).
    """

    path: str
    value: object
    expected: object
    attribute: str | None = None


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


#: A L{Bad} value: remove the key.
DELETE = _Delete()


class Starts(str):
    """An expected problem given by its beginning."""


class Contains(str):
    """An expected problem given by a part of it."""


class Ends(str):
    """An expected problem given by its end."""


_MATCHES: dict[type, Callable[[str, str], bool]] = {
    Starts: str.startswith,
    Contains: str.__contains__,
    Ends: str.endswith,
}

_STEP = re.compile(r'\[([0-9]+)\]|"((?:[^"\\]|\\.)*)"|([^.\["]+)')


def steps(path: str) -> list[str | int]:
    """C{'apps[0].headers."X Y"'} -> C{["apps", 0, "headers", "X Y"]}."""
    result: list[str | int] = []
    for match in _STEP.finditer(path):
        index, quoted, bare = match.groups()
        if index is not None:
            result.append(int(index))
        else:
            result.append(json.loads(f'"{quoted}"') if quoted is not None else bare)
    return result


def change(data: dict[str, Any], path: str, value: object) -> None:
    """Set or remove the value at C{path}, making missing tables (and appending to arrays)."""
    *parents, last = steps(path)
    target: Any = data
    for step in parents:
        target = target[step] if isinstance(step, int) else target.setdefault(step, {})
    if value is DELETE:
        del target[last]
    elif isinstance(last, int) and last == len(target):
        target.append(copy.deepcopy(value))
    else:
        target[last] = copy.deepcopy(value)


def changed(
    base: Callable[[], dict[str, Any]], path: str, value: object
) -> Callable[[], dict[str, Any]]:
    """C{base} with one more L{change}."""

    def data() -> dict[str, Any]:
        result = base()
        change(result, path, value)
        return result

    return data


def lookup(config: object, path: str) -> object:
    """The value at C{path} (as in L{change}) of a parsed configuration."""
    value: Any = config
    for step in steps(path):
        value = value[step] if isinstance(step, int) else getattr(value, step)
    return value


APP = {
    "name": "wiki",
    "external_url": "https://wiki.example.com/",
    "internal_url": "http://10.1.2.3:8080/wiki/",
    "connector_group": "default",
    "pre_authentication": "passthrough",
}


def app(**changes: Any) -> dict[str, Any]:
    """The passthrough app of L{ConfigTestCase.service_data}, changed."""
    return {**APP, **changes}


def _label(index: int, row: Bad | Good) -> str:
    """How a failure names a row: its place in its table, its change."""
    try:
        shown = repr(row.value)
    except ValueError:  # An integer too long to print.
        shown = "a very large number"
    return f"row {index} ({row.path} = {shown:.60})"


NO_OIDC = (
    "app {!r} requires sign-in ('oidc', the default) but there is no [oidc] table:"
    " add one, or set pre_authentication = 'passthrough'"
)


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
            "apps": [app()],
        }

    def connector_data(self) -> dict[str, Any]:
        return {
            "connector": {
                "service_host": "tunnel.example.com",
                "ca": "ca.pem",
                "cert": "connector.pem",
                "key": "connector.key",
            }
        }

    def with_app(self, **changes: Any) -> dict[str, Any]:
        data = self.service_data()
        data["apps"] = [app(**changes)]
        return data

    def certificate_files(self, stem: str) -> CertificateFiles:
        """The L{CertificateFiles} of C{stem}.pem and C{stem}.key."""
        cert, key = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        return CertificateFiles(
            cert=cert, key=key, cert_pem=cert.read_bytes(), key_pem=key.read_bytes()
        )

    def parse_service(self, data: dict[str, Any]) -> ServiceConfig:
        return parse_service_config(data, self.service_path)

    def parse(self, data: dict[str, Any]) -> ServiceConfig | ConnectorConfig:
        """A service's configuration, or a connector's if C{data} has a [connector] table."""
        if "connector" in data:
            return parse_connector_config(data, self.connector_path)
        return parse_service_config(data, self.service_path)

    def error(
        self, data: dict[str, Any], label: str = "", *, connector: bool = False
    ) -> ConfigError:
        """The L{ConfigError} for C{data}, checked to name its file and be one line."""
        path = self.connector_path if connector else self.service_path
        try:
            (parse_connector_config if connector else parse_service_config)(data, path)
        except ConfigError as error:
            self.assertEqual(error.file, str(path), label)
            self.assertTrue(str(error).isprintable(), f"{label}: {error}")
            return error
        raise self.failureException(f"{label}: no ConfigError")

    def assertServiceError(self, data: dict[str, Any], key: str, problem: str) -> None:
        error = self.error(data)
        self.assertEqual((error.key, error.problem), (key, problem))

    def assertBad(
        self, rows: Iterable[Bad], base: Callable[[], dict[str, Any]] | None = None
    ) -> list[ConfigError]:
        """
        Each row, applied to C{base()} (by default L{service_data}), gives
        its error.  Returns the errors.
        """
        errors = []
        for index, row in enumerate(rows):
            label = _label(index, row)
            data = (base or self.service_data)()
            connector = "connector" in data
            change(data, row.path, row.value)
            error = self.error(data, label, connector=connector)
            self.assertEqual(error.key, row.path if row.key is None else row.key, label)
            expected = row.problem.replace("{dir}", str(self.dir))
            match = _MATCHES.get(type(row.problem))
            if match is None:
                self.assertEqual(error.problem, expected, label)
            else:
                self.assertTrue(
                    match(error.problem, expected),
                    f"{label}: {error.problem!r} ~ {type(row.problem).__name__}({expected!r})",
                )
            errors.append(error)
        return errors

    def assertGood(
        self, rows: Iterable[Good], base: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        """Each row, applied to C{base()} (by default L{service_data}), gives its value."""
        for index, row in enumerate(rows):
            label = _label(index, row)
            data = (base or self.service_data)()
            change(data, row.path, row.value)
            try:
                config = self.parse(data)
            except ConfigError as error:
                raise self.failureException(f"{label}: {error}") from None
            self.assertEqual(lookup(config, row.attribute or row.path), row.expected, label)


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
            (self.certificate_files("tls/wildcard"), self.certificate_files("tls/other")),
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

    def test_integer_number(self) -> None:
        """
        An integer is accepted where a number of seconds is expected.
        """
        data = self.service_data()
        data["service"]["queue_timeout"] = 3600
        timeout = self.parse_service(data).queue_timeout
        self.assertEqual(timeout, 3600.0)
        self.assertIsInstance(timeout, float)

    def test_values(self) -> None:
        """
        Absolute paths are kept; the endpoint types that appproxy can wrap
        in TLS are accepted; backend_timeout takes "default" (85 s), "long"
        (180 s) or seconds; a URL without a path means its root.
        """
        endpoints = [
            "tcp:443",
            "tcp:0",
            "tcp:port=8443:interface=127.0.0.1",
            "tcp:8443:interface=127.0.0.1:backlog=10",
            "tcp6:443:interface=\\:\\:1",
            "unix:/run/appproxy.sock",
            "unix:address=/run/appproxy.sock:mode=660:lockfile=0",
            "systemd:domain=INET:index=0",
            "systemd:domain=INET6:name=https",
        ]
        timeouts = [("default", 85.0), ("long", 180.0), (30, 30.0), (2.5, 2.5)]
        self.assertGood(
            [
                Good(
                    "service.state_dir", "/var/lib/appproxy", Path("/var/lib/appproxy"), "state_dir"
                ),
                *(Good("service.listen", endpoint, endpoint, "listen") for endpoint in endpoints),
                *(Good("apps[0].backend_timeout", value, s) for value, s in timeouts),
                Good("apps[0].internal_url", "http://Intranet:8080", "http://intranet:8080/"),
            ]
        )

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

    def test_app_properties_follow_evolve(self) -> None:
        """
        The URLs are split once, at construction: an app made from another
        with a new URL has the new URL's parts, and compares by its fields.
        """
        app = self.parse_service(self.with_app(internal_url="http://intranet:80/a/")).apps[0]
        moved = attrs.evolve(app, internal_url="https://other:8443/b/")
        self.assertEqual(
            (moved.internal_scheme, moved.internal_host, moved.internal_port, moved.internal_path),
            ("https", "other", 8443, "/b/"),
        )
        self.assertEqual((app.internal_host, app.internal_path), ("intranet", "/a/"))
        self.assertEqual(attrs.evolve(moved, internal_url=app.internal_url), app)
        self.assertNotIn("SplitResult", repr(app))

    def test_key_not_in_repr(self) -> None:
        """
        The private key's content is not in a config's C{repr}.
        """
        config = self.parse_service(self.service_data())
        self.assertNotIn("PRIVATE", repr(config))
        self.assertIn("wildcard.key", repr(config))

    def test_prefixes_allowed(self) -> None:
        """
        Apps may share a host when their paths differ.
        """
        data = self.service_data()
        data["apps"].append(app(name="sub", external_url="https://wiki.example.com/sub/"))
        self.assertEqual(len(self.parse_service(data).apps), 2)


class ValidConnectorConfigTests(ConfigTestCase):
    def test_full(self) -> None:
        self.connector_path.write_text(CONNECTOR_TOML)
        config = load_connector_config(self.connector_path)
        self.assertEqual(
            config,
            ConnectorConfig(
                path=self.connector_path,
                service_host="tunnel.example.com",
                service_port=9444,
                service_address="203.0.113.7",
                connections=8,
                capacity=50,
                ca=self.dir / "ca.pem",
                ca_pem=(self.dir / "ca.pem").read_bytes(),
                cert=self.certificate_files("connector"),
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
        self.assertGood(
            [
                Good("connector.service_address", value, expected, "service_address")
                for value, expected in [
                    ("2001:DB8::1", "2001:db8::1"),
                    ("[2001:db8::1]", "2001:db8::1"),
                    ("Tunnel-2.Example.com", "tunnel-2.example.com"),
                ]
            ],
            self.connector_data,
        )


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
        self.assertEqual(
            str(ConfigError("f.toml", "", "invalid TOML: x")), "f.toml: invalid TOML: x"
        )

    def test_one_line(self) -> None:
        """
        Control characters are escaped so the message stays on one line.
        """
        self.assertEqual(str(ConfigError("a\nb", "k", "p\r")), "a\\nb: k: p\\r")


_NOT_A_NAME = "is not a valid name (1 to 64 letters, digits, '-' or '_')"

# A missing key or table; pre_authentication defaults to "oidc", so an app
# without it needs an [oidc] table, and the error says how to publish it
# without sign-in.
MISSING_ROWS = [
    Bad("service.listen", DELETE, "is required"),
    Bad("service", DELETE, Starts("is required (")),
    Bad("tunnel.connector_ca", DELETE, "is required"),
    Bad("apps[0].internal_url", DELETE, "is required"),
    Bad("apps[0].pre_authentication", DELETE, NO_OIDC.format("wiki")),
    Bad("apps", DELETE, "is required (at least one [[apps]] table)"),
    Bad("apps", [], "must have at least one entry"),
    Bad("service.certificates", [], "must have at least one entry"),
    Bad("service.certificates", DELETE, Starts("is required")),
    Bad("service.certificates[0].key", DELETE, "is required"),
]

# A value of the wrong type (TOML booleans are not numbers even though
# Python's bool is an int).
TYPE_ROWS = [
    Bad("service.listen", 443, "must be a string, not integer"),
    Bad("apps[0].name", ["wiki"], "must be a string, not array"),
    Bad("service.state_dir", "", "must not be empty"),
    *(
        Bad("apps[0].translate_urls_in_headers", value, f"must be true or false, not {kind}")
        for value, kind in [("yes", "string"), (1, "integer"), (0, "integer")]
    ),
    Bad("apps[0].verify_backend_tls", "false", "must be true or false, not string"),
    Bad("service.queue_timeout", True, "must be a number, not boolean"),
    Bad("tunnel", "tcp:8444", "must be a table, not string"),
    Bad("apps", APP, "must be an array of tables, not table"),
    Bad("apps[1]", "wiki", "must be a table, not string"),
]

VALUE_ROWS = [
    *(
        Bad("service.queue_timeout", value, f"must be more than 0 and at most 3600, not {value!r}")
        for value in [0, -1, 3600.5, float("inf"), float("nan")]
    ),
    Bad("service.log_format", "xml", "must be 'text' or 'json', not 'xml'"),
    Bad("apps[0].backend_timeout", "short", "must be 'default' or 'long', not 'short'"),
    Bad(
        "apps[0].backend_timeout",
        True,
        'must be "default", "long" or a number of seconds, not boolean',
    ),
    Bad("apps[0].backend_timeout", 0, "must be more than 0 and at most 3600, not 0"),
    # pre_authentication is "oidc" or "passthrough"; "oidc" needs an [oidc] table.
    Bad("apps[0].pre_authentication", "oidc", NO_OIDC.format("wiki")),
    Bad("apps[0].pre_authentication", "none", "must be 'oidc' or 'passthrough', not 'none'"),
    Bad("apps[0].pre_authentication", "OIDC", "must be 'oidc' or 'passthrough', not 'OIDC'"),
    *(
        Bad("apps[0].name", value, Ends(_NOT_A_NAME))
        for value in ["wi ki", "wiki.example", "x" * 65, "wiki\n"]
    ),
    Bad("apps[0].connector_group", "site/b", f"'site/b' {_NOT_A_NAME}"),
    # External URLs are compared after normalisation.
    Bad(
        "apps[1]",
        app(external_url="https://other.example.com/"),
        "'wiki' is already used by apps[0]",
        "apps[1].name",
    ),
    Bad(
        "apps[1]",
        app(name="wiki2", external_url="https://WIKI.example.com:443"),
        "'https://wiki.example.com/' is already used by apps[0] (wiki)",
        "apps[1].external_url",
    ),
]

CONNECTOR_ROWS = [
    Bad("connector.key", DELETE, "is required"),
    Bad("connector", DELETE, Starts("")),
    Bad("connector.connections", True, "must be an integer, not boolean"),
    Bad("connector.service_port", 8444.0, "must be an integer, not float"),
    Bad("connector.ping_interval", "15", "must be a number, not string"),
    Bad("connector.capacity", datetime.date(2024, 1, 1), "must be an integer, not date"),
    Bad("connector.ping_interval", 0, "must be more than 0 and at most 3600, not 0"),
    *(
        Bad(f"connector.{key}", value, f"must be from {low} to {high}, not {value}")
        for key, value, low, high in [
            ("connections", 0, 1, 64),
            ("connections", 65, 1, 64),
            ("capacity", 1001, 1, 1000),
            ("service_port", 0, 1, 65535),
            ("service_port", 65536, 1, 65535),
        ]
    ),
    Bad("connector.capacity", -(10**5000), "must be from 1 to 1000, not a very large number"),
    Bad("connector.log_format", "JSON", "must be 'text' or 'json', not 'JSON'"),
    *(
        Bad("connector.service_host", value, Starts("must be a DNS name, not an IP address"))
        for value in ["203.0.113.7", "::1", "[::1]"]
    ),
    *(
        Bad("connector.service_host", value, Contains("is not a valid DNS name"))
        for value in [
            "-tunnel.example.com",
            "tunnel..example.com",
            "tunnel.example.com.",
            "a" * 64 + ".com",
            "tun_nel.example.com",
            "tünnel.example.com",
        ]
    ),
    Bad(
        "connector.service_address",
        "tunnel host",
        "'tunnel host' is not a valid host name or IP address",
    ),
    Bad("connector.pinginterval", 5, "unknown key (did you mean 'ping_interval'?)"),
    Bad("service", {}, "unknown key"),
]

UNKNOWN_KEY_ROWS = [
    Bad("servce", 1, "unknown key (did you mean 'service'?)"),
    Bad("service.listne", 1, "unknown key (did you mean 'listen'?)"),
    Bad("tunnel.zzz", 1, "unknown key"),
    Bad("apps[0].Name", 1, "unknown key (did you mean 'name'?)"),
    Bad("service.certificates[0].crt", 1, "unknown key (did you mean 'cert'?)"),
    Bad('service."a.b"', 1, "unknown key"),
]


class InvalidConfigTests(ConfigTestCase):
    def test_missing(self) -> None:
        self.assertBad(MISSING_ROWS)

    def test_types(self) -> None:
        self.assertBad(TYPE_ROWS)

    def test_values(self) -> None:
        self.assertBad(VALUE_ROWS)

    def test_connector(self) -> None:
        self.assertBad(CONNECTOR_ROWS, self.connector_data)

    def test_unknown_keys(self) -> None:
        self.assertBad(UNKNOWN_KEY_ROWS)

    def test_did_you_mean(self) -> None:
        """
        A misspelt key is reported as unknown, with the likely intended key,
        rather than the intended key as missing.
        """
        data = self.service_data()
        data["apps"][0]["internl_url"] = data["apps"][0].pop("internal_url")
        self.assertServiceError(
            data, "apps[0].internl_url", "unknown key (did you mean 'internal_url'?)"
        )


def _bad_url(key: str, url: str, problem: str) -> Bad:
    """C{url} at C{apps[0].key}: C{problem}, after the quoted URL."""
    return Bad(f"apps[0].{key}", url, f"{url!r} {problem}")


URL_ROWS = [
    _bad_url("external_url", "http://wiki.example.com/", "is not an https URL"),
    _bad_url("external_url", "wiki.example.com/", "is not an https URL"),
    _bad_url("external_url", "https://wiki.example.com/?a=b", "must not have a query ('?...')"),
    _bad_url("internal_url", "http://intranet/?", "must not have a query ('?...')"),
    _bad_url("internal_url", "http://intranet/#top", "must not have a fragment ('#...')"),
    _bad_url(
        "external_url", "https://wiki.example.com/wiki", "must end with '/' (its path is a prefix)"
    ),
    _bad_url(
        "internal_url", "http://intranet/index.html", "must end with '/' (its path is a prefix)"
    ),
    *(
        Bad(
            "apps[0].external_url",
            url,
            f"{url[:200]!r}{'...' if len(url) > 200 else ''}"
            " has an invalid port (must be from 1 to 65535)",
        )
        for url in [
            "https://wiki.example.com:0/",
            "https://wiki.example.com:65536/",
            "https://wiki.example.com:https/",
            "https://wiki.example.com:/",
            "https://wiki.example.com:-1/",
            "https://[::1]x/",
            "https://wiki.example.com:" + "4" * 5000 + "/",
        ]
    ),
    _bad_url("internal_url", "http:///x/", "has no host name"),
    _bad_url("internal_url", "http:intranet/", "has no host name"),
    _bad_url("internal_url", "http://:80/", "has no host name"),
    _bad_url("internal_url", "http://intra%6eet/", "has an invalid host name"),
    _bad_url("internal_url", "http://" + "a" * 64 + ".corp/", "has an invalid host name"),
    _bad_url("external_url", "https://" + "w" * 64 + ".example.com/", "has an invalid host name"),
    _bad_url("internal_url", "http://[fe80::1%25eth0]/", "has an invalid IPv6 address"),
    Bad("apps[0].internal_url", "http://[::1/", "is not a valid URL"),
    *(
        Bad("apps[0].external_url", url, "must not contain whitespace or control characters")
        for url in [
            "https://wiki.example.com/ x/",
            "https://wiki.example.com/\n",
            " https://w/",
            "https://wiki\x00.example.com/",
            "https://wiki.example.com/\u200b/",
        ]
    ),
    Bad(
        "apps[0].external_url",
        "https://bücher.example/",
        Starts("must contain only ASCII characters"),
    ),
    _bad_url("internal_url", "http://intranet/a/../", "must not contain '.' or '..' path segments"),
]


class URLTests(ConfigTestCase):
    def test_invalid(self) -> None:
        self.assertBad(URL_ROWS)

    def test_internal_scheme(self) -> None:
        """
        The documentation's example error.
        """
        data = self.service_data()
        data["apps"].append(
            app(
                name="intranet",
                external_url="https://intranet.example.com/",
                internal_url="ftp://intranet/",
            )
        )
        self.assertEqual(
            str(self.error(data)),
            f"{self.service_path}: apps[1].internal_url:"
            " 'ftp://intranet/' is not an http or https URL",
        )

    def test_userinfo(self) -> None:
        """
        A URL with a user name or password is refused without being echoed.
        """
        url = "https://user:s3cret@host.example.com/"
        problem = "must not contain a user name or password"
        for error in self.assertBad(
            Bad(f"apps[0].{key}", url, problem) for key in ["external_url", "internal_url"]
        ):
            self.assertNotIn("s3cret", str(error))


FILE_ROWS = [
    Bad(
        "service.certificates[0].cert",
        "tls/nope.pem",
        "cannot read certificate file '{dir}/tls/nope.pem': No such file or directory",
    ),
    Bad("tunnel.key", "tls", "cannot read key file '{dir}/tls': Is a directory"),
    Bad("tunnel.cert", "junk.pem", "'{dir}/junk.pem' does not contain a PEM certificate"),
    # A key is not a certificate.
    Bad(
        "tunnel.cert", "tls/tunnel.key", "'{dir}/tls/tunnel.key' does not contain a PEM certificate"
    ),
    Bad(
        "tunnel.key", "tls/tunnel.pem", "'{dir}/tls/tunnel.pem' does not contain a PEM private key"
    ),
    Bad("tunnel.connector_ca", "ca.key", "'{dir}/ca.key' does not contain a PEM certificate"),
    Bad(
        "apps[0].backend_ca",
        "tls/intranet-ca.key",
        "'{dir}/tls/intranet-ca.key' does not contain a PEM certificate",
    ),
]

CONNECTOR_FILE_ROWS = [
    Bad(
        "connector.key",
        "tls/tunnel.key",
        "'{dir}/tls/tunnel.key' does not match the certificate in '{dir}/connector.pem'",
    ),
    Bad(
        "connector.key",
        "encrypted.key",
        "'{dir}/encrypted.key' is encrypted; appproxy needs an unencrypted key",
    ),
    Bad(
        "connector.ca",
        "nope.pem",
        "cannot read CA certificate file '{dir}/nope.pem': No such file or directory",
    ),
    Bad("connector.ca", "ca\x00.pem", "must not contain a NUL character"),
]


class CertificateFileTests(ConfigTestCase):
    def test_invalid(self) -> None:
        (self.dir / "junk.pem").write_bytes(b"not a certificate\n")
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
        self.assertBad(FILE_ROWS)
        errors = self.assertBad(CONNECTOR_FILE_ROWS, self.connector_data)
        self.assertNotIn("PRIVATE", str(errors[0]))

    def test_chain(self) -> None:
        """
        A chain after the leaf is allowed; the key must match the leaf.
        """
        chain = (self.dir / "connector.pem").read_bytes() + (self.dir / "ca.pem").read_bytes()
        (self.dir / "chain.pem").write_bytes(chain)
        self.assertGood(
            [Good("connector.cert", "chain.pem", chain, "cert.cert_pem")], self.connector_data
        )
        self.assertBad(
            [
                Bad(
                    "connector.key",
                    "ca.key",
                    "'{dir}/ca.key' does not match the certificate in '{dir}/chain.pem'",
                )
            ],
            changed(self.connector_data, "connector.cert", "chain.pem"),
        )


ENDPOINT_ROWS = [
    Bad(
        "service.listen",
        "ssl:443:privateKey=key.pem",
        "appproxy adds TLS itself: use a tcp: endpoint and [[service.certificates]]",
    ),
    Bad(
        "tunnel.listen",
        "ssl:8444",
        "appproxy adds TLS itself: use a tcp: endpoint and tunnel.cert/tunnel.key",
    ),
    Bad("service.listen", "443", "'443' is not an endpoint string (did you mean 'tcp:443'?)"),
    Bad("service.listen", "localhost", "'localhost' is not an endpoint string"),
    Bad("service.listen", "", "must not be empty"),
    *(
        Bad("service.listen", endpoint, f"{endpoint!r} is not a valid endpoint: {problem}")
        for endpoint, problem in [
            ("quic:443", "unknown type 'quic' (use tcp:, tcp6:, unix: or systemd:)"),
            ("tcp:", "port must be a number from 0 to 65535, not ''"),
            ("tcp", "it needs a port number (for example 'tcp:443')"),
            ("tcp:interface=127.0.0.1", "it needs a port number (for example 'tcp:443')"),
            ("tcp:65536", "port must be a number from 0 to 65535, not '65536'"),
            ("tcp6:port=https", "port must be a number from 0 to 65535, not 'https'"),
            ("tcp:443:bogus=1", "unknown option 'bogus' (known: port, interface, backlog)"),
            ("tcp:443:port=443", "port is given twice"),
            ("tcp:443:127.0.0.1:50:x", "too many arguments for a tcp: endpoint"),
            ("unix:", "it needs a socket path (for example 'unix:/run/appproxy.sock')"),
            ("systemd:domain=INET", "it needs exactly one of index= and name="),
            (
                "systemd:domain=BOGUS:index=0",
                "unknown address family 'BOGUS' (for example INET or INET6)",
            ),
            ("tcp:443\\", "it ends with a lone backslash"),
        ]
    ),
]


class EndpointTests(ConfigTestCase):
    def test_invalid(self) -> None:
        self.assertBad(ENDPOINT_ROWS)


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


OIDC = {
    "issuer": "https://idp.example.net/realms/staff",
    "client_id": "appproxy",
    "client_secret_file": "oidc-secret",
    "callback_url": "https://login.example.com/.appproxy/callback",
}


def oidc(**changes: Any) -> dict[str, Any]:
    """The [oidc] table of L{SignInTestCase.signin_data}, changed."""
    return {**OIDC, **changes}


def policy(**changes: Any) -> dict[str, Any]:
    """The policy of L{SignInTestCase.with_policy}, changed."""
    return {"name": "p", "grant": "block", **changes}


class SignInTestCase(ConfigTestCase):
    """
    Adds a client secret file, and valid configurations whose app signs in.
    """

    def setUp(self) -> None:
        super().setUp()
        self.secret_path = self.dir / "oidc-secret"
        self.secret_path.write_text(OIDC_SECRET + "\n")

    def signin_data(self, **tables: Any) -> dict[str, Any]:
        """
        A valid configuration with an [oidc] table and one app that signs in;
        C{tables} adds or replaces top-level tables.
        """
        data = self.service_data()
        data["apps"] = [app(pre_authentication="oidc")]
        data["oidc"] = oidc()
        data.update(tables)
        return data

    def with_builtin(self) -> dict[str, Any]:
        return self.signin_data(builtin_provider={"issuer": "https://login.example.com"})

    def own_provider(self) -> dict[str, Any]:
        """[oidc] signing in with [builtin_provider] on the login host."""
        data = self.with_builtin()
        data["oidc"]["issuer"] = "https://login.example.com"
        return data

    def with_headers(self, headers: dict[str, Any]) -> dict[str, Any]:
        """L{signin_data} whose app has these identity headers."""
        data = self.signin_data()
        data["apps"][0]["headers"] = headers
        return data

    def with_policy(self) -> dict[str, Any]:
        return self.signin_data(
            locations=[{"name": "office", "networks": ["192.0.2.0/24"]}], policies=[policy()]
        )


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
        A file whose apps are all passthrough needs no [oidc] table; an
        [oidc] table is allowed when no app signs in.
        """
        config = self.parse_service(self.service_data())
        self.assertIsNone(config.oidc)
        self.assertIsNone(config.builtin_provider)
        self.assertEqual(config.login_hosts, frozenset())
        config = self.parse_service(self.signin_data(apps=[app()]))
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


_OWN_CLIENT_ID = "is not a valid client id (1 to 255 printable ASCII characters, no spaces or ':')"
_NOT_ADDRESS = "is not a host name or address with an optional port (for example 127.0.0.1:8443)"

OIDC_ROWS = [
    *(
        Bad(f"oidc.{key}", DELETE, "is required")
        for key in ("issuer", "client_id", "client_secret_file", "callback_url")
    ),
    Bad("oidc", "https://idp.example.net", "must be a table, not string"),
    Bad("oidc.client_secret", "x", "unknown key (did you mean 'client_secret_file'?)"),
    *(
        Bad("oidc.issuer", value, f"{value!r} is not an https URL")
        for value in ["http://idp.example.net/", "idp.example.net", "ftp://idp.example.net/"]
    ),
    *(
        Bad("oidc.issuer", value, f"{value!r} {problem}")
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
        ]
    ),
    *(
        Bad("oidc.issuer", value, "must be an ASCII URL without whitespace or control characters")
        for value in [
            "https://idp.example.net/ x",
            " https://idp.example.net/",
            "https://idp.example.net/\n",
            "https://bücher.example/",
        ]
    ),
    Bad("oidc.issuer", "", "must not be empty"),
    Bad("oidc.issuer", 1, "must be a string, not integer"),
    Bad("oidc.client_id", "", "must not be empty"),
    Bad("oidc.client_id", ["a"], "must be a string, not array"),
    *(
        Bad(
            "oidc.client_secret_file",
            value,
            f"cannot read client secret file '{{dir}}/{value}': {why}",
        )
        for value, why in [
            ("nope", "No such file or directory"),
            ("tls", "Is a directory"),
            ("oidc-secret/x", "Not a directory"),
        ]
    ),
    Bad("oidc.client_secret_file", "a\0b", "must not contain a NUL character"),
    *(
        Bad(
            "oidc.client_auth",
            value,
            f"must be 'client_secret_basic' or 'client_secret_post', not {value!r}",
        )
        for value in ["private_key_jwt", "none", "Client_Secret_Basic"]
    ),
    *(
        Bad("oidc.callback_url", value, f"{value!r} needs a path (for example /.appproxy/callback)")
        for value in ["https://login.example.com", "https://login.example.com:8443"]
    ),
    Bad(
        "oidc.callback_url",
        "http://login.example.com/.appproxy/callback",
        "'http://login.example.com/.appproxy/callback' is not an https URL",
    ),
    Bad(
        "oidc.callback_url",
        "https://login.example.com/cb?x=1",
        "'https://login.example.com/cb?x=1' must not have a query or fragment",
    ),
    Bad("oidc.scopes", ["profile", "email"], "must include 'openid'"),
    Bad("oidc.scopes", [], "must include 'openid'"),
    Bad("oidc.scopes", "openid", "must be an array of strings, not string"),
    Bad("oidc.scopes", ["openid", ""], "must not be empty", "oidc.scopes[1]"),
    Bad("oidc.scopes", ["openid", 2], "must be a string, not integer", "oidc.scopes[1]"),
    *(
        Bad(
            "oidc.scopes",
            ["openid", scope],
            f"{scope!r} is not a valid scope (printable ASCII, no spaces, quotes or backslashes)",
            "oidc.scopes[1]",
        )
        for scope in ["openid profile", 'a"b', "a\\b", "é"]
    ),
    *(
        Bad(
            "oidc.algorithms",
            ["RS256", algorithm],
            f"{algorithm!r} is not allowed (asymmetric signatures only: {_ALGORITHMS_TEXT})",
            "oidc.algorithms[1]",
        )
        for algorithm in ["none", "HS256", "HS512", "rs256", "RS1"]
    ),
    Bad("oidc.algorithms", ["RS256", ""], "must not be empty", "oidc.algorithms[1]"),
    Bad("oidc.algorithms", [], "must name at least one algorithm"),
    Bad("oidc.algorithms", "RS256", "must be an array of strings, not string"),
    Bad(
        "oidc.provider_ca",
        "missing.pem",
        "cannot read CA certificate file '{dir}/missing.pem': No such file or directory",
    ),
    Bad("oidc.provider_ca", "ca.key", "'{dir}/ca.key' does not contain a PEM certificate"),
    *(
        Bad("oidc.provider_address", value, f"{value!r} {_NOT_ADDRESS}")
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
        ]
    ),
    Bad("oidc.provider_address", "", "must not be empty"),
    *(Bad("oidc.clock_skew", value, f"must be from 0 to 600, not {value}") for value in [-1, 601]),
    Bad("oidc.clock_skew", 1.5, "must be an integer, not float"),
    Bad("oidc.clock_skew", True, "must be an integer, not boolean"),
    Bad("oidc.mfa_amr", "mfa", "must be an array of strings, not string"),
    Bad("oidc.mfa_acr", {"a": 1}, "must be an array of strings, not table"),
    Bad("oidc.mfa_acr", [1], "must be a string, not integer", "oidc.mfa_acr[0]"),
    Bad("oidc.mfa_amr", ["mfa", ""], "must not be empty", "oidc.mfa_amr[1]"),
    *(
        Bad(
            "oidc.jwks_refetch_interval",
            value,
            f"must be more than 0 and at most 3600, not {value}",
        )
        for value in [0, -1, 3601]
    ),
    Bad("oidc.jwks_refetch_interval", "30s", "must be a number, not string"),
    *(
        Bad(f"oidc.{key}", value, problem)
        for key in ("username_claim", "groups_claim", "step_up_acr_values")
        for value, problem in [("", "must not be empty"), (["x"], "must be a string, not array")]
    ),
]

_CALLBACK = "https://Login.Example.com:8443/.appproxy/callback"
_CLAIMS = oidc(username_claim="upn", groups_claim="roles", step_up_acr_values="c1 c2")

# The issuer's host is lowercased and port 443 elided; its path is kept as
# written, trailing slash or not (it must equal the provider's).
# provider_address is a host name or an address, with an optional port;
# IPv6 in brackets if there is a port.  It is kept as written.
OIDC_GOOD = [
    *(
        Good("oidc.issuer", value, expected)
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
        ]
    ),
    *(
        Good("oidc.client_auth", value, value)
        for value in ["client_secret_basic", "client_secret_post"]
    ),
    # The callback URL is an https URL with a path; its host is the login host.
    Good("oidc.callback_url", _CALLBACK, "https://login.example.com:8443/.appproxy/callback"),
    Good("oidc.callback_url", _CALLBACK, "login.example.com:8443", "oidc.callback_host"),
    Good("oidc.callback_url", _CALLBACK, "/.appproxy/callback", "oidc.callback_path"),
    Good("oidc.scopes", ["email", "openid"], ("email", "openid")),
    Good("oidc.algorithms", ["ES512", "PS384"], ("ES512", "PS384")),
    *(
        Good("oidc.provider_address", value, value)
        for value in (
            "127.0.0.1 127.0.0.1:8443 idp.internal IdP.Internal:8443 [::1] [::1]:8443 "
            "[2001:db8::10]:1 ::1 2001:db8::10 localhost:65535"
        ).split()
    ),
    *(Good("oidc.clock_skew", value, value) for value in [0, 600]),
    Good(
        "oidc",
        oidc(mfa_amr=["otp"], mfa_acr=["urn:x:mfa", "c2"]),
        MfaRule(amr=("otp",), acr=("urn:x:mfa", "c2")),
        "oidc.mfa",
    ),
    Good("oidc.mfa_amr", [], MfaRule(amr=(), acr=()), "oidc.mfa"),
    *(Good("oidc.jwks_refetch_interval", value, float(value)) for value in [0.5, 3600]),
    Good("oidc", _CLAIMS, "upn", "oidc.username_claim"),
    Good("oidc", _CLAIMS, "roles", "oidc.groups_claim"),
    Good("oidc", _CLAIMS, "c1 c2", "oidc.step_up_acr_values"),
]


class OidcConfigTests(SignInTestCase):
    def test_invalid(self) -> None:
        self.assertBad(OIDC_ROWS, self.signin_data)

    def test_valid(self) -> None:
        """
        The client secret is the file's content without surrounding
        whitespace; the path is relative to the configuration file.
        """
        (self.dir / "sub").mkdir()
        (self.dir / "sub/secret").write_bytes(b"\n  p4ss word\t\r\n")
        self.assertGood(
            [
                *OIDC_GOOD,
                Good("oidc.client_secret_file", "sub/secret", self.dir / "sub/secret"),
                Good("oidc.client_secret_file", "sub/secret", "p4ss word", "oidc.client_secret"),
                Good("oidc.provider_ca", "ca.pem", self.dir / "ca.pem"),
                Good(
                    "oidc.provider_ca",
                    "ca.pem",
                    (self.dir / "ca.pem").read_bytes(),
                    "oidc.provider_ca_pem",
                ),
            ],
            self.signin_data,
        )

    def test_userinfo(self) -> None:
        """
        A URL with a user name or password is refused without being echoed.
        """
        value = "https://admin:hunter2@idp.example.net/cb"
        problem = "must not contain a user name or password"
        rows = [Bad(f"oidc.{key}", value, problem) for key in ("issuer", "callback_url")]
        for error in self.assertBad(rows, self.signin_data):
            self.assertNotIn("hunter2", str(error))

    def test_client_secret_content(self) -> None:
        """
        An empty (or all-whitespace) secret file, or one that is not UTF-8,
        is refused.
        """
        for content, problem in [
            (b"", "is empty"),
            (b"\n", "is empty"),
            (b"  \t\r\n\n", "is empty"),
            (b"\xffsecret\n", "is not UTF-8 text"),
        ]:
            self.secret_path.write_bytes(content)
            error = self.error(self.signin_data(), repr(content))
            self.assertEqual(
                (error.key, error.problem),
                ("oidc.client_secret_file", f"'{self.secret_path}' {problem}"),
                repr(content),
            )


BUILTIN_ROWS = [
    Bad("builtin_provider.users_file", "a\0b", "must not contain a NUL character"),
    Bad("builtin_provider.users_file", "", "must not be empty"),
    *(
        Bad(
            "builtin_provider.issuer",
            value,
            "must be a host name only (https://login.example.com), no path",
        )
        for value in ["https://login.example.com/idp", "https://login.example.com/idp/"]
    ),
    Bad(
        "builtin_provider.issuer",
        "http://login.example.com",
        "'http://login.example.com' is not an https URL",
    ),
    Bad(
        "builtin_provider.issuer",
        "https://login.example.com/?x",
        "'https://login.example.com/?x' must not have a query or fragment",
    ),
    Bad("builtin_provider.issuer", DELETE, "is required"),
    Bad(
        "builtin_provider.issuer",
        "https://Wiki.Example.com",
        "its host 'wiki.example.com' is the host of app 'wiki': use a host of its own"
        " (login.DOMAIN)",
    ),
    Bad("builtin_provider.device_client_id", "", "must not be empty"),
    *(
        Bad("builtin_provider.device_client_id", value, f"{shown} {_OWN_CLIENT_ID}")
        for value, shown in [
            ("my connector", "'my connector'"),
            ("urn:x", "'urn:x'"),
            ("é", "'é'"),
            ("x" * 256, f"'{'x' * 200}'..."),
        ]
    ),
    Bad("builtin_provider.user_file", "u.json", "unknown key (did you mean 'users_file'?)"),
]

BUILTIN_GOOD = [
    Good(
        "builtin_provider.users_file",
        "/etc/appproxy/users.json",
        Path("/etc/appproxy/users.json"),
    ),
    Good(
        "service.state_dir",
        "/var/lib/appproxy",
        Path("/var/lib/appproxy/users.json"),
        "builtin_provider.users_file",
    ),
    *(
        Good("builtin_provider.issuer", value, expected)
        for value, expected in [
            ("https://Login.Example.com/", "https://login.example.com"),
            ("https://login.example.com:443", "https://login.example.com"),
            ("https://login.example.com:8443/", "https://login.example.com:8443"),
        ]
    ),
    Good("builtin_provider.device_client_id", "conn", "conn"),
    Good(
        "builtin_provider.issuer",
        "https://idp.example.com",
        {"login.example.com", "idp.example.com"},
        "login_hosts",
    ),
    # Another provider's client ids are its business.
    *(Good("oidc.client_id", value, value) for value in ["appproxy-connector", "app proxy"]),
]

# appproxy may sign in with its own provider (as appproxy init sets up); a
# trailing '/' on the [oidc] issuer does not matter.
OWN_PROVIDER_GOOD = [
    Good("oidc.issuer", issuer, expected, attribute)
    for issuer in ["https://login.example.com", "https://login.example.com/"]
    for expected, attribute in [(issuer, None), ({"login.example.com"}, "login_hosts")]
]

OWN_PROVIDER_ROWS = [
    Bad(
        "oidc.client_id",
        "appproxy-connector",
        "'appproxy-connector' is also builtin_provider.device_client_id:"
        " the two clients need different ids",
    ),
    Bad("oidc.client_id", "app proxy", f"'app proxy' {_OWN_CLIENT_ID}"),
]


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

    def test_invalid(self) -> None:
        self.assertBad(BUILTIN_ROWS, self.with_builtin)
        self.assertBad(OWN_PROVIDER_ROWS, self.own_provider)

    def test_valid(self) -> None:
        """
        A relative users_file is relative to the state directory, not to the
        configuration file.
        """
        users = self.dir / "state/idp/users.json"
        self.assertGood(
            [*BUILTIN_GOOD, Good("builtin_provider.users_file", "idp/users.json", users)],
            self.with_builtin,
        )
        self.assertGood(OWN_PROVIDER_GOOD, self.own_provider)

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


_OFFICE = {"name": "office", "networks": ["10.0.0.0/8"]}
_NOT_A_NETWORK = "is not an IP address or network (for example 10.0.0.0/8)"
_NO_NETWORK = "must list at least one network (for example 10.0.0.0/8)"

# [risk], [[locations]] and a [[policies]] entry without locations.
ACCESS_ROWS = [
    *(
        Bad("risk.failed_sign_in_limit", value, f"must be from 1 to 1000, not {value}")
        for value in [0, 1001]
    ),
    *(
        Bad(
            "risk.failed_sign_in_window",
            value,
            f"must be more than 0 and at most 86400, not {value}",
        )
        for value in [0, -5, 86401]
    ),
    *(
        Bad(
            "risk.failed_sign_in_window",
            value,
            f"must be at least 1 and at most 86400, not {value}",
        )
        for value in [0.5, 0.999]
    ),
    Bad("risk.failed_sign_in_window", "10m", "must be a number, not string"),
    *(
        Bad("risk.anonymizers", value, f"'{{dir}}/{value}' is not a readable file")
        for value in ["missing.txt", "tls"]
    ),
    Bad("risk", [{}], "must be a table, not array"),
    Bad("risk.failed_sign_in_limt", 3, "unknown key (did you mean 'failed_sign_in_limit'?)"),
    Bad(
        "locations",
        [_OFFICE, _OFFICE],
        "'office' is already used by another location",
        "locations[1].name",
    ),
    *(
        Bad(
            "locations",
            [{"name": "o", "networks": ["10.0.0.0/8", value]}],
            f"{value!r} {_NOT_A_NETWORK}",
            "locations[0].networks[1]",
        )
        for value in ["10.0.0.0/33", "office", "10.0.0.256", "2001:db8::/129", "10.0.0.0/8 "]
    ),
    Bad("locations", [{"name": "o", "networks": []}], _NO_NETWORK, "locations[0].networks"),
    Bad("locations", [{"name": "o"}], _NO_NETWORK, "locations[0].networks"),
    Bad("locations", [{"networks": ["10.0.0.0/8"]}], "is required", "locations[0].name"),
    Bad(
        "locations",
        [{"name": "head office", "networks": ["10.0.0.0/8"]}],
        f"'head office' {_NOT_A_NAME}",
        "locations[0].name",
    ),
    Bad("locations", {"name": "o"}, "must be an array of tables, not table"),
    Bad(
        "locations",
        [{"name": "o", "networks": ["10.0.0.0/8"], "cidr": "x"}],
        "unknown key",
        "locations[0].cidr",
    ),
    Bad("policies", [{"grant": "block"}], "is required", "policies[0].name"),
]

_POLICY_LISTS = ("users", "groups", "exclude_users", "exclude_groups")

POLICY_ROWS = [
    Bad(
        "policies[0].grant",
        DELETE,
        "is required ('block' or 'mfa'), unless sign_in_frequency is set",
    ),
    *(
        Bad("policies[0].grant", value, f"must be 'block' or 'mfa', not {value!r}")
        for value in ["allow", "MFA", "require-mfa"]
    ),
    Bad("policies[0].grant", ["block"], "must be a string, not array"),
    *(
        Bad("policies[0].sign_in_frequency", value, f"must be from 60 to 7776000, not {value}")
        for value in [0, 59, 90 * 24 * 3600 + 1]
    ),
    Bad("policies[0].sign_in_frequency", "1h", "must be an integer, not string"),
    *(
        Bad(
            f"policies[0].{key}",
            ["wiki", "nope"],
            "there is no app named 'nope' (use '*' for every app)",
            f"policies[0].{key}[1]",
        )
        for key in ("apps", "exclude_apps")
    ),
    # App names in policies are compared exactly, as in [[apps]].
    Bad(
        "policies[0].apps",
        ["Wiki"],
        "there is no app named 'Wiki' (use '*' for every app)",
        "policies[0].apps[0]",
    ),
    *(
        Bad(
            f"policies[0].{key}",
            ["office", "home"],
            "there is no [[locations]] entry named 'home' (use '*' for anywhere)",
        )
        for key in ("locations", "exclude_locations")
    ),
    *(
        Bad(
            "policies[0].risks",
            ["anonymizer", value],
            f"must be 'failed-sign-ins' or 'anonymizer', not {value!r}",
            "policies[0].risks[1]",
        )
        for value in ["tor", "anonymiser", "Failed-Sign-Ins"]
    ),
    Bad(
        "policies[1]",
        {"name": "p", "grant": "mfa"},
        "'p' is already used by another policy",
        "policies[1].name",
    ),
    *(
        Bad(f"policies[0].{key}", "alice", "must be an array of strings, not string")
        for key in _POLICY_LISTS
    ),
    *(
        Bad(f"policies[0].{key}", ["alice", ""], "must not be empty", f"policies[0].{key}[1]")
        for key in _POLICY_LISTS
    ),
    Bad("policies[0].grants", "mfa", "unknown key (did you mean 'grant'?)"),
]

_FREQUENCY_ONLY = {"name": "p", "sign_in_frequency": 60}
_MFA_AND_FREQUENCY = policy(grant="mfa", sign_in_frequency=90 * 24 * 3600)
_EVERY_APP_BUT_WIKI = policy(apps=["*"], exclude_apps=["wiki"])

# A policy may set only sign_in_frequency (a session control).
POLICY_GOOD = [
    Good("policies[0]", _FREQUENCY_ONLY, None, "policies[0].grant"),
    Good("policies[0]", _FREQUENCY_ONLY, 60, "policies[0].sign_in_frequency"),
    Good("policies[0]", _MFA_AND_FREQUENCY, "mfa", "policies[0].grant"),
    Good("policies[0]", _MFA_AND_FREQUENCY, 7776000, "policies[0].sign_in_frequency"),
    Good("policies[0]", _EVERY_APP_BUT_WIKI, ("*",), "policies[0].apps"),
    Good("policies[0]", _EVERY_APP_BUT_WIKI, ("wiki",), "policies[0].exclude_apps"),
    Good(
        "policies[0]",
        policy(locations=["*"], exclude_locations=["office"]),
        ("office",),
        "policies[0].exclude_locations",
    ),
]


class AccessConfigTests(SignInTestCase):
    def test_invalid(self) -> None:
        self.assertBad(ACCESS_ROWS, self.signin_data)
        self.assertBad(POLICY_ROWS, self.with_policy)

    def test_valid(self) -> None:
        """
        Addresses become single-address networks; host bits are dropped.
        """
        (self.dir / "tor.txt").write_text("192.0.2.1\n")
        risk = {
            "failed_sign_in_limit": 1000,
            "failed_sign_in_window": 1.5,
            "anonymizers": "tor.txt",
        }
        networks = ["10.1.2.3/8", "192.0.2.9", "2001:DB8::1/32"]
        office = NamedLocation(
            name="office",
            networks=(
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.0.2.9/32"),
                ipaddress.ip_network("2001:db8::/32"),
            ),
        )
        self.assertGood(
            [
                Good(
                    "risk",
                    risk,
                    RiskConfig(
                        failed_sign_in_limit=1000,
                        failed_sign_in_window=1.5,
                        anonymizers=self.dir / "tor.txt",
                    ),
                ),
                Good("locations", [{"name": "office", "networks": networks}], (office,)),
            ],
            self.signin_data,
        )
        self.assertGood(POLICY_GOOD, self.with_policy)

    def test_policy_defaults(self) -> None:
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


_COOKIE_FLAGS = ("persistent_cookie", "http_only_cookie", "jwt_assertion")
_RESERVED = "is set by appproxy itself and cannot carry a claim"
_ON_APP_HOST = "its host {!r} is the host of app {!r}: use a host of its own (login.DOMAIN)"

APP_SIGN_IN_ROWS = [
    *(
        Bad(f"apps[0].{key}", "alice", "must be an array of strings, not string")
        for key in ("allowed_users", "allowed_groups")
    ),
    *(
        Bad(f"apps[0].{key}", [""], "must not be empty", f"apps[0].{key}[0]")
        for key in ("allowed_users", "allowed_groups")
    ),
    *(
        Bad("apps[0].session_lifetime", value, f"must be from 60 to 2592000, not {value}")
        for value in [59, 0, 30 * 24 * 3600 + 1]
    ),
    Bad("apps[0].session_lifetime", 3600.0, "must be an integer, not float"),
    *(
        Bad(f"apps[0].{key}", value, f"must be true or false, not {kind}")
        for key in _COOKIE_FLAGS
        for value, kind in [("true", "string"), (1, "integer")]
    ),
    Bad(
        "apps[0].headers",
        [["X-Remote-User", "sub"]],
        "must be a table of header = claim, not array",
    ),
    Bad("apps[0].headers", "X-Remote-User", "must be a table of header = claim, not string"),
    # A header name is an HTTP token of at most 64 characters; the key in
    # the message is written as in TOML.
    *(
        Bad(f"apps[0].headers.{key}", "sub", "is not a valid header name (letters, digits and '-')")
        for key in ['"X Remote"', '"X-Remote:User"', '"X-Rémote"', '""', "X" * 65, '"X\\u000AY"']
    ),
    *(
        Bad(f"apps[0].headers.{name}", "sub", _RESERVED)
        for name in (
            "Host cookie COOKIE Content-Length Transfer_Encoding Connection Upgrade TE "
            "Proxy-Authorization X-Forwarded-For x_forwarded_for X-Forwarded-Host "
            "X-Forwarded-Proto X-Request-Id Forwarded X-AppProxy-User x_appproxy_jwt_assertion "
            "X-APPPROXY-JWT-ASSERTION"
        ).split()
    ),
    # Header names that differ only in case, or in '-' against '_', are the
    # same header (CGI back ends see X_Remote_User as X-Remote-User).
    *(
        Bad(
            "apps[0].headers",
            {first: "sub", second: "email"},
            f"is the same header as {first!r}",
            f"apps[0].headers.{second}",
        )
        for first, second in [
            ("X-Remote-User", "x-remote-user"),
            ("X-Remote-User", "X_Remote_User"),
            ("x_remote-user", "X-REMOTE_USER"),
        ]
    ),
    *(
        Bad("apps[0].headers.X-Remote-User", claim, f"must be a claim name (a string), not {kind}")
        for claim, kind in [(1, "integer"), (["sub"], "array"), (True, "boolean"), ({}, "table")]
    ),
    Bad("apps[0].headers.X-Remote-User", "", "must not be empty"),
    *(
        Bad("oidc.callback_url", callback, _ON_APP_HOST.format("wiki.example.com", "wiki"))
        for callback in [
            "https://wiki.example.com/.appproxy/callback",
            "https://WIKI.example.com:443/cb",
        ]
    ),
]

_ASSIGNED = app(
    pre_authentication="oidc", allowed_users=["alice", "*"], allowed_groups=["g1", "G1"]
)
_FLAGS = app(
    pre_authentication="oidc", persistent_cookie=True, http_only_cookie=False, jwt_assertion=True
)
# Identity headers are kept as written, in file order.
_HEADERS = {
    "X-Remote-User": "preferred_username",
    "remote_groups": "groups",
    "X-Remote-Email": "email",
    "X-Dept": "extension_department",
    "X.Odd!Token": "sub",
}

APP_SIGN_IN_GOOD = [
    Good(
        "apps[0]",
        _ASSIGNED,
        Assignment(users=("alice", "*"), groups=("g1", "G1")),
        "apps[0].assignment",
    ),
    *(Good("apps[0].session_lifetime", value, value) for value in [60, 30 * 24 * 3600]),
    *(
        Good("apps[0]", _FLAGS, value, f"apps[0].{key}")
        for key, value in zip(_COOKIE_FLAGS, [True, False, True], strict=True)
    ),
    Good("apps[0].headers", _HEADERS, tuple(_HEADERS.items())),
    # Another port is another host.
    Good(
        "oidc.callback_url",
        "https://wiki.example.com:8443/.appproxy/callback",
        {"wiki.example.com:8443"},
        "login_hosts",
    ),
]

# A passthrough app has no signed-in user: keys that need one are refused;
# their empty or false values are harmless.  It may list identity headers:
# they are never filled in, but the proxy still strips clients' copies.
PASSTHROUGH_ROWS = [
    *(
        Bad(f"apps[0].{key}", value, "needs sign-in: a passthrough app has no signed-in user")
        for key, value in [
            ("allowed_users", ["alice"]),
            ("allowed_groups", ["staff"]),
            ("jwt_assertion", True),
        ]
    ),
    # The first app that signs in, when there is no [oidc] table, is named.
    Bad(
        "apps[1]",
        app(name="crm", external_url="https://crm.example.com/", pre_authentication="oidc"),
        NO_OIDC.format("crm"),
        "apps[1].pre_authentication",
    ),
    Bad(
        "service.trusted_proxies",
        ["10.0.0.0/8", "proxy.internal"],
        f"'proxy.internal' {_NOT_A_NETWORK}",
        "service.trusted_proxies[1]",
    ),
    Bad("service.trusted_proxies", "10.0.0.0/8", "must be an array of strings, not string"),
    Bad("service.trusted_proxies", [""], "must not be empty", "service.trusted_proxies[0]"),
]

_UNASSIGNED = app(allowed_users=[], allowed_groups=[], jwt_assertion=False)

PASSTHROUGH_GOOD = [
    Good("apps[0]", _UNASSIGNED, Assignment(), "apps[0].assignment"),
    Good("apps[0]", _UNASSIGNED, False, "apps[0].jwt_assertion"),
    Good("apps[0].headers.X-Remote-User", "sub", (("X-Remote-User", "sub"),), "apps[0].headers"),
    Good(
        "service.trusted_proxies",
        ["127.0.0.1", "::1", "10.0.0.0/8", "fd00::1/8"],
        tuple(
            ipaddress.ip_network(network)
            for network in ["127.0.0.1/32", "::1/128", "10.0.0.0/8", "fd00::/8"]
        ),
        "trusted_proxies",
    ),
]

SIGN_IN_UNKNOWN_KEY_ROWS = [
    Bad("oidc.issuer_url", 1, "unknown key (did you mean 'issuer'?)"),
    Bad("builtin_provider.x", 1, "unknown key"),
    Bad("risk.anonymisers", 1, "unknown key (did you mean 'anonymizers'?)"),
    Bad("locations[0].network", 1, "unknown key (did you mean 'networks'?)"),
    Bad("policies[0].app", 1, "unknown key (did you mean 'apps'?)"),
    Bad("apps[0].header", 1, "unknown key (did you mean 'headers'?)"),
    Bad("oidcc", 1, "unknown key (did you mean 'oidc'?)"),
]


class AppSignInConfigTests(SignInTestCase):
    def test_invalid(self) -> None:
        self.assertBad(APP_SIGN_IN_ROWS, self.signin_data)
        self.assertBad(PASSTHROUGH_ROWS)
        everything = changed(
            self.with_policy, "builtin_provider", {"issuer": "https://login.example.com"}
        )
        self.assertBad(SIGN_IN_UNKNOWN_KEY_ROWS, changed(everything, "risk", {}))

    def test_valid(self) -> None:
        self.assertGood(APP_SIGN_IN_GOOD, self.signin_data)
        self.assertGood(PASSTHROUGH_GOOD)

    def test_login_hosts_are_not_app_hosts(self) -> None:
        """
        The callback's host may not be an app's, even a passthrough app's.
        """
        callback = "https://status.example.com/.appproxy/callback"
        self.assertBad(
            [
                Bad(
                    "apps[1]",
                    app(name="status", external_url="https://status.example.com/sub/"),
                    _ON_APP_HOST.format("status.example.com", "status"),
                    "oidc.callback_url",
                )
            ],
            changed(self.signin_data, "oidc.callback_url", callback),
        )


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
        error = self.error(data)
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
_RESERVED_HEADER_NAMES = tuple(
    "host cookie content-length transfer-encoding connection keep-alive upgrade te trailer"
    " proxy-authorization x-forwarded-for x-forwarded-host x-forwarded-proto x-request-id"
    " forwarded".split()
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
            self.with_headers(headers),
            f"apps[0].headers.{second}",
            f"is the same header as {first!r}",
        )

    @given(name=_reserved_spellings())
    def test_reserved_refused(self, name: str) -> None:
        """
        A header appproxy sets or strips itself is refused in any spelling.
        """
        self.assertServiceError(
            self.with_headers({name: "sub"}),
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
        (app,) = self.parse_service(self.with_headers(dict(headers))).apps
        self.assertEqual(app.headers, tuple(headers))
