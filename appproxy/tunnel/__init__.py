"""
The tunnel between service and connector: HTTP/2 with the roles reversed.

  - base: the HTTP/2 plumbing both ends share (event dispatch, the
    per-stream error boundary, PING liveness, the factory keeping the
    connected protocols); outbound and stream, flow-controlled sending and
    one stream's outbound state; connection, h2's connection checking what
    it sends; fields, the pure rules for header fields on the tunnel;
    frame_repr, a cheaper repr for the frames h2 logs;
  - machine, connection_machine: the tunnel's own protocol above h2 as pure
    state machines (one stream's states and idle timing; one connection's
    settings push, capacity, jobs and drain);
  - queue: the service's queue of requests per connector group;
  - service, service_stream, service_events, service_control: the service's
    end (the HTTP/2 client, a shell over the machines), one user request on
    it, its stream events, and its settings push.

May import appproxy.http, appproxy.config and appproxy.daemon (TLS identity).
"""
