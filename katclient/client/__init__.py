"""Tornado I/O layer of the KATCP client: connection, backoff, inspecting client."""
