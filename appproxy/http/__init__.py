"""
HTTP rules shared by every layer, one parser each: authority (Host), request header rules,
cookies, forwarding headers, internal -> external URL translation.

Pure: imports only the standard library and attrs, never Twisted.
"""
