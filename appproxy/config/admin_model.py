"""
The model of C{[admin]} and C{[events]} (L{appproxy.config._admin} reads
them), kept out of L{appproxy.config.model} for its size; the classes are
also importable from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from appproxy.config.model import CertificateFiles

__all__ = ["AdminConfig", "EventsConfig"]


@attrs.frozen(kw_only=True)
class AdminConfig:
    """The sign-in and audit API (C{[admin]}); off when C{listen} is L{None}."""

    listen: str | None = None
    cert: CertificateFiles | None = None
    """L{None}: the service's first certificate."""
    audience: str | None = None
    """The ID tokens' audience; L{None}: C{[connectors] device_client_id}."""
    url: str | None = None
    """The listener's external URL (C{https://host[:port]}): the admin page signs in
    with the redirect URI C{URL/admin/callback}; L{None}: no admin page."""


@attrs.frozen(kw_only=True)
class EventsConfig:
    """C{[events]}: sign-in and audit events older than C{retention_days} are purged."""

    retention_days: int = 90
