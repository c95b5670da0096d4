"""
The tunnel between service and connector: HTTP/2 with the roles reversed, and the
service's queue of requests per connector group.
"""
