"""The replicated namespace: znodes, sessions and change events.

``NamespaceStateMachine`` (state.py) is what the Raft driver applies; the
other modules are its parts: ``tree`` (nodes and stats, each node a
``records`` record), ``acl`` (access control and the ACL table), ``sessions``
(the session table and exactly-once memory), ``txn`` (one command's
all-or-nothing changes), ``history`` (recent events for watches) and
``commands`` (the command format).
"""

from coord.namespace.commands import decode_command, encode_command
from coord.namespace.history import Event
from coord.namespace.state import NamespaceStateMachine

__all__ = ["NamespaceStateMachine", "Event", "encode_command", "decode_command"]
