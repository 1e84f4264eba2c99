"""The README's Python example runs unchanged on asyncio and, with only
``trio.run`` in place of ``asyncio.run``, on Trio, against a real ensemble."""

import os
import re
import subprocess
import sys

import pytest
import trio

from coordclient import SyncClient
from tests.cluster import ROOT, Cluster, child_env


def readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("## Using coord from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    with Cluster(3, tmp_path_factory.mktemp("readme")) as cluster:
        cluster.start()
        trio.run(cluster.wait_leader)
        yield cluster.endpoints


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_readme_example_runs_on_both_event_loops(endpoints, loop, tmp_path):
    code = readme_example()
    assert "asyncio.run(main())" in code
    if loop == "trio":
        code = code.replace("import asyncio, os", "import trio, os").replace("asyncio.run(main())", "trio.run(main)")
    with SyncClient(endpoints) as c:  # each run starts from an empty tree
        if c.exists("/app") is not None:
            c.delete("/app", recursive=True)
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], env={**child_env(), "COORD_ENDPOINTS": endpoints},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("['m-") and lines[1].startswith("changed /app/config ")
