"""
What the service tells its operators besides its log: Prometheus metrics,
served on a listener of their own (C{[metrics] listen}), never on the
public one.

L{appproxy.observe.metrics}: the registry and the counters and histograms
the code paths increment; L{appproxy.observe.requests}: the public
listener's request metrics, counted per app in plain numbers and moved into
the metrics at scrape time; L{appproxy.observe.lines}: the access log's
logger, whose lines a text log writes as they are; L{appproxy.observe.live}:
the gauges of live state, read at scrape time from a snapshot the daemon
provides; L{appproxy.observe.exposition}: the C{/metrics} site.

Imports nothing from appproxy: every layer may count here.
"""
