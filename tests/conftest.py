"""Shared test setup.

The suite normally runs against an installed checkout (see the README), but
``coordclient`` lives in ./client, so a bare ``pytest`` from a source tree
without an install would not find it: fall back to the source directory.
"""

import os
import sys

try:
    import coordclient  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "client"))

from hypothesis import HealthCheck, settings

# Shared machines are slow and noisy: judge examples, not their timing.
settings.register_profile("coord", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("coord")
