"""
The service's side of connector trust (issue 11): the tunnel listener's
protocols chosen by ALPN (C{listener}); the enrolment API (C{api} over
C{enrol}, its refusals in C{errors}): registration with an enrolment token or
an administrator's ID token checked by C{admin_token}, renewal, the
configuration pull built by C{settings}; the admission of connector
certificates kept current from the state database, which closes the tunnels
of connectors disabled, revoked or deleted (C{admission}); the audit trail
(C{audit}); and C{service}, which puts them together for the daemon.

May import appproxy.http, config, state, oidc, tunnel and daemon.
"""
