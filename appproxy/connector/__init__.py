"""
The appproxy connector, inside the private network: its end of the tunnel
(tunnel: the HTTP/2 server and the settings the service pushes), one user
request from tunnel stream to internal app and back (request; its two
bodies in bodies), and the HTTP client for internal apps (backend).

May import appproxy.http, appproxy.config, appproxy.tunnel and appproxy.daemon.
"""
