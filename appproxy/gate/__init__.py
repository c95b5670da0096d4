"""
The sign-in gate: per request, admit or answer (sign-in redirect, refusal page);
the OpenID Connect sign-in flow; claims -> session.

A Twisted shell over appproxy.access, appproxy.identity and appproxy.oidc.
"""
