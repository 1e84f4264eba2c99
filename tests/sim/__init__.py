"""Deterministic simulation testing of the Raft core (``coord.raft.core``).

``Simulation`` runs a whole cluster in one process from a single seed;
``checkers`` holds the invariants (usable without the core); ``harness``
is a small hand-driven cluster for focused scenario tests.  Run a sweep with
``python -m tests.sim --seeds 1000 --jobs 2``.

``driver.DriverSimulation`` runs the production driver (``RaftNode``) the
same way, on the simulated network and the simulated disk of ``simdisk``:
``python -m tests.sim --driver --seeds 200 --first 0 --profile crashy``.
"""

from .checkers import InvariantViolation, LogView, SafetyChecker

__all__ = ["InvariantViolation", "LogView", "SafetyChecker"]
