"""
The public listener, in the order a request meets it: C{proxy} (the listener
and access log), C{front_end} (what every request shares), C{request} (what to
do with one: refuse, answer, ask the sign-in gate, or queue it), C{routing}
(app by Host and path), C{answers} and C{errorpage} (what the service answers
itself), C{exchange} (the body into the tunnel) and C{relay} (the response
back); for a WebSocket, C{ws_gate} (the handshake judged and queued),
C{ws_relay} (the open WebSocket), C{ws_frames} and C{ws_registry} (its
frame boundaries; the caps and the sweep of ended sessions).

A Twisted shell around pure parts (routing, answers, errorpage): may import
every pure package, appproxy.gate and appproxy.tunnel.
"""
