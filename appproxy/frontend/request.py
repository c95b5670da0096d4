"""
L{ProxyRequest}: what the service does with a request once its headers are
in.  It refuses what it must (a target that is not a path, dot segments,
unknown hosts, refused methods), answers what is its own (C{robots.txt}, the
assertion keys, the sign-in paths, the login hosts and their pages), asks the
sign-in gate, and queues the rest for a connector of the app.  A WebSocket
handshake is judged, and once admitted queued, by L{appproxy.frontend.ws_gate}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.resource import IResource, UnsupportedMethod, getChildForRequest

from appproxy.config import AppConfig
from appproxy.frontend.answers import (
    JWKS_PATH,
    REFUSED_METHODS,
    ROBOTS_PATH,
    Answer,
    jwks_answer,
    not_found_answer,
    robots_answer,
)
from appproxy.frontend.exchange import ExchangeRequest
from appproxy.frontend.front_end import FrontEnd
from appproxy.frontend.limits import ANONYMOUS, SIGNED_IN, SIGNIN
from appproxy.frontend.prepare import internal_target, prepared_headers
from appproxy.frontend.ws_gate import forward_websocket, judge_handshake
from appproxy.gate.paths import HAND_OFF_PATH, SIGN_IN_PATH, SIGN_OUT_PATH
from appproxy.gate.replies import Admit, Reply
from appproxy.http.cookies import parse_cookies
from appproxy.http.fields import SINGLE_FIELDS, single_field_problem
from appproxy.http.forwarding import client_address, ip_text
from appproxy.http.headers import new_request_id
from appproxy.http.paths import has_dot_segments
from appproxy.http.render import NOT_DONE_YET
from appproxy.tunnel.queue import ProxyJob

__all__ = ["LOCAL_BODY_LIMIT", "ProxyRequest"]

#: Largest request body the service reads for itself (sign-in forms).
LOCAL_BODY_LIMIT = 1 << 16

log = Logger()


class ProxyRequest(ExchangeRequest):
    """
    One user request: answered by the service, or streamed through the tunnel.
    """

    def __init__(self, channel: Any, frontend: FrontEnd) -> None:
        super().__init__(channel, frontend)
        self._local: IResource | None = None
        self._client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        #: A WebSocket handshake (L{appproxy.frontend.ws_gate}), judged well-formed.
        self._websocket = False
        #: Body bytes received from the client (the request metrics).
        self.bytes_in = 0
        self.host_field: bytes | None = None  # Host (b"" if none), once judged

    # -- parsing hooks: a login host's page reads its (small) body itself ---

    def handleContentChunk(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._headers_complete()
        if self._local is None or self._done:
            super().handleContentChunk(data)
            return
        assert self.content is not None
        if self.content.tell() + len(data) > LOCAL_BODY_LIMIT:
            self._local = None
            self._respond_error(413, "Request too large", "The form is too large.")
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._headers_complete()
        if self._local is None or self._done:
            super().requestReceived(command, path, version)
            return
        # The service's own pages: parse the query and form, then render.
        self._body_complete = True
        Request.requestReceived(self, command, path, version)

    # -- deciding ----------------------------------------------------------------

    def _begin(self, length: int | None) -> None:
        method, uri, version = self._head
        self.request_id = new_request_id()
        if uri is None:
            # An HTTP/2 CONNECT names an authority, not a path (RFC 9113
            # 8.5): refused as an HTTP/1.1 CONNECT's authority target is.
            self.method, self.uri, self.path, self.clientproto = method, b"", b"", version
            self._respond_error_soon(400, "Bad request", "The request target must be a path.")
            return
        self.method, self.uri, self.clientproto = method, uri, version
        self.path = uri.split(b"?", 1)[0]
        # Only the fields it judges: two lookups, not a walk of every field.
        fields = self.requestHeaders
        problem = single_field_problem(
            [(name, fields.getRawHeaders(name, [])) for name, _ in SINGLE_FIELDS],
            http2=self._is_h2,
        )
        if problem is not None:
            self._refuse_malformed(problem)
            return
        host = self.host_field = self.requestHeaders.getRawHeaders(b"host", [b""])[0]

        if not uri.startswith(b"/"):
            self._respond_error_soon(400, "Bad request", "The request target must be a path.")
            return
        if has_dot_segments(self.path.decode("latin-1")):
            # '..', however encoded, could climb out of the published path.
            self._refuse_malformed("The path contains '.' or '..' segments.")
            return
        if host.lower() in self.frontend.login_hosts:
            self._begin_login(host.lower())
            return
        app = self.frontend.router.route(host, self.path)
        # What signs in is charged once the gate has decided (L{_admitted}).
        if not (app and app.signs_in and self.frontend.sign_in) and self._over_budget(ANONYMOUS):
            return
        if self.path in (ROBOTS_PATH, JWKS_PATH) and self.frontend.router.publishes_host(host):
            # Every published host, whatever its apps' path prefixes.
            if self.path == ROBOTS_PATH:
                self._respond_soon(robots_answer())
            else:
                self._respond_soon(jwks_answer(self.frontend.jwks))
            return
        if app is None:
            self._respond_soon(self._not_found(host.decode("latin-1")))
            return
        self.app = app
        if method in REFUSED_METHODS:
            self._respond_error_soon(
                405, "Method not allowed", f"{method.decode('latin-1')} is not supported."
            )
            return
        if not self._is_h2 and self.requestHeaders.hasHeader(b"upgrade"):
            judged = judge_handshake(self, app)
            if judged is None:
                return
            self._websocket = judged

        sign_in = self.frontend.sign_in
        if not app.signs_in or sign_in is None:
            self._forward(app, ())
            return
        client_ip = self._resolved_client_ip()
        cookies = parse_cookies(self.requestHeaders.getRawHeaders(b"cookie"))
        if self.path in (HAND_OFF_PATH, SIGN_OUT_PATH) and self._over_budget(SIGNIN):
            return
        if self.path == HAND_OFF_PATH and method in (b"GET", b"HEAD"):
            self._reply_when_ready(
                sign_in.hand_off(
                    app,
                    self._query_args(),
                    cookies,
                    client_ip=ip_text(client_ip),
                    request_id=self.request_id,
                    accept=self._accept(),
                )
            )
            return
        if self.path == SIGN_OUT_PATH:
            self._reply_when_ready(
                sign_in.sign_out(
                    app,
                    cookies,
                    client_ip=ip_text(client_ip),
                    request_id=self.request_id,
                    accept=self._accept(),
                )
            )
            return
        decided = sign_in.admit(
            app,
            method=method,
            uri=uri,
            cookies=cookies,
            client_ip=client_ip,
            request_id=self.request_id,
            accept=self._accept(),
            websocket=self._websocket,
        )
        if isinstance(decided, defer.Deferred):
            decided.addCallback(self._admitted, app, soon=False).addErrback(self._internal_error)
        else:
            self._admitted(decided, app, soon=True)

    def _admitted(self, decided: Admit | Reply, app: AppConfig, *, soon: bool) -> None:
        if self._done:
            return
        signed_in = isinstance(decided, Admit) and decided.session is not None
        if self._over_budget(SIGNED_IN if signed_in else ANONYMOUS):
            return
        if isinstance(decided, Reply):
            if soon:
                self.frontend.clock.callLater(0, self._reply, decided)
            else:
                self._reply(decided)
            return
        self._forward(app, decided.headers, decided)

    def _forward(
        self, app: AppConfig, identity: Sequence[tuple[bytes, bytes]], admitted: Admit | None = None
    ) -> None:
        """Queue the request for a connector of C{app}'s group."""
        if self._websocket:
            session = None if admitted is None else admitted.session
            user = None if admitted is None else admitted.user
            forward_websocket(self, app, tuple(identity), user, session)
            return
        self._job = ProxyJob(
            app=app,
            method=self.method,
            path=internal_target(app, self.uri),
            headers=prepared_headers(self, app, identity),
            request_id=self.request_id,
            has_body=self.length != 0,
            exchange=self,
        )
        self._enqueue(self._job)

    # -- the service's own answers: sign-in, hand-off, the identity provider ----

    def _begin_login(self, host: bytes) -> None:
        """A request to a login host: the relying party's paths or a resource."""
        sign_in = self.frontend.sign_in
        callback_path = self.frontend.callback_path
        own = self.path in (SIGN_IN_PATH.encode(), callback_path)
        peer, client = self._client_address(), self._resolved_client_ip()
        budget = self.frontend.limiter.login_budget(self.path, own, peer, client)
        if budget is not None and self._over_budget(budget):
            return
        if sign_in is not None and own:
            if self.method not in (b"GET", b"HEAD"):
                self._respond_error_soon(405, "Method not allowed", "Use GET.")
                return
            accept = self._accept()
            client_ip = self._resolved_client_ip()
            if self.path == callback_path:
                cookies = parse_cookies(self.requestHeaders.getRawHeaders(b"cookie"))
                self._reply_when_ready(
                    sign_in.callback(
                        self._query_args(),
                        cookies,
                        client_ip=client_ip,
                        request_id=self.request_id,
                        accept=accept,
                        user_agent=self.requestHeaders.getRawHeaders(b"user-agent"),
                    )
                )
            else:
                self._reply_when_ready(
                    sign_in.start(
                        self._query_args(),
                        client_ip=ip_text(client_ip),
                        request_id=self.request_id,
                        accept=accept,
                    )
                )
            return
        resource = self.frontend.login_hosts.get(host)
        if self.path == ROBOTS_PATH:
            self._respond_soon(robots_answer())
            return
        if resource is None:
            self._respond_soon(self._not_found(host.decode("latin-1")))
            return
        # Read the (small) body; the channel then calls requestReceived,
        # which parses the form and calls process().
        self._local = resource
        self.content = BytesIO()

    def process(self) -> None:
        """Render the service's own resource for a login-host request."""
        resource = self._local
        if resource is None or self._done:
            return
        self.prepath: list[bytes] = []
        self.postpath: list[bytes] = self.path[1:].split(b"/")
        if not self.received_cookies:
            Request.parseCookies(self)  # (not done for every request: L{parseCookies})
        try:
            body = getChildForRequest(resource, self).render(self)
        except UnsupportedMethod as refused:
            self._method_not_allowed(refused.allowedMethods)
            return
        except Exception:
            log.failure("Unexpected error in the service's own page")
            self._respond_error(500, "Internal error", "The service failed unexpectedly.")
            return
        if body is NOT_DONE_YET:
            return
        if not isinstance(body, bytes):
            self._respond_error(500, "Internal error", "The service failed unexpectedly.")
            return
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def _method_not_allowed(self, allowed: Sequence[bytes]) -> None:
        """A 405 from a resource that does not serve the method, with C{Allow}."""
        names = set(allowed) | ({b"HEAD"} if b"GET" in allowed else set())
        self.responseHeaders.setRawHeaders(b"allow", [b", ".join(sorted(names))])
        method = self.method.decode("latin-1")
        self._respond_error(405, "Method not allowed", f"{method} is not allowed here.")

    def _not_found(self, host: str) -> Answer:
        now = self.frontend.clock.seconds()
        return not_found_answer(host, request_id=self.request_id, now=now, accept=self._accept())

    def _query_args(self) -> dict[str, str]:
        """The query's parameters (the first of each name), decoded."""
        _, _, query = self.uri.partition(b"?")
        args: dict[str, str] = {}
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            args.setdefault(name, value)
        return args

    def _reply_when_ready(self, reply: defer.Deferred[Reply]) -> None:
        # Never answer from inside the channel's header parsing.
        def later(result: Reply) -> None:
            self.frontend.clock.callLater(0, self._reply, result)

        reply.addCallback(later).addErrback(self._internal_error)

    def _internal_error(self, failure: Failure) -> None:
        log.failure("Unexpected error during sign-in", failure)
        self._respond_error(500, "Internal error", "The service failed unexpectedly.")

    def _reply(self, reply: Reply) -> None:
        if self._done:
            return
        for name, value in reply.headers:
            self.responseHeaders.addRawHeader(name, value)
        if reply.status in (301, 302, 303, 307, 308):
            self._respond(Answer(reply.status, b"text/plain; charset=utf-8", b""))
        else:
            self._respond(Answer(reply.status, reply.content_type, reply.body))

    # -- who is asking ---------------------------------------------------------

    def _over_budget(self, budget: str) -> bool:
        """Whether the client is over C{budget} (then it is answered 429, soon)."""
        now, limiter = self.frontend.clock.seconds(), self.frontend.limiter
        if not (wait := limiter.take(budget, self._resolved_client_ip(), now)):
            return False
        retry, answer = limiter.answer(budget, wait, self.request_id, now, self._accept())
        self.responseHeaders.setRawHeaders(b"retry-after", [retry])
        self._respond_soon(answer)
        return True

    def _resolved_client_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The client's address: the TCP peer, unless it is a trusted proxy."""
        if self._client_ip is None:
            try:
                self._client_ip = client_address(
                    self._client_address(),
                    self.requestHeaders.getRawHeaders(b"x-forwarded-for") or [],
                    self.frontend.trusted_proxies,
                )
            except ValueError:
                # A peer without an IP address (a unix: listener) counts as
                # 0.0.0.0 for policy and in X-Forwarded-For.
                self._client_ip = ipaddress.IPv4Address("0.0.0.0")
        return self._client_ip

    def _client_address(self) -> str:
        """The TCP peer's address."""
        address: IAddress = Request.getClientAddress(self)
        return str(getattr(address, "host", "unknown"))

    def getClientAddress(self) -> IAddress:
        """
        The client's address as the service's own pages (the built-in
        provider's lockout, the sign-in log) see it: the TCP peer, unless that
        is a trusted proxy, whose X-Forwarded-For is then believed.
        """
        address: IAddress = Request.getClientAddress(self)
        if not self.frontend.trusted_proxies or not hasattr(address, "host"):
            return address
        ip = self._resolved_client_ip()
        kind = IPv6Address if ip.version == 6 else IPv4Address
        return kind("TCP", str(ip), getattr(address, "port", 0))
