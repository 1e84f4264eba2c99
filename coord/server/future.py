"""One type for every "wait for a result" in the server.

A ``Future`` is set exactly once, with a value or an error, from the Trio
thread (usually from the Raft loop while it applies an entry).  A caller
either awaits it (``await f.wait()``, which creates the Event only then) or,
on the hot paths that must not start a task per request, registers a
callback (``f.add_done_callback(fn)``), called synchronously when the future
is set.  Modelled on hashicorp/raft's ApplyFuture; cheaper than a Trio task
or an Event per request when nobody awaits.
"""

from __future__ import annotations

from typing import Any, Callable

import trio

__all__ = ["Future"]

_PENDING = object()


class Future:
    __slots__ = ("_value", "_error", "_callbacks", "_event")

    def __init__(self) -> None:
        self._value: Any = _PENDING
        self._error: BaseException | None = None
        self._callbacks: list[Callable[["Future"], None]] | None = None
        self._event: trio.Event | None = None

    @property
    def done(self) -> bool:
        return self._value is not _PENDING or self._error is not None

    def set(self, value: Any) -> None:
        """Resolve with ``value``; a second resolution is ignored."""
        if not self.done:
            self._value = value
            self._finish()

    def fail(self, error: BaseException) -> None:
        """Resolve with ``error``; a second resolution is ignored."""
        if not self.done:
            self._error = error
            self._finish()

    def result(self) -> Any:
        """The value (raises the error) of a resolved future."""
        if self._error is not None:
            raise self._error
        if self._value is _PENDING:
            raise RuntimeError("the future is not resolved yet")
        return self._value

    @property
    def error(self) -> BaseException | None:
        return self._error

    def add_done_callback(self, fn: Callable[["Future"], None]) -> None:
        """Call ``fn(self)`` once resolved (at once if it already is)."""
        if self.done:
            fn(self)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    async def wait(self) -> Any:
        if not self.done:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        return self.result()

    def _finish(self) -> None:
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, None
        for fn in callbacks or ():
            fn(self)
