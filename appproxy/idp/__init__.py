"""
The built-in identity provider: a small OpenID provider, served by the
appproxy service on the login host, so that one machine with nothing else
installed can sign users in.

Pure (no reactor, no twisted.web):

    - L{appproxy.idp.settings}: its settings and registered clients;
    - L{appproxy.idp.store}: what it remembers between requests, and the
      interface of the store; L{appproxy.idp.memory}: that store in memory;
    - L{appproxy.idp.users}: C{users.json}; L{appproxy.idp.passwords}: hashes;
    - L{appproxy.idp.totp}: one-time codes (RFC 6238);
    - L{appproxy.idp.signing}: the ID-token signing key;
    - L{appproxy.idp.pages}: its HTML pages.

The C{twisted.web} side: L{appproxy.idp.provider} ties one module per
endpoint group together (C{discovery}, C{authorize} with C{signin} and
C{forms}, C{token} with C{clients}, C{device}, C{userinfo}, C{endsession}),
over what they share (C{context}, C{_http}).

It may import L{appproxy.http}, L{appproxy.access}, L{appproxy.state},
L{appproxy.oidc} and L{appproxy.frontend}'s pure modules.  This module
imports nothing, so that importing a pure part does not pull in twisted.web.
"""
