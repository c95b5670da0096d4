"""
Durable state in the state directory: the SQLite database (through adbapi, off the
reactor thread), its schema and migrations, the sign-in log, sessions, the
connectors trusted (their certificates, enrolment tokens, the audit log), and
private files.

Pure (no Twisted): C{signins} (the sign-in event and its text forms), C{schema}
(file name, migrations, checks), C{queries} (the SQL, and the command line's
read-only reader), C{sessions}, C{connectors} (with C{admission},
C{enrolment_tokens}, C{audit} and C{_transaction}), C{files} (0600 files).
Twisted, no twisted.web: C{database}
(L{StateDatabase<appproxy.state.database.StateDatabase>}, adbapi) and C{signinlog}
(the writer).  Imports nothing else of appproxy but C{oidc.errors} (the step names).
"""
