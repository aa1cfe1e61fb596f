"""Wire-faithful fake servers for katclient's tests and for users' own tests.

Each module runs as ``python -m fake_servers.<name> --port P`` and prints
``listening on HOST:PORT`` once it accepts connections; each is importable and
can be started inside a running event loop on port 0.
"""
