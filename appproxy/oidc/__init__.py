"""
The OpenID Connect relying party: settings, provider metadata, authorization URLs,
ID token verification (pure), and the HTTP client that talks to the provider (treq).
"""
