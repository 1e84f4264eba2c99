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


import pytest  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the test item, so that fixtures can
    tell whether their test failed (see ``tests.cluster.dump_logs_on_failure``)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# -- AnyIO: the SDK's tests run on asyncio and on Trio ---------------------------
#
# SDK test modules set ``pytestmark = pytest.mark.anyio`` and run once per
# backend.  Tests that need virtual time use ``tests.backends.VIRTUAL_TIME``
# (Trio with an autojump MockClock); the rest of the suite stays in
# pytest-trio's trio mode.


def _backend(name):
    if name == "trio-autojump":
        from trio.testing import MockClock

        return ("trio", {"clock": MockClock(autojump_threshold=0)})
    return name


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return _backend(request.param)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """pytest-trio's trio mode marks every async test for Trio; AnyIO tests
    are run by the anyio plugin instead, on the backend they are given."""
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]
