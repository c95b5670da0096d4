"""
Identity passed to internal apps, pure (no Twisted, no reactor):

  - C{headers}: identity headers from the session's claims, spoof stripping,
    appproxy's cookies kept from the app;
  - C{assertion}: the signed identity assertion (ES256 JWT) and its JWK Set.

May import appproxy.http, appproxy.access and appproxy.state.files.
"""
