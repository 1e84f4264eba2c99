"""Deterministic simulation testing of the Raft core (``coord.raft.core``).

``Simulation`` runs a whole cluster in one process from a single seed;
``checkers`` holds the invariants (usable without the core); ``harness``
is a small hand-driven cluster for focused scenario tests.  Run a sweep with
``python -m tests.sim --seeds 1000 --jobs 2``.
"""

from .checkers import InvariantViolation, LogView, SafetyChecker

__all__ = ["InvariantViolation", "LogView", "SafetyChecker"]
