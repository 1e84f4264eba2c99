"""coordclient: the coord SDK and the wire format shared with the server.

Kept import-light on purpose: the server imports ``coordclient.wire`` on its
hot path, so nothing heavy is pulled in here.
"""

__version__ = "0.1.0"
