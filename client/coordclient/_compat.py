"""Differences between the Trio versions coord supports (0.22 and later).

Newer Trio wraps every exception that leaves a nursery in an
``ExceptionGroup`` ("strict exception groups").  Inside the SDK a nursery
surrounds the user's ``async with Client(...)`` body, so without care a
``NoNodeError`` raised by the user's own code would come out as a group: the
SDK unwraps a group that holds exactly one exception.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import trio


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


_THREAD_KW = ("abandon_on_cancel" if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters
              else "cancellable")


async def to_thread_abandonable(fn: Callable[..., Any], *args: Any) -> Any:
    """``trio.to_thread.run_sync`` that stops waiting when cancelled (the
    argument is ``cancellable`` in old Trio, ``abandon_on_cancel`` in new)."""
    return await trio.to_thread.run_sync(fn, *args, **{_THREAD_KW: True})
