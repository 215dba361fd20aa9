"""Which live worker owns an agent: rendezvous (highest random weight) hashing.

Every worker computes the same owner from the same sorted live set, with no
coordination: the owner of an agent is the worker with the highest hash of
(agent id, worker id). When a worker joins or leaves, only the agents it gains or
loses move (about 1/N of them), and the rest stay where they are.
"""

import hashlib
from collections.abc import Iterable, Sequence


def weight(agent_id: str, worker_id: str) -> int:
    """The rendezvous weight of this (agent, worker) pair: 64 bits of BLAKE2b."""
    digest = hashlib.blake2b(f"{agent_id}\0{worker_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(agent_id: str, workers: Sequence[str]) -> str | None:
    """The worker in `workers` that owns `agent_id` (ties, never seen in practice, go to
    the greater worker id); None when there is no worker."""
    if not workers:
        return None
    return max(workers, key=lambda worker_id: (weight(agent_id, worker_id), worker_id))


class Owners:
    """Owners by agent id for one live set, computed once per agent while the set holds.

    An unchanged sync of 10,000 agents then hashes nothing; a membership change
    recomputes every owner once.
    """

    def __init__(self) -> None:
        self._workers: tuple[str, ...] = ()
        self._owners: dict[str, str | None] = {}

    def owned_by(
        self, worker_id: str, agent_ids: Iterable[str], workers: Sequence[str]
    ) -> set[str]:
        """The ids among `agent_ids` whose owner over `workers` is `worker_id`."""
        live = tuple(sorted(set(workers)))
        if live != self._workers:
            self._workers, self._owners = live, {}
        owners = self._owners
        owned = set()
        seen = set()
        for agent_id in agent_ids:
            seen.add(agent_id)
            if agent_id not in owners:
                owners[agent_id] = owner_of(agent_id, live)
            if owners[agent_id] == worker_id:
                owned.add(agent_id)
        if len(owners) > len(seen):  # forget removed agents
            self._owners = {a: owners[a] for a in seen}
        return owned
