"""ZooKeeper's client protocol in front of coord.

Unmodified ZooKeeper clients (kazoo, Curator, zkCli, node-zookeeper-client)
talk to coord through this package: it translates at the edge into the same
commands, sessions and watches a coord client uses, never a second namespace.

Modules, each with one job:

* ``jute``        -- the binary primitives, a decoder that only raises JuteError.
* ``codes``       -- ZooKeeper's numbers (op codes, error codes, events, modes).
* ``records``     -- every request/response record, frozen dataclasses.
* ``translate``   -- the seam: ZooKeeper request -> coord requests, coord
                     answers -> ZooKeeper reply; pure functions.
* ``membership``  -- the dynamic-config text and reconfig specs.
* ``fourletter``  -- ruok/srvr/stat/mntr/conf/cons/envi/wchs/isro from a status dict.
* ``session``     -- one connection as a sans-IO state machine (bytes in,
                     coord calls and bytes out); its docstring is the
                     contract the server's glue implements.

Nothing here is wired into the server yet (see docs/zookeeper.md).
"""
