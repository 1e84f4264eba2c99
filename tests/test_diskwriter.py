"""The disk pipeline (coord/server/diskwriter.py): group commit, in order,
snapshots splitting a run, commit-only hard states riding along, and the
thread reporting whole runs (or the first failure) back."""

from coord.raft.types import Entry, HardState, Membership, Ready, Snapshot, SnapshotMeta
from coord.server.diskwriter import DiskWriter, SaveSnapshot, merge_entries


class Store:
    def __init__(self):
        self.calls = []

    def save(self, hs, entries, snapshot):
        self.calls.append(("save", hs, [e.index for e in entries], snapshot is not None))

    def save_snapshot(self, snapshot):
        self.calls.append(("snapshot", snapshot.meta.index))

    def compact(self, index):
        self.calls.append(("compact", index))


def ents(lo, hi, term=1):
    return [Entry(term, i) for i in range(lo, hi + 1)]


def snap(i):
    return Snapshot(SnapshotMeta(i, 1, Membership(voters=frozenset({1}))), b"s")


def test_a_run_of_readies_is_one_save():
    st = Store()
    w = DiskWriter(st, HardState(1, 1, 0))
    w.write_batch([Ready(hard_state=HardState(1, 1, 2), entries=ents(1, 3)),
                   Ready(entries=ents(4, 5)),
                   Ready(hard_state=HardState(1, 1, 4), entries=ents(5, 6, term=2))])  # overwrites 5
    assert st.calls == [("save", HardState(1, 1, 4), [1, 2, 3, 4, 5, 6], False)]
    assert w.fsyncs == 1


def test_snapshots_split_a_run_and_keep_the_order():
    st = Store()
    w = DiskWriter(st, HardState(1, 1, 0))
    w.write_batch([Ready(entries=ents(1, 2)), SaveSnapshot(snap(2), 2), Ready(entries=ents(3, 3)),
                   Ready(snapshot=snap(9)), Ready(entries=ents(10, 10))])
    assert st.calls == [("save", None, [1, 2], False), ("snapshot", 2), ("compact", 2),
                        ("save", None, [3], False), ("save", None, [10], True)]


def test_a_commit_only_hard_state_needs_no_write_of_its_own():
    st = Store()
    w = DiskWriter(st, HardState(1, 1, 0))
    w.write_batch([Ready(hard_state=HardState(1, 1, 3))])
    assert st.calls == []
    w.set_lazy(HardState(1, 1, 5))
    w.write_batch([Ready(entries=ents(1, 1))])
    assert st.calls == [("save", HardState(1, 1, 5), [1], False)]  # rides along with the next save


def test_term_vote_and_the_recovering_flag_are_written():
    st = Store()
    w = DiskWriter(st, HardState(1, 1, 0, recovering=True))
    w.write_batch([Ready(hard_state=HardState(1, 1, 0, recovering=False))])
    w.write_batch([Ready(hard_state=HardState(2, 0, 0))])
    assert [c[1] for c in st.calls] == [HardState(1, 1, 0), HardState(2, 0, 0)]


def test_the_thread_reports_runs_in_order_then_stops():
    st = Store()
    w = DiskWriter(st, HardState())
    done, failed = [], []

    def on_done(batch):
        done.append(batch)
        return True

    w.start(on_done, failed.append)
    for k in range(1, 21):
        w.submit([Ready(entries=ents(k, k))])
    w.stop()
    w.join()
    assert not failed
    assert [e.index for b in done for rd in b for e in rd.entries] == list(range(1, 21))
    assert len(st.calls) <= 20  # runs that queued up were written together


def test_a_failed_write_is_reported_once_and_ends_the_thread():
    class Broken(Store):
        def save(self, hs, entries, snapshot):
            raise OSError(5, "EIO")

    w = DiskWriter(Broken(), HardState())
    failed = []
    w.start(lambda b: True, failed.append)
    w.submit([Ready(entries=ents(1, 1))])
    w.submit([Ready(entries=ents(2, 2))])
    w.join()
    assert len(failed) == 1 and isinstance(failed[0], OSError)


def test_merge_entries_overwrites_a_suffix():
    assert [e.term for e in merge_entries(ents(1, 4), ents(3, 5, term=2))] == [1, 1, 2, 2, 2]
    assert merge_entries([], ents(1, 1)) == ents(1, 1)
