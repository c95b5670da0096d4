"""
The tunnel between service and connector: HTTP/2 with the roles reversed.

  - base: the HTTP/2 plumbing both ends share (flow-controlled sending, PING
    liveness, the factory keeping the connected protocols); frame_repr, a
    cheaper repr for the frames h2 logs;
  - queue: the service's queue of requests per connector group;
  - service, service_stream: the service's end (the HTTP/2 client) and one
    user request on it.

May import appproxy.http, appproxy.config and appproxy.daemon (TLS identity).
"""
