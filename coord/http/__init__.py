"""The HTTP port of a server: probes, Prometheus metrics and the dashboard,
served by Hypercorn inside the server's Trio loop (see ``server.py``)."""
