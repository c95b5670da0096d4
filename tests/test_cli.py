"""
Tests for L{appproxy.cli.main}.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import tomllib
from contextlib import closing, redirect_stderr, redirect_stdout
from pathlib import Path

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from appproxy.cli.install import hidden_path_problem
from appproxy.cli.main import main
from appproxy.config import load_connector_config, load_service_config
from appproxy.daemon import pki
from appproxy.state.connectors import list_connectors, read_admission, read_audit
from appproxy.state.schema import DATABASE_NAME
from tests.visible import visible_directory

_KEYS = ["ca.key", "tls/service.key", "tls/tunnel.key", "connector/connector.key"]
_PUBLIC = [
    "ca.pem",
    "tls/service.pem",
    "tls/tunnel.pem",
    "connector/connector.pem",
    "connector/ca.pem",
    "service.toml",
    "connector/connector.toml",
]


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under C{root}: its mode and, for files, its contents."""
    result: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        st = path.stat()
        data = path.read_bytes() if path.is_file() else None
        result[str(path.relative_to(root))] = (stat.S_IMODE(st.st_mode), data)
    return result


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _database(state: Path) -> sqlite3.Connection:
    """The state database in the service's state directory C{state}."""
    return sqlite3.connect(state / DATABASE_NAME)


def _connector_ids(state: Path) -> list[str]:
    with closing(_database(state)) as connection:
        return [record.id for record in list_connectors(connection)]


class InitInstallStepTests(SynchronousTestCase):
    """
    C{appproxy init} prints the C{appproxy install} steps only when install
    would accept the paths (its own check), and otherwise what to do instead.
    """

    def init_in(self, directory: Path, prefix: str) -> str:
        self.patch(sys, "prefix", prefix)
        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(io.StringIO()):
            code = main(["init", "--state-dir", str(directory), "--domain", "example.test"])
        self.assertEqual(code, 0)
        return out.getvalue()

    def assertNoInstallStep(self, out: str, hidden: str) -> None:
        self.assertNotIn("appproxy install", out.replace("'appproxy install' cannot", ""))
        self.assertIn("'appproxy install' cannot run these under systemd: ", out)
        self.assertIn(f"under {hidden}", out)
        self.assertIn("init into /etc/appproxy with --data-dir /var/lib/appproxy", out)
        self.assertIn("twistd --nodaemon --pidfile= appproxy --config", out)

    def test_visible_paths(self) -> None:
        directory = visible_directory(self) / "appproxy"
        self.assertIsNone(
            hidden_path_problem(prefix=Path("/opt/appproxy"), config=directory, state=None)
        )
        out = self.init_in(directory, "/opt/appproxy")
        self.assertIn(f"appproxy install service --config {directory}/service.toml", out)
        self.assertNotIn("cannot run these under systemd", out)

    def test_state_dir_in_tmp(self) -> None:
        base = Path(tempfile.mkdtemp(dir="/tmp"))
        self.addCleanup(shutil.rmtree, base)
        self.assertNoInstallStep(self.init_in(base / "appproxy", "/opt/appproxy"), "/tmp")

    def test_python_under_root(self) -> None:
        directory = Path(self.mktemp()).absolute()
        self.assertNoInstallStep(self.init_in(directory, "/root/.venv"), "/root")


class InitTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Where a systemd unit can see it, so that init prints the install steps.
        self.base = visible_directory(self)
        self.dir = self.base / "appproxy"

    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def init(self, *extra: str) -> tuple[int, str, str]:
        return self.run_main(
            "init", "--state-dir", str(self.dir), "--domain", "example.test", *extra
        )

    def test_files_and_modes(self) -> None:
        # A virtualenv a systemd unit can see (this one may be under /root).
        self.patch(sys, "prefix", "/opt/appproxy")
        code, out, err = self.init()
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(stat.S_IMODE(self.dir.stat().st_mode), 0o700)
        for name in _KEYS:
            path = self.dir / name
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600, name)
            self.assertIn(b"-----BEGIN PRIVATE KEY-----", path.read_bytes())
            self.assertIn(f"{name}  (private key, mode 0600)", out)
        for name in _PUBLIC:
            self.assertTrue((self.dir / name).is_file(), name)
            self.assertIn(name, out)
        state = self.dir / "state"
        self.assertTrue(state.is_dir())
        # Only the state database, recording the connector (InitConnectorTests).
        self.assertEqual([p.name for p in state.iterdir()], ["appproxy.sqlite"])
        self.assertEqual(stat.S_IMODE((state / "appproxy.sqlite").stat().st_mode), 0o600)
        self.assertIn("state/appproxy.sqlite  (the service's state database; the connector", out)
        self.assertEqual(
            (self.dir / "connector/ca.pem").read_bytes(), (self.dir / "ca.pem").read_bytes()
        )
        self.assertIn(
            f"twistd --nodaemon --pidfile= appproxy --config {self.dir.absolute()}/service.toml",
            out,
        )
        self.assertIn(
            "twistd --nodaemon --pidfile= appproxy-connector --config "
            f"{self.dir.absolute()}/connector/connector.toml",
            out,
        )
        self.assertIn("https://demo.example.test:8443/", out)
        self.assertIn(f"appproxy users add alice --state-dir {self.dir.absolute()}\n", out)
        if hidden_path_problem(prefix=Path(sys.prefix), config=self.dir, state=None) is None:
            config = self.dir.absolute()
            self.assertIn(f"appproxy install service --config {config}/service.toml", out)
            self.assertIn(
                f"appproxy install connector --config {config}/connector/connector.toml", out
            )

    def test_client_secret(self) -> None:
        """
        init writes a random client secret, mode 0600, of at least 16
        characters, for the [oidc] client registered at the built-in
        provider.
        """
        code, out, _ = self.init()
        self.assertEqual(code, 0)
        path = self.dir / "oidc-client-secret"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertIn("oidc-client-secret  (private key, mode 0600)", out)
        secret = path.read_text("ascii")
        self.assertTrue(secret.endswith("\n"))
        secret = secret.strip()
        self.assertGreaterEqual(len(secret), 16)
        self.assertRegex(secret, r"\A[A-Za-z0-9_-]+\Z")
        self.assertNotIn(secret, out)
        self.assertNotIn(secret, (self.dir / "service.toml").read_text())
        # Another run makes another secret.
        other = self.base / "other"
        code, _, _ = self.run_main("init", "--state-dir", str(other), "--domain", "example.test")
        self.assertEqual(code, 0)
        self.assertNotEqual((other / "oidc-client-secret").read_text().strip(), secret)

    def test_service_toml_loads(self) -> None:
        """
        The service.toml that init writes passes the service's own checks:
        the app signs in with the built-in provider at login.DOMAIN.
        """
        self.assertEqual(self.init()[0], 0)
        root = self.dir.absolute()
        config = load_service_config(root / "service.toml")
        (app,) = config.apps
        self.assertEqual(app.name, "demo")
        self.assertEqual(app.external_url, "https://demo.example.test:8443/")
        self.assertTrue(app.signs_in)
        self.assertEqual(
            app.headers,
            (
                ("X-Remote-User", "preferred_username"),
                ("X-Remote-Name", "name"),
                ("X-Remote-Email", "email"),
                ("X-Remote-Groups", "groups"),
            ),
        )
        oidc = config.oidc
        assert oidc is not None
        self.assertEqual(oidc.issuer, "https://login.example.test:8443")
        self.assertEqual(oidc.callback_url, "https://login.example.test:8443/.appproxy/callback")
        self.assertEqual(oidc.client_id, "appproxy")
        self.assertEqual(oidc.client_secret_file, root / "oidc-client-secret")
        self.assertEqual(oidc.client_secret, (self.dir / "oidc-client-secret").read_text().strip())
        self.assertEqual(oidc.provider_ca_pem, (self.dir / "ca.pem").read_bytes())
        self.assertEqual(oidc.provider_address, "127.0.0.1:8443")
        builtin = config.builtin_provider
        assert builtin is not None
        self.assertEqual(builtin.issuer, "https://login.example.test:8443")
        # The relying party talks to the built-in provider: same issuer.
        self.assertEqual(oidc.issuer, builtin.issuer)
        self.assertEqual(builtin.users_file, root / "state/users.json")
        self.assertEqual(config.state_dir, root / "state")
        self.assertEqual(config.login_hosts, {"login.example.test:8443"})
        # The service certificate covers the login host.
        service_cert = _cert(self.dir / "tls/service.pem")
        san = service_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertIn("*.example.test", san.value.get_values_for_type(x509.DNSName))

    def test_service_toml_port_443(self) -> None:
        """
        With --port 443 the login host's URLs have no port.
        """
        self.assertEqual(self.init("--port", "443", "--listen", "tcp:443")[0], 0)
        config = load_service_config(self.dir / "service.toml")
        assert config.oidc is not None and config.builtin_provider is not None
        self.assertEqual(config.oidc.issuer, "https://login.example.test")
        self.assertEqual(config.oidc.callback_url, "https://login.example.test/.appproxy/callback")
        self.assertEqual(config.oidc.provider_address, "127.0.0.1:443")
        self.assertEqual(config.builtin_provider.issuer, "https://login.example.test")
        self.assertEqual(config.apps[0].external_url, "https://demo.example.test/")

    def test_service_toml(self) -> None:
        self.assertEqual(self.init()[0], 0)
        with open(self.dir / "service.toml", "rb") as f:
            config = tomllib.load(f)
        self.assertEqual(
            set(config), {"service", "tunnel", "metrics", "apps", "oidc", "builtin_provider"}
        )
        self.assertEqual(config["metrics"], {"listen": "tcp:9464:interface=127.0.0.1"})
        self.assertEqual(
            config["service"],
            {
                "listen": "tcp:8443:interface=127.0.0.1",
                "state_dir": "state",
                "queue_timeout": 10,
                "certificates": [{"cert": "tls/service.pem", "key": "tls/service.key"}],
            },
        )
        self.assertEqual(
            config["tunnel"],
            {
                "listen": "tcp:8444:interface=127.0.0.1",
                "cert": "tls/tunnel.pem",
                "key": "tls/tunnel.key",
                "connector_ca": "ca.pem",
                "connector_ca_key": "ca.key",
            },
        )
        self.assertEqual(
            config["apps"],
            [
                {
                    "name": "demo",
                    "external_url": "https://demo.example.test:8443/",
                    "internal_url": "http://127.0.0.1:8080/",
                    "connector_group": "default",
                    "pre_authentication": "oidc",
                    "headers": {
                        "X-Remote-User": "preferred_username",
                        "X-Remote-Name": "name",
                        "X-Remote-Email": "email",
                        "X-Remote-Groups": "groups",
                    },
                }
            ],
        )
        self.assertEqual(
            config["oidc"],
            {
                "issuer": "https://login.example.test:8443",
                "client_id": "appproxy",
                "client_secret_file": "oidc-client-secret",
                "callback_url": "https://login.example.test:8443/.appproxy/callback",
                "provider_ca": "ca.pem",
                "provider_address": "127.0.0.1:8443",
            },
        )
        self.assertEqual(config["builtin_provider"], {"issuer": "https://login.example.test:8443"})
        # Relative paths in the file name files next to it.
        for entry in (config["service"]["certificates"][0], config["tunnel"]):
            for key in ("cert", "key"):
                self.assertTrue((self.dir / entry[key]).is_file())
        self.assertTrue((self.dir / config["tunnel"]["connector_ca"]).is_file())
        self.assertTrue((self.dir / config["tunnel"]["connector_ca_key"]).is_file())
        self.assertTrue((self.dir / config["oidc"]["client_secret_file"]).is_file())
        self.assertTrue((self.dir / config["oidc"]["provider_ca"]).is_file())

    def test_connector_toml(self) -> None:
        self.assertEqual(self.init()[0], 0)
        with open(self.dir / "connector/connector.toml", "rb") as f:
            config = tomllib.load(f)
        self.assertEqual(
            config,
            {
                "connector": {
                    "service_host": "tunnel.example.test",
                    "service_port": 8444,
                    "service_address": "127.0.0.1",
                    "connections": 4,
                    "capacity": 100,
                    "ca": "ca.pem",
                    "cert": "connector.pem",
                    "key": "connector.key",
                }
            },
        )
        for key in ("ca", "cert", "key"):
            self.assertTrue((self.dir / "connector" / config["connector"][key]).is_file())

    def test_options(self) -> None:
        code, _, err = self.init(
            "--listen",
            "tcp:443",
            "--port",
            "443",
            "--tunnel-port",
            "9444",
            "--group",
            "finance",
            "--connector-id",
            "conn-9",
            "--internal-url",
            "https://intranet.local:8443/wiki/",
            "--app-name",
            "Wiki",
        )
        self.assertEqual((code, err), (0, ""))
        with open(self.dir / "service.toml", "rb") as f:
            service = tomllib.load(f)
        with open(self.dir / "connector/connector.toml", "rb") as f:
            connector = tomllib.load(f)
        self.assertEqual(service["service"]["listen"], "tcp:443")
        self.assertEqual(service["tunnel"]["listen"], "tcp:9444:interface=127.0.0.1")
        self.assertEqual(connector["connector"]["service_port"], 9444)
        (app,) = service["apps"]
        self.assertEqual(app["name"], "Wiki")
        self.assertEqual(app["external_url"], "https://wiki.example.test/")
        self.assertEqual(app["internal_url"], "https://intranet.local:8443/wiki/")
        self.assertEqual(app["connector_group"], "finance")
        self.assertEqual(
            service["oidc"]["callback_url"], "https://login.example.test/.appproxy/callback"
        )
        self.assertEqual(load_service_config(self.dir / "service.toml").apps[0].name, "Wiki")
        self.assertEqual(
            pki.connector_identity(_cert(self.dir / "connector/connector.pem")),
            pki.ConnectorIdentity(connector_id="conn-9", group="finance"),
        )

    def test_port_sets_default_listen(self) -> None:
        self.assertEqual(self.init("--port", "9443")[0], 0)
        with open(self.dir / "service.toml", "rb") as f:
            service = tomllib.load(f)
        self.assertEqual(service["service"]["listen"], "tcp:9443:interface=127.0.0.1")
        self.assertEqual(service["apps"][0]["external_url"], "https://demo.example.test:9443/")

    def test_data_dir(self) -> None:
        """
        --data-dir writes an absolute service.state_dir (the one place the
        service writes; /var/lib/appproxy under systemd) and makes no
        DIR/state; the state database, recording the connector, is made
        there (the directory 0700, its missing parents 0755).
        """
        data = self.base / "var" / "lib" / "appproxy"
        code, out, err = self.init("--data-dir", str(data))
        self.assertEqual((code, err), (0, ""))
        with open(self.dir / "service.toml", "rb") as f:
            self.assertEqual(tomllib.load(f)["service"]["state_dir"], str(data.absolute()))
        self.assertEqual(load_service_config(self.dir / "service.toml").state_dir, data.absolute())
        self.assertFalse((self.dir / "state").exists())
        self.assertEqual([p.name for p in data.iterdir()], ["appproxy.sqlite"])
        self.assertEqual(stat.S_IMODE(data.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(data.parent.stat().st_mode), 0o755)
        self.assertEqual(_connector_ids(data), ["connector-1"])
        self.assertIn(f"The service keeps its state in {data.absolute()}; its state database", out)

    def test_public_service(self) -> None:
        """
        --bind 0.0.0.0 --port 443: both listeners on every address, the URLs
        without a port; the service reaches its own provider on loopback; the
        connector resolves tunnel.DOMAIN (no service_address).
        """
        code, _, err = self.init("--bind", "0.0.0.0", "--port", "443", "--tunnel-port", "8444")
        self.assertEqual((code, err), (0, ""))
        config = load_service_config(self.dir / "service.toml")
        self.assertEqual(config.listen, "tcp:443:interface=0.0.0.0")
        self.assertEqual(config.tunnel_listen, "tcp:8444:interface=0.0.0.0")
        self.assertEqual(config.apps[0].external_url, "https://demo.example.test/")
        assert config.oidc is not None
        self.assertEqual(config.oidc.provider_address, "127.0.0.1:443")
        self.assertEqual(config.oidc.issuer, "https://login.example.test")
        with open(self.dir / "connector/connector.toml", "rb") as f:
            self.assertNotIn("service_address", tomllib.load(f)["connector"])
        connector = load_connector_config(self.dir / "connector/connector.toml")
        self.assertEqual(connector.service_address, "tunnel.example.test")

    def test_remote_connector(self) -> None:
        """--service-address is what the connector dials."""
        code, _, err = self.init("--bind", "::", "--service-address", "203.0.113.10")
        self.assertEqual((code, err), (0, ""))
        config = load_service_config(self.dir / "service.toml")
        self.assertEqual(config.listen, "tcp:8443:interface=\\:\\:")
        assert config.oidc is not None
        self.assertEqual(config.oidc.provider_address, "[::1]:8443")
        connector = load_connector_config(self.dir / "connector/connector.toml")
        self.assertEqual(connector.service_address, "203.0.113.10")

    def test_bind_specific_address(self) -> None:
        """A specific --bind address is the one everything dials."""
        code, _, err = self.init("--bind", "192.0.2.7", "--port", "9443")
        self.assertEqual((code, err), (0, ""))
        config = load_service_config(self.dir / "service.toml")
        self.assertEqual(config.listen, "tcp:9443:interface=192.0.2.7")
        assert config.oidc is not None
        self.assertEqual(config.oidc.provider_address, "192.0.2.7:9443")
        connector = load_connector_config(self.dir / "connector/connector.toml")
        self.assertEqual(connector.service_address, "192.0.2.7")

    def test_certificates(self) -> None:
        self.assertEqual(self.init()[0], 0)
        ca = _cert(self.dir / "ca.pem")
        connector = _cert(self.dir / "connector/connector.pem")
        connector.verify_directly_issued_by(ca)
        self.assertEqual(
            pki.connector_identity(connector),
            pki.ConnectorIdentity(connector_id="connector-1", group="default"),
        )

        def names(path: str) -> list[str]:
            cert = _cert(self.dir / path)
            cert.verify_directly_issued_by(ca)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            return san.get_values_for_type(x509.DNSName)

        self.assertEqual(names("tls/tunnel.pem"), ["tunnel.example.test"])
        self.assertEqual(names("tls/service.pem"), ["*.example.test", "example.test"])

    def test_second_run_refused(self) -> None:
        self.assertEqual(self.init()[0], 0)
        before = _snapshot(self.dir)
        code, out, err = self.init("--group", "other")
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("appproxy: error: "), err)
        self.assertIn("not empty", err)
        self.assertEqual(_snapshot(self.dir), before)

    def test_empty_existing_dir(self) -> None:
        self.dir.mkdir(mode=0o755)
        os.chmod(self.dir, 0o755)
        self.assertEqual(self.init()[0], 0)
        self.assertEqual(stat.S_IMODE(self.dir.stat().st_mode), 0o700)

    def test_not_a_directory(self) -> None:
        self.dir.write_bytes(b"x")
        code, _, err = self.init()
        self.assertEqual(code, 1)
        self.assertIn("not a directory", err)

    def test_bad_values(self) -> None:
        for args in [
            ("--domain", "not a domain"),
            ("--domain", "bad_domain.test"),
            ("--domain=-x.test",),
            ("--domain", "10.0.0.1"),
            ("--domain", "*.example.test"),
            ("--domain", "example..test"),
            ("--domain", "a" * 64 + ".test"),
            ("--domain", "example.test", "--group", "bad group"),
            ("--domain", "example.test", "--connector-id", ""),
            ("--domain", "example.test", "--app-name", "bad name"),
            ("--domain", "example.test", "--app-name", "under_score"),
            ("--domain", "example.test", "--internal-url", "ftp://intranet/"),
            ("--domain", "example.test", "--internal-url", "http://intranet/app"),
            ("--domain", "example.test", "--internal-url", "http://intranet/?q=1"),
        ]:
            code, out, err = self.run_main("init", "--state-dir", str(self.dir), *args)
            self.assertEqual(code, 1, args)
            self.assertEqual(out, "", args)
            self.assertTrue(err.startswith("appproxy: error: "), (args, err))
            self.assertNotIn("Traceback", err)
            self.assertFalse(self.dir.exists(), args)

    def test_usage_errors(self) -> None:
        code, _, err = self.run_main("init", "--domain", "example.test")
        self.assertEqual(code, 2)
        self.assertIn("--state-dir", err)
        code, _, err = self.run_main(
            "init", "--state-dir", str(self.dir), "--domain", "x.test", "--port", "0"
        )
        self.assertEqual(code, 2)
        self.assertFalse(self.dir.exists())
        for args in (("--bind", "not-an-ip"), ("--service-address", "bad name!")):
            code, _, err = self.run_main(
                "init", "--state-dir", str(self.dir), "--domain", "x.test", *args
            )
            self.assertEqual(code, 2, args)
            self.assertIn(args[0], err)
            self.assertFalse(self.dir.exists())
        code, _, err = self.run_main()
        self.assertEqual(code, 2)
        self.assertIn("init", err)

    def test_unwritable_parent(self) -> None:
        """An OSError is one line, not a traceback, and nothing is left behind."""
        if os.geteuid() == 0:
            target = Path("/proc/appproxy-test")
        else:
            os.chmod(self.base, 0o500)
            self.addCleanup(os.chmod, self.base, 0o700)
            target = self.dir
        code, _, err = self.run_main("init", "--state-dir", str(target), "--domain", "example.test")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("appproxy: error: "), err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertFalse(target.exists())

    def test_python_m(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "appproxy", "--help"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parent.parent,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("init", result.stdout)


class InitConnectorTests(SynchronousTestCase):
    """
    The connector init issues is recorded in the service's state database
    (the service admits no other), and init says how to register one on
    another host instead of copying a key there.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()

    def init(self, *extra: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["init", "--state-dir", str(self.dir), "--domain", "example.test", *extra])
        return code, out.getvalue(), err.getvalue()

    def test_recorded_and_admitted(self) -> None:
        code, _, err = self.init("--group", "finance", "--connector-id", "conn-9")
        self.assertEqual((code, err), (0, ""))
        cert_pem = (self.dir / "connector/connector.pem").read_bytes()
        serial = pki.certificate_serial(cert_pem)
        with closing(_database(self.dir / "state")) as connection:
            (record,) = list_connectors(connection)
            admission = read_admission(connection)
            events = read_audit(connection, since=None, limit=10)
        self.assertEqual((record.id, record.group), ("conn-9", "finance"))
        self.assertEqual(record.state, "enabled")
        self.assertEqual(record.serial, serial)
        self.assertEqual(record.registered_by, "appproxy init")
        self.assertAlmostEqual(
            record.not_after,
            _cert(self.dir / "connector/connector.pem").not_valid_after_utc.timestamp(),
        )
        # The service would admit it, and only it.
        self.assertIsNone(admission.decide(serial, "conn-9"))
        self.assertEqual(admission.decide("1234", "connector-1"), "unknown")
        self.assertEqual(
            [(e.event, e.actor, e.connector_id) for e in events],
            [("register", "appproxy init", "conn-9")],
        )

    def test_remote_connector_commands(self) -> None:
        """
        For a connector on another host: a one-time token for the group, and
        appproxy-connector register pinned to the CA's fingerprint.
        """
        code, out, _ = self.init("--group", "finance", "--tunnel-port", "9444")
        self.assertEqual(code, 0)
        fingerprint = pki.ca_fingerprint((self.dir / "ca.pem").read_bytes())
        self.assertIn(
            f"  appproxy connectors token create --group finance --state-dir {self.dir}\n", out
        )
        (line,) = [x for x in out.splitlines() if x.startswith("  appproxy-connector register")]
        self.assertEqual(
            shlex.split(line),
            [
                *("appproxy-connector", "register"),
                *("--service", "https://tunnel.example.test:9444"),
                *("--ca-fingerprint", fingerprint),
                *("--state-dir", "/var/lib/appproxy-connector"),
                *("--token-file", "FILE"),
                *("--address", "127.0.0.1"),
            ],
        )
        # A public service: the connector resolves the tunnel's name.
        other = Path(self.mktemp()).absolute()
        out2 = io.StringIO()
        with redirect_stdout(out2):
            argv = ["init", "--state-dir", str(other), "--domain", "example.test"]
            self.assertEqual(main([*argv, "--bind", "0.0.0.0"]), 0)
        (line,) = [x for x in out2.getvalue().splitlines() if "appproxy-connector register" in x]
        self.assertNotIn("--address", line)
        self.assertIn("--service https://tunnel.example.test:8444 ", line)

    def test_connector_id_already_recorded(self) -> None:
        """
        A --data-dir kept from another service that already records the
        connector id: one line, and nothing of this run is left behind
        (the other service's database is left as it was).
        """
        data = Path(self.mktemp()).absolute()
        first = Path(self.mktemp()).absolute()
        with redirect_stdout(io.StringIO()):
            argv = ["init", "--domain", "example.test", "--data-dir", str(data)]
            self.assertEqual(main([*argv, "--state-dir", str(first)]), 0)
        before = (data / DATABASE_NAME).read_bytes()
        code, out, err = self.init("--data-dir", str(data))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("already records a connector 'connector-1'", err)
        self.assertFalse(self.dir.exists())
        self.assertEqual([p.name for p in data.iterdir()], [DATABASE_NAME])
        self.assertEqual((data / DATABASE_NAME).read_bytes(), before)
        # Another id is fine: both are recorded.
        self.assertEqual(self.init("--data-dir", str(data), "--connector-id", "c2")[0], 0)
        self.assertEqual(sorted(_connector_ids(data)), ["c2", "connector-1"])

    def test_no_connector(self) -> None:
        """
        --no-connector: no connector key or configuration anywhere, nothing
        recorded; every connector registers, as the output says.
        """
        code, out, err = self.init("--no-connector", "--group", "finance")
        self.assertEqual((code, err), (0, ""))
        self.assertFalse((self.dir / "connector").exists())
        self.assertEqual(list((self.dir / "state").iterdir()), [])
        self.assertNotIn("connector.toml", out)
        self.assertNotIn("connector.key", out)
        self.assertIn("Run it in the foreground, the service:", out)
        self.assertIn("appproxy connectors token create --group finance", out)
        self.assertIn("appproxy-connector register --service https://tunnel.example.test:8444", out)
        config = load_service_config(self.dir / "service.toml")
        self.assertEqual(config.apps[0].connector_group, "finance")
        self.assertEqual(config.connector_ca_key, self.dir / "ca.key")
