"""
The sign-in and audit API for security tooling, on its own HTTPS listener
(C{[admin]}): C{GET /admin/v1/sign-ins} and C{/admin/v1/audit} with filters
and an opaque keyset cursor, their streaming export as JSON lines or RFC 5424
syslog, bearer tokens of administrators; and the retention of those events
(C{[events] retention_days}); and the admin page (C{[admin] url}: C{/admin/},
signed in with the provider, polling C{/admin/v1/overview}).

Pure: C{cursor}, C{filters}, C{records}, C{overview} (SQLite only),
C{page_assets} and C{syslog}.  I/O: C{auth}, C{api}, C{export}, C{page},
C{page_auth} and C{service}.
"""
