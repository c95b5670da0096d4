"""
The built-in identity provider: a small OpenID provider, served by the
appproxy service on the login host, so that one machine with nothing else
installed can sign users in.

    - L{appproxy.idp.users}: C{users.json}, password hashes, the
      C{appproxy users} commands;
    - L{appproxy.idp.totp}: one-time codes (RFC 6238);
    - L{appproxy.idp.provider}: the OpenID provider's C{twisted.web} resources.
"""

from __future__ import annotations

from appproxy.idp.provider import ClientRegistration, IdentityProvider, ProviderSettings
from appproxy.idp.users import User, UserStore, add_user, add_users_command

__all__ = [
    "ClientRegistration",
    "IdentityProvider",
    "ProviderSettings",
    "User",
    "UserStore",
    "add_user",
    "add_users_command",
]
