"""The SDK's shape: the blocking facade cannot drift from the async client,
recipes have blocking twins with the same calls, and the package has no
import cycles."""

import ast
import inspect
import pathlib

import pytest

import coordclient
from coordclient.client import Client
from coordclient.sync import BLOCKING_CALLS, SyncClient

PACKAGE = pathlib.Path(coordclient.__file__).parent


def params(fn):
    """A callable's parameters without ``self`` (names, kinds, defaults)."""
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name != "self"]


def test_every_async_call_has_a_blocking_twin_with_its_signature():
    public = {name for name, fn in inspect.getmembers(Client, inspect.iscoroutinefunction) if not name.startswith("_")}
    # calls with a hand-written blocking form (they are not request/response calls)
    special = {"wait_state", "aclose"}
    assert public - special == set(BLOCKING_CALLS)
    for name in BLOCKING_CALLS:
        async_fn, sync_fn = getattr(Client, name), getattr(SyncClient, name)
        assert inspect.signature(sync_fn) == inspect.signature(async_fn), name
        assert sync_fn.__doc__ == async_fn.__doc__, name
    assert params(SyncClient.wait_state) == params(Client.wait_state)


def test_sync_methods_share_the_async_parameters():
    for name in RECIPE_FACTORIES + ("watch", "add_listener", "remove_listener"):
        assert params(getattr(SyncClient, name)) == params(getattr(Client, name)), name


RECIPE_FACTORIES = ("lock", "rwlock", "semaphore", "election", "barrier", "double_barrier", "counter", "queue",
                    "locking_queue", "group", "lease", "tree_cache", "node_cache", "ring")


def test_every_recipe_has_a_blocking_twin_with_the_same_calls():
    from coordclient import recipes
    from coordclient.recipes import blocking

    pairs = {recipes.Lock: blocking.SyncLock, recipes.Semaphore: blocking.SyncSemaphore,
             recipes.Election: blocking.SyncElection, recipes.Barrier: blocking.SyncBarrier,
             recipes.DoubleBarrier: blocking.SyncDoubleBarrier, recipes.Counter: blocking.SyncCounter,
             recipes.Queue: blocking.SyncQueue, recipes.LockingQueue: blocking.SyncLockingQueue,
             recipes.Group: blocking.SyncGroup, recipes.Lease: blocking.SyncLease,
             recipes.TreeCache: blocking.SyncTreeCache, recipes.RingMember: blocking.SyncRingMember}
    for async_cls, sync_cls in pairs.items():
        for name, fn in inspect.getmembers(async_cls, inspect.iscoroutinefunction):
            if name.startswith("_") or name in ("aclose", "initialized", "wait_changed", "resign"):
                continue
            twin = getattr(sync_cls, name, None)
            assert twin is not None, f"{sync_cls.__name__} lacks {name}"
            assert params(twin)[: len(params(fn))] == params(fn), f"{sync_cls.__name__}.{name}"
    # every factory of Client has the blocking twin of what it returns
    for name in RECIPE_FACTORIES:
        returned = inspect.signature(getattr(Client, name)).return_annotation
        assert inspect.signature(getattr(SyncClient, name)).return_annotation == f"Sync{returned}", name


def test_recipe_factories_return_their_real_types():
    hints = {name: inspect.signature(getattr(Client, name)).return_annotation
             for name in ("lock", "rwlock", "semaphore", "election")}
    assert hints == {"lock": "Lock", "rwlock": "ReadWriteLock", "semaphore": "Semaphore", "election": "Election"}
    c = Client("127.0.0.1:1")
    from coordclient.recipes import Election, Lock, ReadWriteLock, Semaphore

    assert type(c.lock("/l")) is Lock and type(c.rwlock("/l")) is ReadWriteLock
    assert type(c.semaphore("/l", 2)) is Semaphore and type(c.election("/e", "me")) is Election


def _runtime_imports(path: pathlib.Path) -> set[str]:
    """coordclient modules a module imports anywhere (functions included:
    a deferred import is still a cycle), except under ``if TYPE_CHECKING``."""
    found = set()

    def walk(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.orelse:
                walk(sub)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("coordclient"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("coordclient"))
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(ast.parse(path.read_text()))
    return found


def test_no_import_cycles():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        modules[name] = path
    graph = {name: {m for m in _runtime_imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert "coordclient.client" in graph["coordclient.sync"]  # the check does see real imports
