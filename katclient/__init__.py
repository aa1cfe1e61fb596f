"""katclient: a Tornado-based KATCP inspecting client suite."""

__version__ = "0.1.0"
