"""
Access decisions: the session cookie codec and its key ring, conditional-access policy
(model, evaluation, what-if), risk signals, safe redirect targets.

Pure: imports only appproxy.http and third-party crypto, never Twisted.
"""
