"""
What the service tells its operators besides its log: Prometheus metrics
(L{appproxy.observe.metrics}), served on a listener of their own, never on
the public one.

Imports nothing from appproxy: every layer may count here.
"""
