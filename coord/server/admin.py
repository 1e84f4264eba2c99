"""Membership changes and leadership transfer, run on the leader.

Every change is computed from the configuration the caller saw (its
``version``, the log index of that configuration), so two operators racing
cannot both apply theirs; the Raft core refuses a change while another is
in flight, any result without a voter, and a configuration whose quorums
need servers it has not heard from.  Voter changes go through joint
consensus (C_old,new then C_new); ``change`` can add and remove several
servers in that one step.
"""

from __future__ import annotations

import trio

from coord.raft.types import ConfChangeError, ProposalDropped
from coord.server.raftnode import RaftNode
from coordclient.errors import ConfChangeError as WireConfChange
from coordclient.errors import NotLeaderError, OperationTimeoutError

__all__ = ["AdminService", "ChangeLost"]


class ChangeLost(OperationTimeoutError):
    def __init__(self) -> None:
        super().__init__("the change was overwritten by a new leader before it committed; retry it")


class AdminService:
    def __init__(self, node: RaftNode, *, timeout: float, leader_client_addr):
        self.node = node
        self.timeout = timeout
        self._leader_client_addr = leader_client_addr  # leader id -> its client address (or None)

    def _require_leader(self) -> None:
        node = self.node
        if not node.is_leader:
            leader = node.leader_id
            addr = self._leader_client_addr(leader) if leader else None
            err = NotLeaderError(f"this server is not the leader; the leader is {leader or 'unknown'}"
                                 + (f" at {addr}" if addr else ""))
            err.wire_extra = {"leader": leader, "leader_client": addr}
            raise err

    async def _leadership_settled(self) -> None:
        """A new leader refuses changes until it has committed an entry of its
        own term (then it knows what is committed): wait for that rather than
        refusing an operator who asked a moment after an election."""
        self._require_leader()
        with trio.move_on_after(self.timeout):
            await self.node.applied(self.node.status().last_index).wait()
        self._require_leader()

    async def change(self, *, add_voters: dict[int, dict], add_learners: dict[int, dict], remove: list[int],
                     promote: list[int], version: int | None, wait: bool = True) -> None:
        await self._leadership_settled()
        cur = self.node.membership
        members = cur.members()
        for sid in list(add_voters) + list(add_learners):
            if sid in members:
                raise WireConfChange(f"server {sid} is already a member")
        for sid in remove:
            if sid not in members:
                raise WireConfChange(f"server {sid} is not a member")
        for sid in promote:
            if sid not in cur.learners:
                raise WireConfChange(f"server {sid} is not a learner")
        voters = (set(cur.voters) | set(add_voters) | set(promote)) - set(remove)
        learners = (set(cur.learners) | set(add_learners)) - set(remove) - set(promote)
        try:
            index, term = await self.node.propose_membership(
                voters, learners, {**add_voters, **add_learners}, expect_version=version).wait()
        except ConfChangeError as e:
            raise WireConfChange(str(e)) from None
        except ProposalDropped as e:
            raise NotLeaderError(str(e)) from None
        if wait:
            await self._wait_settled(index, term)

    async def _wait_settled(self, index: int, term: int) -> None:
        """Until the change is committed and, for a voter change, C_new too
        (the leader appends C_new itself when the joint configuration commits)."""
        node = self.node
        with trio.move_on_after(10 * self.timeout) as scope:
            await node.applied(index).wait()
            if node.term_at(index) not in (None, term):
                raise ChangeLost()
            if not node.is_leader:
                return  # committed; a new leader finishes C_new (the caller polls status)
            st = node.status()
            await node.applied(st.membership_version).wait()
        if scope.cancelled_caught:
            raise OperationTimeoutError("the membership change did not complete in time; check `status`")

    async def transfer(self, target: int) -> dict:
        await self._leadership_settled()
        st = self.node.status()
        if target == 0:
            candidates = [v for v in st.membership.voters if v != st.node_id and v in st.progress]
            if not candidates:
                raise WireConfChange("there is no other voter to transfer leadership to")
            target = max(candidates, key=lambda v: st.progress[v]["match"])
        try:
            await self.node.transfer_leadership(target).wait()
        except (ConfChangeError, ProposalDropped) as e:
            raise WireConfChange(str(e)) from None
        with trio.move_on_after(max(2.0, self.timeout)):
            await self.node.wait_soft_state(lambda s: s.leader == target)
            return {"leader": target}
        raise OperationTimeoutError(f"leadership did not move to {target} in time")
