"""
The sign-in gate: per request, admit or answer (sign-in redirect, refusal page);
the OpenID Connect sign-in flow; claims -> session.

Pure (no reactor, no I/O): C{paths} (the reserved C{/.appproxy/...} paths and
lifetimes), C{replies} (L{Admit}, L{Reply} and the pages), C{claims} (claims ->
session, session -> decision -> what next).  The Twisted shell over them:
C{context} (the shared collaborators), C{gate} (per request), C{flow} (on the
login host), C{app_cookie} (hand-off and sign-out on the app's host), C{signin}
(the three joined, as the front end calls them), C{setup} (built from config).

May import appproxy.http, access, identity, oidc, state, config and
frontend.errorpage.
"""
