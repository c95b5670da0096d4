"""
Configuration: TOML files -> frozen attrs classes, every mistake a one-line ConfigError
(file, key, problem).

Pure: may import appproxy.http and appproxy.access (policy model), never Twisted.
"""
