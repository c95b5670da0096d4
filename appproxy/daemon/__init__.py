"""
Running as a daemon: the twistd services of both daemons, sd_notify, logging set-up,
TLS contexts and the PKI helpers used by `appproxy init`.
"""
