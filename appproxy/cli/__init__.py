"""
The `appproxy` command line: one module per command group. Domain modules return
values; these modules print them.
"""
