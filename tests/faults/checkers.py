"""Checkers for what a fault schedule's clients observed (pure functions).

Each takes plain data (as saved in a history file) and returns a list of
``Violation``s; an empty list means the property held.  ``tests/
test_checkers.py`` plants a violation of each kind to prove it is caught.

* ``check_session_order`` -- plain (local) reads: a session never sees a key
  older than what it saw or wrote before (ZooKeeper's sequential consistency).
* ``check_creates``       -- every acknowledged create is present at the end,
  none was applied twice, nothing appeared that nobody created.
* ``check_ephemerals``    -- a live session's ephemerals are all present, an
  expired or closed session's are all gone.
* ``check_locks``         -- critical sections never overlap in real time,
  fencing tokens grow with real-time order, and the guarded resource never
  accepts a write from a holder after a newer holder's.
* ``check_watches``       -- per watcher: events in zxid order, none twice,
  none missing or invented compared to the final history of changes, and
  every acknowledged change is in that history.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from tests.faults.history import Op


@dataclass
class Violation:
    checker: str
    message: str
    details: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"[{self.checker}] {self.message}"] + [f"    {d}" for d in self.details[:20]]
        if len(self.details) > 20:
            lines.append(f"    ... and {len(self.details) - 20} more")
        return "\n".join(lines)


# -- plain reads -------------------------------------------------------------


def check_session_order(ops: Iterable[Op]) -> list[Violation]:
    """For every pair of ops of one session on one key where A completed
    before B was invoked and both results carry the node's mzxid:
    B.mzxid >= A.mzxid.  Reads of an absent node carry nothing and are skipped."""
    by_session: dict[tuple[int, str], list[Op]] = defaultdict(list)
    for op in ops:
        if op.status == "ok" and op.mzxid is not None:
            by_session[(op.session, op.key)].append(op)
    bad = []
    for (session, key), sops in sorted(by_session.items()):
        events = sorted([(op.complete, 1, op) for op in sops] + [(op.invoke, 0, op) for op in sops],
                        key=lambda e: (e[0], e[1]))
        seen, seen_by = 0, None
        for _, kind, op in events:
            if kind == 1:
                if op.mzxid > seen:
                    seen, seen_by = op.mzxid, op
            elif seen and op.mzxid is not None and op.mzxid < seen and op.f == "read":
                bad.append(f"session {session} key {key}: {op.describe()} saw mzxid {op.mzxid} after "
                           f"{seen_by.describe()} had seen mzxid {seen}")
    return [Violation("session-order", f"{len(bad)} plain read(s) went back in time", bad)] if bad else []


# -- creates -----------------------------------------------------------------


def check_creates(acked: list[list], unknown: list[list], final: list[str]) -> list[Violation]:
    """``acked``/``unknown``: [name or None, tag] of each create; the tag is
    unique per create and is the name's prefix (sequential creates append
    a 10-digit counter).  ``final``: the names present at the end."""
    def tag_of(name: str) -> str:
        base = name.rsplit("-", 1)
        return base[0] + "-" if len(base) == 2 and base[1].isdigit() and len(base[1]) == 10 else name

    present: dict[str, list[str]] = defaultdict(list)
    for name in final:
        present[tag_of(name)].append(name)
    out = []
    lost = [f"{name} (tag {tag})" for name, tag in acked if name not in final]
    if lost:
        out.append(Violation("creates", f"{len(lost)} acknowledged create(s) lost", lost))
    dup = [f"{tag}: {sorted(names)}" for tag, names in present.items() if len(names) > 1]
    if dup:
        out.append(Violation("creates", f"{len(dup)} create(s) applied more than once", dup))
    attempted = {tag for _, tag in acked} | {tag for _, tag in unknown}
    phantom = [f"{names}" for tag, names in present.items() if tag not in attempted]
    if phantom:
        out.append(Violation("creates", f"{len(phantom)} node(s) nobody created", phantom))
    return out


# -- ephemerals ----------------------------------------------------------------


def check_ephemerals(sessions: list[dict], final: dict[str, int]) -> list[Violation]:
    """``sessions``: {"sid", "state": live|expired|closed|unknown, "acked": [paths],
    "unknown": [paths]}.  ``final``: path -> ephemeral owner at the end (for
    expired sessions, read after the ensemble had time to apply the expiry)."""
    by_owner: dict[int, set[str]] = defaultdict(set)
    for path, owner in final.items():
        by_owner[owner].add(path)
    out = []
    missing, extra, leftover = [], [], []
    known = {s["sid"] for s in sessions}
    for s in sessions:
        sid, owned = s["sid"], by_owner.get(s["sid"], set())
        if s["state"] == "live":
            missing += [f"{p} of live session {sid:#x}" for p in s["acked"] if p not in owned]
            allowed = set(s["acked"]) | set(s["unknown"])
            extra += [f"{p} owned by {sid:#x}, which never created it" for p in owned - allowed]
        elif s["state"] in ("expired", "closed"):
            leftover += [f"{p} of {s['state']} session {sid:#x}" for p in sorted(owned)]
    strangers = [f"{p} owned by unknown session {o:#x}" for o, ps in by_owner.items() if o not in known for p in ps]
    if missing:
        out.append(Violation("ephemerals", f"{len(missing)} ephemeral(s) of live sessions missing", missing))
    if leftover:
        out.append(Violation("ephemerals", f"{len(leftover)} ephemeral(s) of ended sessions still present",
                             leftover))
    if extra or strangers:
        out.append(Violation("ephemerals", "ephemerals nobody created", extra + strangers))
    return out


# -- locks -----------------------------------------------------------------------


def check_locks(holds: list[dict], writes: list[dict], end: float, t0: float = 0.0) -> list[Violation]:
    """``holds``: {"client", "token", "acquired", "until", "ended"}: the client
    believed it held the lock from ``acquired`` until ``until`` (its release
    call, or the moment its connection was lost; None = still held at
    ``end``); ``ended`` says how the hold ended; ``expired_unseen``: the
    session turned out expired although its client was never disconnected
    after the hold began.  ``writes``: {"zxid", "token", "client"}: guarded
    writes the resource accepted (a multi that also checked the writer's lock
    node).  Times print relative to ``t0``.

    Overlaps and token inversions involving a hold whose session expired
    unseen are reported apart: the client could not have known, so they
    point at the ensemble's session handling rather than at the recipe."""
    def unseen(h: dict) -> bool:
        return bool(h.get("expired_unseen")) or h.get("ended") in ("expired", "SessionExpired")

    def where(h: dict) -> str:
        return f" on server {h['server']} at zxid {h['zxid']} seeing {h.get('queue')}" if "server" in h else ""

    out = []
    hs = sorted(holds, key=lambda h: h["acquired"])
    overlaps: dict[bool, list[str]] = {True: [], False: []}
    for i, a in enumerate(hs):
        a_end = end if a["until"] is None else a["until"]
        later = [b for b in hs[i + 1:] if b["acquired"] < a_end and b["client"] != a["client"]]
        if not later:
            continue
        b = later[0]
        overlaps[unseen(a) or any(unseen(x) for x in later)].append(
            f"client {a['client']} (token {a['token']}) held [{a['acquired'] - t0:.3f}, {a_end - t0:.3f}] "
            f"(ended: {a.get('ended')}) while {len(later)} later hold(s) began, the first by client {b['client']} "
            f"(token {b['token']}, ended: {b.get('ended')}) at {b['acquired'] - t0:.3f}{where(b)}")
    order: dict[bool, list[str]] = {True: [], False: []}
    for a in hs:
        if a["until"] is None:
            continue
        for b in hs:
            if b["acquired"] > a["until"] and b["token"] <= a["token"]:
                order[unseen(a) or unseen(b)].append(
                    f"token {b['token']} (client {b['client']}, acquired {b['acquired'] - t0:.3f}, ended: "
                    f"{b.get('ended')}) came after token {a['token']} (client {a['client']}, released "
                    f"{a['until'] - t0:.3f}){where(b)}")
    for kind, found in ((False, overlaps[False]), (False, order[False]), (True, overlaps[True]), (True, order[True])):
        if not found:
            continue
        what = "critical section(s) overlapped by others" if found is overlaps[kind] else \
            "fencing token(s) did not increase"
        if kind:
            what += f": {SESSION_EXPIRED_UNSEEN}"
        out.append(Violation("locks", f"{len(found)} {what}", found))
    stale, top = [], None
    for w in sorted(writes, key=lambda w: w["zxid"]):
        if top is not None and w["token"] < top["token"]:
            stale.append(f"zxid {w['zxid']}: write by token {w['token']} (client {w['client']}) after zxid "
                         f"{top['zxid']} by token {top['token']} (client {top['client']})")
        elif top is None or w["token"] >= top["token"]:
            top = w
    if stale:
        out.append(Violation("locks", f"{len(stale)} guarded write(s) by a superseded holder", stale))
    return out


SESSION_EXPIRED_UNSEEN = "a holder's session expired while its client stayed connected"


# -- watches -------------------------------------------------------------------------


Event = tuple[int, str, str]  # (zxid, type, path)


def _events(rows: Iterable[Any]) -> list[Event]:
    return [(int(z), str(t), str(p)) for z, t, p in rows]


def check_watches(watchers: list[dict], reference: list | None, ref_from: int | None,
                  acked: list) -> list[Violation]:
    """``watchers``: {"name", "start", "end", "events": [[zxid, type, path]...],
    "resyncs": [zxid...]}: the watch covers changes with start < zxid <= end
    (after a resync only those after the resync's zxid).  ``reference``: the
    final history of changes in the watched subtree from ``ref_from`` on, as
    replayed by a server after the run (None if no server could replay it).
    ``acked``: changes the workload saw acknowledged (zxid, type, path)."""
    out = []
    ref = set(_events(reference)) if reference is not None else None
    acked_ev = set(_events(acked))
    if ref is not None:
        lost = sorted(e for e in acked_ev if e[0] > ref_from and e not in ref)
        if lost:
            out.append(Violation("watches", f"{len(lost)} acknowledged change(s) missing from the replayed history",
                                 [str(e) for e in lost]))
    for w in watchers:
        name, evs = w["name"], _events(w["events"])
        start = max([w["start"]] + list(w.get("resyncs", [])))
        end = w["end"]
        disorder = [f"{a} then {b}" for a, b in zip(evs, evs[1:]) if b[0] < a[0]]
        if disorder:
            out.append(Violation("watches", f"{name}: events out of zxid order", disorder))
        counts: dict[Event, int] = defaultdict(int)
        for e in evs:
            counts[e] += 1
        dups = [f"{e} x{c}" for e, c in counts.items() if c > 1]
        if dups:
            out.append(Violation("watches", f"{name}: duplicate events", dups))
        got = {e for e in evs if start < e[0] <= end}
        if ref is not None and ref_from is not None and ref_from <= start:
            want = {e for e in ref if start < e[0] <= end}
            gaps = sorted(want - got)
            if gaps:
                out.append(Violation("watches", f"{name}: {len(gaps)} event(s) missing (watch covered "
                                                f"({start}, {end}])", [str(e) for e in gaps]))
            invented = sorted(got - want)
            if invented:
                out.append(Violation("watches", f"{name}: {len(invented)} event(s) not in the history",
                                     [str(e) for e in invented]))
        else:
            gaps = sorted(e for e in acked_ev if start < e[0] <= end and e not in got)
            if gaps:
                out.append(Violation("watches", f"{name}: {len(gaps)} acknowledged change(s) never delivered",
                                     [str(e) for e in gaps]))
    return out
