"""
Identity passed to internal apps: identity headers from claims, spoof stripping,
and the signed assertion.

Pure: may import appproxy.http and appproxy.access, never Twisted.
"""
