"""
The public listener: the streaming request object, routing by Host and path, error pages.

A Twisted shell: may import every pure package, appproxy.gate and appproxy.tunnel.
"""
