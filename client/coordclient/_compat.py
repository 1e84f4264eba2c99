"""Small differences between the event loops and library versions coord
supports, kept in one place.

AnyIO task groups (and new Trio nurseries) wrap every exception that leaves
them in an ``ExceptionGroup``.  Inside the SDK a task group surrounds the
user's ``async with Client(...)`` body, so without care a ``NoNodeError``
raised by the user's own code would come out as a group: the SDK unwraps a
group that holds exactly one exception.
"""

from __future__ import annotations

from typing import Any, Callable

import anyio.to_thread


def sole_exception(group: BaseException) -> BaseException | None:
    """The single exception inside (nested) exception groups, if there is
    exactly one; None otherwise."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


async def to_thread_abandonable(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a worker thread; stop waiting for it when cancelled."""
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
