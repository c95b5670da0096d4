"""
A whole appproxy deployment on loopback for integration tests: a real
backend (twisted.web), the real service and real connectors, with real TLS
and certificates from L{appproxy.daemon.pki}, configured through real TOML files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from appproxy.config import load_connector_config, load_service_config
from appproxy.daemon import pki
from appproxy.daemon.connector_tap import ConnectorService
from appproxy.daemon.service_tap import AppProxyService
from tests import connectors_db

DOMAIN = "appproxy.test"


class Backend(resource.Resource):
    """
    The internal app: echoes requests as JSON and offers a few behaviours
    the tests need.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0
        self.pending: list[Any] = []

    def render(self, request: Any) -> Any:
        self.hits += 1
        path = request.path
        if path == b"/redirect":
            request.setResponseCode(302)
            request.setHeader(b"location", request.args[b"to"][0])
            return b""
        if path == b"/cookie":
            request.setHeader(b"set-cookie", request.args[b"c"][0])
            return b"ok"
        if path == b"/bytes":
            n = int(request.args[b"n"][0])
            request.setHeader(b"content-type", b"application/octet-stream")
            return b"x" * n
        if path == b"/slow":
            delay = float(request.args[b"delay"][0])
            call = reactor.callLater(delay, self._finish_slow, request)
            self.pending.append(call)

            def cancel(_: object) -> None:
                if call.active():
                    call.cancel()

            request.notifyFinish().addErrback(cancel)
            return server.NOT_DONE_YET
        return self._echo(request)

    def _finish_slow(self, request: Any) -> None:
        if not request._disconnected:
            request.write(self._echo(request))
            request.finish()

    def _echo(self, request: Any) -> bytes:
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": [
                    [k.decode("latin-1").lower(), v.decode("latin-1")]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                    for v in vs
                ],
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()

    def cancel_pending(self) -> None:
        for call in self.pending:
            if call.active():
                call.cancel()


@implementer(IAgentEndpointFactory)
class LoopbackTLS:
    """
    Resolve every host name to 127.0.0.1:port, verifying TLS against the
    deployment's CA with the URL's host name (as a browser would with DNS).
    """

    def __init__(self, port: int, ca_pem: bytes) -> None:
        self.port = port
        self.trust = Certificate.loadPEM(ca_pem)

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        options = optionsForClientTLS(uri.host.decode("ascii"), trustRoot=self.trust)
        return wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port))


def _toml_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return _toml(value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


class Deployment:
    """
    Build with C{yield Deployment.start(testcase, ...)}; everything is torn
    down by the test's cleanups.
    """

    def __init__(
        self,
        testcase: Any,
        apps: list[dict[str, Any]],
        queue_timeout: float,
        extra_toml: str = "",
        connector_ca_key: bool = False,
    ) -> None:
        self.testcase = testcase
        #: The service gets the CA's key ([tunnel] connector_ca_key): it signs
        #: renewals (else it answers them 503 registration_disabled).
        self.connector_ca_key = connector_ca_key
        #: More of service.toml (sign-in, policies), appended as it is.
        self.extra_toml = extra_toml
        self.root = Path(testcase.mktemp())
        self.root.mkdir(parents=True)
        self.ca = pki.generate_ca("appproxy test CA")
        self.backend = Backend()
        # Twisted types the factory as ServerFactory[_ProtoWithFactory]; Site is
        # a ServerFactory of HTTP channels, which the invariant generic rejects.
        self.backend_port = reactor.listenTCP(
            0,
            server.Site(self.backend),  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        testcase.addCleanup(self.backend_port.stopListening)
        testcase.addCleanup(self.backend.cancel_pending)
        self.apps = apps
        self.queue_timeout = queue_timeout
        self.service: AppProxyService | None = None
        self.connectors: list[ConnectorService] = []
        self.public_port = 0
        self.tunnel_port = 0
        self._write_pki()

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{cast(IPv4Address, self.backend_port.getHost()).port}/"

    @property
    def state_dir(self) -> Path:
        """The service's C{state_dir} (its state database)."""
        return self.root / "state"

    def _write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def _write_pki(self) -> None:
        self._write("ca.pem", self.ca.cert_pem)
        web = pki.issue_server_certificate(self.ca, [f"*.{DOMAIN}", DOMAIN])
        self._write("web.pem", web.cert_pem)
        self._write("web.key", web.key_pem)
        tunnel = pki.issue_server_certificate(self.ca, [f"tunnel.{DOMAIN}"])
        self._write("tunnel.pem", tunnel.cert_pem)
        self._write("tunnel.key", tunnel.key_pem)

    def write_service_config(self, public: int = 0, tunnel: int = 0) -> Path:
        lines = [
            "[service]",
            f'listen = "tcp:{public}:interface=127.0.0.1"',
            'state_dir = "state"',
            f"queue_timeout = {self.queue_timeout!r}",
            "[[service.certificates]]",
            'cert = "web.pem"',
            'key = "web.key"',
            "[tunnel]",
            f'listen = "tcp:{tunnel}:interface=127.0.0.1"',
            'cert = "tunnel.pem"',
            'key = "tunnel.key"',
            'connector_ca = "ca.pem"',
        ]
        if self.connector_ca_key:
            self._write("ca.key", self.ca.key_pem).chmod(0o600)
            lines.append('connector_ca_key = "ca.key"')
        for app in self.apps:
            lines.append("[[apps]]")
            settings = {
                "internal_url": self.backend_url,
                "connector_group": "default",
                "pre_authentication": "passthrough",
                **app,
            }
            headers = settings.pop("headers", None)
            lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
            if headers:
                lines.append("[apps.headers]")
                lines += [f"{_toml(name)} = {_toml(claim)}" for name, claim in headers.items()]
        lines.append(self.extra_toml.replace("{public_port}", str(public)))
        return self._write("service.toml", "\n".join(lines).encode())

    def start_service(self, public: int = 0, tunnel: int = 0) -> AppProxyService:
        config = load_service_config(self.write_service_config(public, tunnel))
        service = AppProxyService(config, reactor)
        service.startService()
        assert service.public_port is not None and service.tunnel_port is not None
        self.public_port = cast(IPv4Address, service.public_port.getHost()).port
        self.tunnel_port = cast(IPv4Address, service.tunnel_port.getHost()).port
        self.service = service
        self.testcase.addCleanup(self._stop_service, service)
        return service

    def _stop_service(self, service: AppProxyService) -> Deferred[None] | None:
        if service.running:
            return service.stopService()
        return None

    def start_connector(
        self, group: str = "default", connections: int = 2, capacity: int = 100, name: str = ""
    ) -> ConnectorService:
        name = name or f"connector-{len(self.connectors) + 1}"
        # Recorded in the service's state database, or admission refuses it.
        pair = connectors_db.issue(self.state_dir, self.ca, name, group)
        self._write(f"{name}/connector.pem", pair.cert_pem)
        self._write(f"{name}/connector.key", pair.key_pem)
        self._write(f"{name}/ca.pem", self.ca.cert_pem)
        path = self._write(
            f"{name}/connector.toml",
            "\n".join(
                [
                    "[connector]",
                    f'service_host = "tunnel.{DOMAIN}"',
                    f"service_port = {self.tunnel_port}",
                    'service_address = "127.0.0.1"',
                    f"connections = {connections}",
                    f"capacity = {capacity}",
                    'ca = "ca.pem"',
                    'cert = "connector.pem"',
                    'key = "connector.key"',
                ]
            ).encode(),
        )
        connector = ConnectorService(load_connector_config(path), reactor)
        self.connectors.append(connector)
        self.testcase.addCleanup(self._stop_connector, connector)
        if self.service is not None and self.service.running:
            # It dials once the running service has read it from its database.
            admitted = self.service.refresh_admission()
            admitted.addCallback(lambda _: connector.startService())
        else:
            connector.startService()
        return connector

    def _stop_connector(self, connector: ConnectorService) -> Deferred[None] | None:
        if connector.running:
            return connector.stopService()
        return None

    @inlineCallbacks
    def wait_for_connections(
        self, count: int, group: str = "default", timeout: float = 10.0
    ) -> Any:
        """
        Wait until C{count} tunnel connections of C{group} are ready.
        """
        assert self.service is not None
        for _ in range(int(timeout / 0.02)):
            ready = [c for c in self.service.groups[group].connections if c.ready]  # type: ignore[attr-defined]
            if len(ready) >= count:
                return
            yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"{count} tunnel connections did not come up within {timeout} s")

    def client(self) -> HTTPClient:
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(
            reactor, LoopbackTLS(self.public_port, self.ca.cert_pem), pool=pool
        )
        return HTTPClient(agent)

    def url(self, app: str, path: str = "/") -> str:
        return f"https://{app}.{DOMAIN}{path}"


@inlineCallbacks
def start(
    testcase: Any,
    apps: list[dict[str, Any]] | None = None,
    connectors: int = 1,
    connections: int = 2,
    queue_timeout: float = 5.0,
    connector_ca_key: bool = False,
) -> Any:
    """
    A deployment with one app C{web} (passthrough) unless C{apps} says
    otherwise, and C{connectors} connectors of the group C{default}; with
    C{connector_ca_key}, its service signs renewals.
    """
    if apps is None:
        apps = [{"name": "web", "external_url": f"https://web.{DOMAIN}/"}]
    deployment = Deployment(testcase, apps, queue_timeout, connector_ca_key=connector_ca_key)
    deployment.start_service()
    for _ in range(connectors):
        deployment.start_connector(connections=connections)
    if connectors:
        yield deployment.wait_for_connections(connectors * connections)
    return deployment


class _Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


@inlineCallbacks
def raw_exchange(
    d: Deployment, raw: bytes, host: str = f"web.{DOMAIN}", timeout: float = 10
) -> Any:
    """
    Send C{raw} bytes over TLS to the service and return everything it sends
    back before closing the connection (which it must do within C{timeout}).
    """
    endpoint = LoopbackTLS(d.public_port, d.ca.cert_pem).endpointForURI(
        type("U", (), {"host": host.encode()})()
    )
    collector = _Collect()
    protocol = yield connectProtocol(endpoint, collector)
    protocol.transport.write(raw)
    result = yield collector.done.addTimeout(timeout, reactor)
    return result


class _H2Client(Protocol):
    """
    A minimal HTTP/2 browser stand-in (h2 library), for ALPN h2 tests.
    """

    def __init__(self, host: str, requests: list[tuple[str, str, bytes]]) -> None:
        import h2.config
        import h2.connection

        self.host = host
        self.requests = requests
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.results: dict[int, list[Any]] = {}
        self.order: list[int] = []
        self.pending_body: dict[int, bytes] = {}
        self.done: Deferred[list[tuple[int, bytes]]] = Deferred()

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        for method, path, body in self.requests:
            sid = self.conn.get_next_available_stream_id()
            self.order.append(sid)
            self.results[sid] = [0, b""]
            headers = [
                (":method", method),
                (":scheme", "https"),
                (":authority", self.host),
                (":path", path),
            ]
            if body:
                headers.append(("content-length", str(len(body))))
            self.conn.send_headers(sid, headers, end_stream=not body)
            if body:
                self.pending_body[sid] = body
        self._send_bodies()
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    def _send_bodies(self) -> None:
        for sid, body in list(self.pending_body.items()):
            while body:
                window = min(
                    self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
                )
                if window <= 0:
                    break
                self.conn.send_data(sid, body[:window])
                body = body[window:]
            if body:
                self.pending_body[sid] = body
            else:
                del self.pending_body[sid]
                self.conn.end_stream(sid)

    def dataReceived(self, data: bytes) -> None:
        import h2.events

        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.results[event.stream_id][0] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.results[event.stream_id][1] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                self._send_bodies()
            elif isinstance(event, h2.events.StreamEnded):
                if all(self.results[s][0] and s not in self.open_streams() for s in self.order):
                    pass
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())
        if not self.open_streams() and not self.done.called:
            self.done.callback([(self.results[s][0], self.results[s][1]) for s in self.order])
            self.transport.loseConnection()

    def open_streams(self) -> list[int]:
        return [s for s in self.order if s in self.conn.streams and not self.conn.streams[s].closed]


@inlineCallbacks
def h2_exchange(d: Deployment, requests: list[tuple[str, str, bytes]], app: str = "web") -> Any:
    host = f"{app}.{DOMAIN}"
    options = optionsForClientTLS(
        host, trustRoot=Certificate.loadPEM(d.ca.cert_pem), acceptableProtocols=[b"h2"]
    )
    endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", d.public_port))
    client = _H2Client(host, requests)
    yield connectProtocol(endpoint, client)
    result = yield client.done.addTimeout(20, reactor)
    return result


class _StalledH2Download(Protocol):
    """
    An HTTP/2 client with a 1 GiB window that reads the response headers,
    then stops reading from its socket until told to go on.
    """

    def __init__(self, host: str, path: str) -> None:
        import h2.config
        import h2.connection
        import h2.settings

        self.host, self.path = host, path
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.settings: dict[h2.settings.SettingCodes | int, int] = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**30
        }
        self.received = 0
        self.started: Deferred[None] = Deferred()
        self.finished: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.conn.update_settings(self.settings)
        self.conn.increment_flow_control_window(2**30)
        self.conn.send_headers(
            1,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", self.host),
                (":path", self.path),
            ],
            end_stream=True,
        )
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        import h2.events

        assert self.transport is not None
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and not self.started.called:
                cast(IPushProducer, self.transport).pauseProducing()
                self.started.callback(None)
            elif isinstance(event, h2.events.DataReceived):
                self.received += len(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, 1)
            elif isinstance(event, h2.events.StreamEnded):
                self.finished.callback(self.received)
                self.transport.loseConnection()
        self.transport.write(self.conn.data_to_send())

    def resume_and_finish(self) -> Deferred[int]:
        cast(IPushProducer, self.transport).resumeProducing()
        return self.finished.addTimeout(30, reactor)


@inlineCallbacks
def h2_stalled_download(d: Deployment, path: str, app: str = "web") -> Any:
    host = f"{app}.{DOMAIN}"
    options = optionsForClientTLS(
        host, trustRoot=Certificate.loadPEM(d.ca.cert_pem), acceptableProtocols=[b"h2"]
    )
    endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", d.public_port))
    client = _StalledH2Download(host, path)
    yield connectProtocol(endpoint, client)
    yield client.started.addTimeout(10, reactor)
    return client


__all__ = [
    "DOMAIN",
    "Backend",
    "Deployment",
    "h2_exchange",
    "h2_stalled_download",
    "raw_exchange",
    "start",
    "treq",
]
