"""Rate-limited logging for refusals.

A refused connection is worth a log line -- it is how an operator finds a
misconfigured peer or a port scan -- but whoever can open connections can
make as many refusals as they like, and the log must not grow with them.
``RateLimit`` is the plain form: at most ``n`` lines per period, no keys.
With ``RateLimitedLog``, each key (a kind of refusal) gets ``burst`` lines per ``period`` seconds; the
lines it loses are counted and the count appears on its next line.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

__all__ = ["RateLimit", "RateLimitedLog"]


class RateLimit:
    """At most ``n`` per ``period`` seconds (for log lines a client can trigger)."""

    def __init__(self, n: int, period: float, clock: Callable[[], float] = time.monotonic):
        self.n, self.period, self.clock = n, period, clock
        self.window, self.used = -period, 0

    def allow(self) -> bool:
        now = self.clock()
        if now - self.window >= self.period:
            self.window, self.used = now, 0
        self.used += 1
        return self.used <= self.n


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, *, burst: int = 5, period: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 64):
        self.logger = logger
        self.burst = burst
        self.period = period
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[str, list] = {}  # key -> [window start, lines in window, suppressed]
        self.suppressed_total = 0

    def log(self, level: int, key: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless ``key`` has used up its lines; True if logged."""
        now = self.clock()
        w = self._windows.get(key)
        if w is None or now - w[0] >= self.period:
            if w is None and len(self._windows) >= self.max_keys:
                self._windows.clear()  # bounded: forgetting windows only lets a few more lines through
            suppressed = w[2] if w is not None else 0
            w = self._windows[key] = [now, 0, 0]
            if suppressed:
                msg += " (%d similar lines suppressed)"
                args = (*args, suppressed)
        if w[1] >= self.burst:
            w[2] += 1
            self.suppressed_total += 1
            return False
        w[1] += 1
        self.logger.log(level, msg, *args, stacklevel=3)
        return True

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.INFO, key, msg, *args)
