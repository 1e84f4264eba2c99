"""Which connection wants which change events.

Watches are per server and per connection (not replicated): the state
machine reports each change as (zxid, type, path) events, and this registry
maps them to watchers.  Kinds, as in ZooKeeper:

* ``data`` (set by get/exists): one-shot; fires on created/changed/deleted of the node;
* ``children``: one-shot; fires on a change of the node's children, or its deletion;
* ``persistent``: every event on the node until removed;
* ``persistent`` + ``recursive``: every created/changed/deleted in the subtree.

Lookup cost per event is one dict probe per kind plus one per ancestor for
recursive watches, so thousands of watches cost nothing on an unrelated write.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from coordclient.protocol import EventType

CREATED, DELETED, CHANGED, CHILDREN = (EventType.CREATED.value, EventType.DELETED.value,
                                       EventType.CHANGED.value, EventType.CHILDREN.value)

KINDS = ("data", "exists", "children", "persistent")


class Watcher(Protocol):
    def deliver_event(self, wid: int, etype: str, path: str, zxid: int) -> None: ...


def ancestors_and_self(path: str) -> Iterable[str]:
    yield path
    while path != "/":
        i = path.rfind("/")
        path = "/" if i == 0 else path[:i]
        yield path


class WatchRegistry:
    def __init__(self) -> None:
        self._one_data: dict[str, dict[tuple[Watcher, int], None]] = {}
        self._one_children: dict[str, dict[tuple[Watcher, int], None]] = {}
        self._persistent: dict[str, dict[tuple[Watcher, int], None]] = {}
        self._recursive: dict[str, dict[tuple[Watcher, int], None]] = {}
        self._by_watcher: dict[Watcher, dict[int, tuple[dict, str]]] = {}

    def count(self) -> int:
        return sum(len(v) for v in self._by_watcher.values())

    def count_of(self, watcher: Watcher) -> int:
        """Watches of one watcher (a connection), for the sessions view."""
        return len(self._by_watcher.get(watcher, ()))

    def _table(self, kind: str, recursive: bool) -> dict:
        if kind in ("data", "exists"):
            return self._one_data
        if kind == "children":
            return self._one_children
        return self._recursive if recursive else self._persistent

    @staticmethod
    def matches(kind: str, recursive: bool, watch_path: str, etype: str, path: str) -> bool:
        """Does an event concern a watch?  (Used for replay from history.)"""
        if kind in ("data", "exists"):
            return path == watch_path and etype != CHILDREN
        if kind == "children":
            return path == watch_path and etype in (CHILDREN, DELETED)
        if recursive:
            if etype == CHILDREN:
                return False
            return watch_path == "/" or path == watch_path or path.startswith(watch_path + "/")
        return path == watch_path

    def add(self, watcher: Watcher, wid: int, path: str, kind: str, recursive: bool = False) -> None:
        table = self._table(kind, recursive)
        table.setdefault(path, {})[(watcher, wid)] = None
        self._by_watcher.setdefault(watcher, {})[wid] = (table, path)

    def remove(self, watcher: Watcher, wid: int) -> bool:
        mine = self._by_watcher.get(watcher)
        if not mine or wid not in mine:
            return False
        table, path = mine.pop(wid)
        entries = table.get(path)
        if entries is not None:
            entries.pop((watcher, wid), None)
            if not entries:
                del table[path]
        return True

    def remove_watcher(self, watcher: Watcher) -> None:
        for wid in list(self._by_watcher.get(watcher, {})):
            self.remove(watcher, wid)
        self._by_watcher.pop(watcher, None)

    def dispatch(self, zxid: int, events: list) -> None:
        """Deliver one applied command's events, in order."""
        for etype, path in events:
            if etype != CHILDREN:
                self._fire_once(self._one_data, path, etype, zxid)
            if etype in (CHILDREN, DELETED):
                self._fire_once(self._one_children, path, etype, zxid)
            targets = self._persistent.get(path)
            if targets:
                for w, wid in list(targets):
                    w.deliver_event(wid, etype, path, zxid)
            if self._recursive and etype != CHILDREN:
                for p in ancestors_and_self(path):
                    targets = self._recursive.get(p)
                    if targets:
                        for w, wid in list(targets):
                            w.deliver_event(wid, etype, path, zxid)

    def _fire_once(self, table: dict, path: str, etype: str, zxid: int) -> None:
        targets = table.pop(path, None)
        if not targets:
            return
        for w, wid in targets:
            mine = self._by_watcher.get(w)
            if mine is not None:
                mine.pop(wid, None)
            w.deliver_event(wid, etype, path, zxid)
