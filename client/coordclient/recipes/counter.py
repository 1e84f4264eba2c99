"""A shared counter: atomic add by compare-and-set (kazoo's ``Counter``,
Curator's ``DistributedAtomicLong``/``DistributedAtomicValue``).

The value is the node's data (its decimal text, so ``coordctl get`` shows
it).  ``add`` reads the value and its version, then writes with that
version; if someone else wrote in between, coord refuses (BadVersion) and
it tries again.  Every successful write is therefore exactly one step from
the value it read: no update is lost, whatever the concurrency.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Union

import anyio

from coordclient.errors import BadVersionError, NodeExistsError, NoNodeError
from coordclient.recipes._core import check_recipe_path

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["Counter"]

Number = Union[int, float]


class Counter:
    """An int (or, with a float ``default``, a float) kept at ``path``::

        hits = Counter(client, "/stats/hits")
        await hits.add(1)          # -> the new value
        await hits.get()
        await hits.compare_and_set(10, 0)   # True if it was 10
    """

    def __init__(self, client: "Client", path: str, default: Number = 0):
        if not isinstance(default, (int, float)) or isinstance(default, bool):
            raise TypeError("default must be an int or a float")
        self.client = client
        self.path = check_recipe_path(path)
        self.default = default
        self.type = type(default)
        self._rng = random.Random()

    def _decode(self, data: bytes) -> Number:
        text = data.decode("ascii").strip()
        return self.type(text) if text else self.default

    def _encode(self, value: Number) -> bytes:
        return repr(self.type(value)).encode("ascii")

    async def _read(self) -> tuple[Number, int]:
        """(value, version); creates the node with the default if missing."""
        while True:
            try:
                data, stat = await self.client.get(self.path)
                return self._decode(data), stat.version
            except NoNodeError:
                try:
                    await self.client.create(self.path, self._encode(self.default), make_parents=True)
                except NodeExistsError:
                    pass

    async def get(self) -> Number:
        """The current value (the default if the counter was never written)."""
        try:
            return self._decode((await self.client.get(self.path))[0])
        except NoNodeError:
            return self.default

    async def add(self, delta: Number) -> Number:
        """Add ``delta`` atomically; the value after this add."""
        attempt = 0
        while True:
            value, version = await self._read()
            new = self.type(value + delta)
            try:
                await self.client.set(self.path, self._encode(new), version=version)
                return new
            except BadVersionError:
                attempt += 1  # someone else wrote first: read again (jittered, so contenders spread out)
                await anyio.sleep(self._rng.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))

    async def subtract(self, delta: Number) -> Number:
        return await self.add(-delta)

    async def compare_and_set(self, expected: Number, value: Number) -> bool:
        """Set ``value`` if the counter is ``expected`` now; whether it did."""
        current, version = await self._read()
        if current != expected:
            return False
        try:
            await self.client.set(self.path, self._encode(value), version=version)
            return True
        except BadVersionError:
            return False

    async def set(self, value: Number) -> None:
        """Overwrite the value (no compare)."""
        await self._read()
        await self.client.set(self.path, self._encode(value))
