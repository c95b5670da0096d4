"""
Running as a daemon: the twistd services of both daemons (service_tap,
connector_tap), what they share (runtime: options, configuration load and
reload, log format; text_log: the text log observer), sd_notify, TLS
contexts and the PKI used by `appproxy init`.

The entry point of the daemons: may import any package.  pki and sdnotify are
pure (no reactor, no twisted.web).
"""
