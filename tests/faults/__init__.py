"""Fault injection for coord: a real ensemble behind loopback proxies, a
seeded nemesis, and checkers that judge what clients observed.

    python -m tests.faults --seeds 50 --duration 20     # soak: one verdict per seed
    python -m tests.faults --check history.json          # re-check a saved history

Modules (import what you need; this package imports nothing heavy itself):

* ``proxy``     -- per-link TCP proxies: cut one or both ways, blackhole, delay, heal.
* ``cluster``   -- ``FaultCluster``: ``tests.cluster.Cluster`` with every link proxied.
* ``serve``     -- the server entry point the harness launches (listens behind its proxy).
* ``history``   -- recording operations with real-time bounds; saving/loading histories.
* ``linearizability`` -- a Wing-Gong/Porcupine search over a versioned-register model.
* ``checkers``  -- nothing lost, ephemerals, locks/fencing, watch ordering and gaps.
* ``lock``      -- a minimal ephemeral-sequential lock (the workload's and the bench's).
* ``nemesis``   -- fault kinds and seeded schedules.
* ``workload``  -- the client processes whose history is checked.
* ``run``       -- one seeded schedule end to end -> a ``Verdict``.
"""
