"""
L{FrontEnd}: what every request of the public listener shares (the published
apps and their routing table, the connector groups, the clock, the sign-in
machinery).  Reloading the configuration publishes new apps in it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource

from appproxy.config import AppConfig
from appproxy.frontend.limits import RequestLimiter
from appproxy.frontend.routing import Router
from appproxy.frontend.ws_registry import WebSocketRegistry
from appproxy.gate.signin import SignIn
from appproxy.http.translate import UrlMapping
from appproxy.identity.headers import normalise_header_name
from appproxy.tunnel.queue import ConnectorGroupQueue, ConnectorGroups, ProxyJob

__all__ = ["FrontEnd"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.define(eq=False)
class FrontEnd:
    """
    What every request of the public listener shares: the routing table, the
    connector groups and the clock; and, once L{set_auth} is called, what
    signing in needs.
    """

    apps: Sequence[AppConfig]
    """The published applications (see L{set_apps})."""
    groups: ConnectorGroups
    clock: IReactorTime
    router: Router[AppConfig] = attrs.field(init=False)
    """Picks the app of a request by host and path."""
    mappings: dict[str, UrlMapping] = attrs.field(init=False)
    """Each app's internal -> external URL mapping, by app name."""
    protected_headers: frozenset[str] = attrs.field(init=False)
    """Identity header names of every app: removed from every request."""
    requests_served: int = attrs.field(init=False, default=0)
    sign_in: SignIn | None = attrs.field(init=False, default=None)
    login_hosts: Mapping[bytes, IResource | None] = attrs.field(init=False, factory=dict)
    """The hosts the service answers itself: each with its resource, or None."""
    callback_path: bytes = attrs.field(init=False, default=b"")
    trusted_proxies: tuple[IPNetwork, ...] = attrs.field(init=False, default=())
    """Proxies whose C{X-Forwarded-For} is believed."""
    jwks: bytes = attrs.field(init=False, default=b'{"keys":[]}')
    """The public keys of the signed identity assertion."""
    websockets: WebSocketRegistry = attrs.field(init=False)
    """The open WebSockets: their caps, and their end with their session."""
    limiter: RequestLimiter = attrs.field(init=False, factory=RequestLimiter)
    """The request budgets per client address (C{[limits]})."""

    def __attrs_post_init__(self) -> None:
        self.websockets = WebSocketRegistry(self.clock)
        self.set_apps(self.apps)

    def queue_for(self, job: ProxyJob) -> ConnectorGroupQueue:
        """Where C{job} waits: its group's queue, or upgrade queue for a WebSocket."""
        name = job.app.connector_group
        return self.groups.upgrade_queue(name) if job.upgrade else self.groups[name]

    def set_apps(self, apps: Sequence[AppConfig]) -> None:
        """
        Publish C{apps} (at start, and on reload): requests already under way
        keep the app they started with.
        """
        self.apps = apps
        self.router = Router(apps)
        self.mappings = {
            app.name: UrlMapping(internal=app.internal_url, external=app.external_url)
            for app in apps
        }
        # Identity header names of every app are removed from every request,
        # passthrough apps included: a client must never choose them.
        self.protected_headers = frozenset(
            normalise_header_name(header) for app in apps for header, _ in app.headers
        )

    def set_auth(
        self,
        *,
        sign_in: SignIn | None,
        login_hosts: Mapping[str, IResource | None],
        callback_path: str,
        trusted_proxies: tuple[IPNetwork, ...],
        jwks: bytes,
    ) -> None:
        """
        Sign-in: the machinery, the hosts the service answers itself (each
        with the resource that serves what is not the relying party's own,
        such as the built-in identity provider), proxies whose
        C{X-Forwarded-For} is believed, and the assertion keys.
        """
        self.sign_in = sign_in
        self.websockets.standing = None if sign_in is None else sign_in.context.sessions.standing
        self.login_hosts = {host.encode("ascii"): res for host, res in login_hosts.items()}
        self.callback_path = callback_path.encode("ascii")
        self.trusted_proxies = trusted_proxies
        self.jwks = jwks
