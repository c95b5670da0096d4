"""
The built-in identity provider: a small OpenID provider, served by the
appproxy service on the login host, so that one machine with nothing else
installed can sign users in.

    - L{appproxy.idp.users}: C{users.json} and password hashes;
    - L{appproxy.idp.totp}: one-time codes (RFC 6238);
    - L{appproxy.idp.provider}: the OpenID provider's C{twisted.web} resources.

This module imports nothing, so that importing a pure part (C{totp}) does not
pull in twisted.web.
"""
