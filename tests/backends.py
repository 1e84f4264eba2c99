"""Backend choices for the SDK's AnyIO tests (see conftest.py).

``VIRTUAL_TIME``: Trio with an autojump MockClock only, for tests that wait
out session timeouts (seconds of virtual time cost nothing).
``VIRTUAL_OR_REAL``: that, plus asyncio in real time, for timing tests that
take well under a second of real time.
"""

import pytest

VIRTUAL_TIME = pytest.mark.parametrize("anyio_backend", ["trio-autojump"], indirect=True)
VIRTUAL_OR_REAL = pytest.mark.parametrize("anyio_backend", ["trio-autojump", "asyncio"], indirect=True)
