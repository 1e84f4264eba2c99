"""The one result type of the server (coord/server/future.py)."""

import pytest
import trio
import trio.testing

from coord.server.future import Future


async def test_value_callbacks_and_waiters():
    f = Future()
    seen = []
    f.add_done_callback(lambda g: seen.append(g.result()))
    async with trio.open_nursery() as n:
        n.start_soon(lambda: _wait_into(f, seen))
        await trio.testing.wait_all_tasks_blocked()
        assert not f.done and seen == []
        f.set(7)
        f.set(8)  # a second resolution is ignored
        f.fail(RuntimeError())
    assert seen == [7, 7] and f.result() == 7
    late = []
    f.add_done_callback(lambda g: late.append(g.result()))  # already done: called at once
    assert late == [7]


async def _wait_into(f, out):
    out.append(await f.wait())


async def test_errors_reach_waiters_and_callbacks():
    f = Future()
    errors = []
    f.add_done_callback(lambda g: errors.append(g.error))
    f.fail(KeyError("k"))
    with pytest.raises(KeyError):
        await f.wait()
    assert isinstance(errors[0], KeyError)


def test_result_of_a_pending_future_is_an_error():
    with pytest.raises(RuntimeError, match="not resolved"):
        Future().result()
