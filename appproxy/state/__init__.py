"""
Durable state in the state directory: the SQLite database (through adbapi, off the
reactor thread), its migrations, the sign-in log, and private files.
"""
