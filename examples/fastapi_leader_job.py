"""A FastAPI service that runs a background job only on the elected leader.

Every replica of the service campaigns in the same election; the one that
leads runs the job, the others serve requests and wait.  If the leader dies
(or loses its session), another replica takes over; a leader that loses
leadership has its job cancelled at once, and its writes to coord are fenced
so a stale leader's late write is rejected.

    pip install -e ./client fastapi uvicorn      # or: pip install -e './client[examples]'
    export COORD_ENDPOINTS=127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183
    uvicorn examples.fastapi_leader_job:app --port 8001    # start two or three of these
    curl localhost:8001/leader

Or ``python examples/fastapi_leader_job.py --port 8001``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import time
from typing import AsyncIterator

import anyio
from fastapi import FastAPI

from coordclient import Client, ops
from coordclient.errors import CoordError
from coordclient.recipes import LeadershipLostError

ELECTION = os.environ.get("JOB_ELECTION", "/examples/fastapi/leader")
STATE = os.environ.get("JOB_STATE", "/examples/fastapi/last-run")
INTERVAL = float(os.environ.get("JOB_INTERVAL", "1.0"))
IDENTITY = os.environ.get("JOB_IDENTITY") or f"{socket.gethostname()}:{os.getpid()}"

status = {"identity": IDENTITY, "leading": False, "runs": 0, "token": None}


async def leader_job(client: Client) -> None:
    """Campaign forever; while leading, run the job every INTERVAL seconds."""
    election = client.election(ELECTION, IDENTITY)
    while True:
        try:
            async with election.campaign() as term:  # waits until we lead
                status.update(leading=True, token=term.fencing_token)
                while True:  # cancelled the moment leadership is lost
                    await term.fenced([ops.set(STATE, f"{IDENTITY} {time.time():.3f}".encode())])
                    status["runs"] += 1
                    await anyio.sleep(INTERVAL)
        except LeadershipLostError:
            pass  # another replica leads now (or will): campaign again
        except CoordError:
            await anyio.sleep(1)
        finally:
            status.update(leading=False, token=None)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with Client(os.environ.get("COORD_ENDPOINTS", "127.0.0.1:2181"), session_timeout=10) as client:
        if await client.exists(STATE) is None:
            with contextlib.suppress(CoordError):
                await client.create(STATE, b"", make_parents=True)
        app.state.coord = client
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader_job, client)
            yield
            tg.cancel_scope.cancel()


app = FastAPI(lifespan=lifespan)


@app.get("/leader")
async def leader() -> dict:
    """Who leads, and what this replica is doing."""
    client: Client = app.state.coord
    return {"leader": await client.election(ELECTION, IDENTITY).leader(), "me": status}


@app.get("/health")
async def health() -> dict:
    return {"session": app.state.coord.state.value}


if __name__ == "__main__":
    import uvicorn

    ap = argparse.ArgumentParser(description="FastAPI replica that runs a job only while leading")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
