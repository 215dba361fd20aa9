"""Core workers as a fleet: real subprocesses on one backend (the SQLite file, then the
fake Convex deployment). Agents are sharded over the live workers; a killed worker's
agents move within the TTL; a stopped worker hands over without an offline blip; when
the last worker dies, presence expires."""

import signal
from collections.abc import Callable, Iterator
from itertools import combinations
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from agent_runtime.clock import monotonic_s, now_ms
from backend.convex import ConvexBackend
from backend.local import LocalBackend
from backend.port import Backend
from tests.conftest import SECRET, wait_for
from tests.fake_convex import FakeConvex
from tests.runtime_process import RuntimeProcess, base_env

T = TypeVar("T")

AGENTS = 300
INTERVAL_MS = 1000
WORKER_HEARTBEAT_MS = 500
WORKER_TTL_MS = 1500
FLEET_SETTINGS = {
    "WORKER_HEARTBEAT_MS": str(WORKER_HEARTBEAT_MS),
    "WORKER_TTL_MS": str(WORKER_TTL_MS),
    "LOG_LEVEL": "INFO",
    "AGENT_ROLE": "core",
}


class Fleet:
    """Workers started on one backend, and that backend as the test reads it."""

    def __init__(self, env: dict[str, str], admin: Backend) -> None:
        self.env = {**env, **FLEET_SETTINGS}
        self.admin = admin
        self.workers: dict[str, RuntimeProcess] = {}

    def start(self, name: str, **extra: str) -> RuntimeProcess:
        process = RuntimeProcess({**self.env, "WORKER_ID": name, **extra})
        self.workers[name] = process
        return process

    def running(self, *names: str) -> dict[str, set[str]]:
        return {name: {a["id"] for a in self.workers[name].agents()} for name in names}

    def presence(self) -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in self.admin.list_agents_with_presence()}

    def stop_all(self) -> None:
        for process in self.workers.values():
            process.stop()


@pytest.fixture(params=["local", "convex"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    admin: Backend
    if request.param == "local":
        db = tmp_path / "fleet.db"
        admin = LocalBackend(db)
        env = base_env(db)
    else:
        deployment: FakeConvex = request.getfixturevalue("convex_deployment")
        admin = ConvexBackend(deployment.url, SecretStr(SECRET))
        env = base_env(tmp_path / "unused.db", CONVEX_URL=deployment.url, AGENT_SECRET=SECRET)
    created = Fleet(env, admin)
    try:
        yield created
    finally:
        created.stop_all()
        admin.close()


def sharded(fleet: Fleet, names: tuple[str, ...], every: set[str]) -> bool:
    running = fleet.running(*names)
    disjoint = all(not (running[a] & running[b]) for a, b in combinations(names, 2))
    return disjoint and set().union(*running.values()) == every


def wait(predicate: Callable[[], T], timeout_s: float = 5.0, what: str = "condition") -> T:
    """`wait_for`, polling every 0.1 s: the predicates read 3 workers and the backend, and
    a tighter loop would take the CPU the workers need (2 cores)."""
    return wait_for(predicate, timeout_s, what, poll_s=0.1)


def watch(poll: Callable[[], None], until: Callable[[], bool], timeout_s: float) -> None:
    """Call `poll()` every 0.1 s until `until()` holds (or fail at the deadline)."""
    wait(lambda: poll() or until(), timeout_s, "the fleet to settle")


def test_three_workers_share_the_agents_survive_kills_and_hand_over_on_sigterm(
    fleet: Fleet,
) -> None:
    every = {fleet.admin.create_agent(f"agent-{i}", INTERVAL_MS).id for i in range(AGENTS)}
    for name in ("w1", "w2", "w3"):
        fleet.start(name)
    wait(lambda: sharded(fleet, ("w1", "w2", "w3"), every), timeout_s=15, what="3-way shard")
    shares = fleet.running("w1", "w2", "w3")
    assert all(len(share) > AGENTS // 6 for share in shares.values())  # each does real work

    # kill -9: the survivors run every agent again within the TTL + 2 s.
    killed_ms = now_ms()
    fleet.workers["w1"].proc.kill()
    killed_s = monotonic_s()
    wait(lambda: sharded(fleet, ("w2", "w3"), every), timeout_s=15, what="2-way shard")
    assert monotonic_s() - killed_s <= WORKER_TTL_MS / 1000 + 2
    wait(
        lambda: all((p["lastHeartbeatAt"] or 0) > killed_ms for p in fleet.presence().values()),
        timeout_s=10,
        what="every agent beating from a survivor",
    )

    # SIGTERM: never an offline agent, and the moved agents beat from w3 within 2 s.
    moved = fleet.running("w2")["w2"]
    term_ms = now_ms()
    fleet.workers["w2"].signal(signal.SIGTERM)
    offline_seen: set[str] = set()

    def poll() -> None:
        offline_seen.update(a for a, p in fleet.presence().items() if p["status"] != "online")

    def moved_beat_from_w3() -> bool:
        rows = {a["id"]: a for a in fleet.workers["w3"].agents()}
        return all((rows.get(a, {}).get("lastHeartbeatAt") or 0) >= term_ms for a in moved)

    watch(poll, moved_beat_from_w3, timeout_s=10)
    assert now_ms() - term_ms <= 2000 + 500  # + the /agents polling of 300 rows
    assert fleet.workers["w2"].proc.wait(timeout=5) == 0
    settle_s = monotonic_s() + 2 * INTERVAL_MS / 1000
    watch(poll, lambda: monotonic_s() >= settle_s, timeout_s=10)
    assert offline_seen == set()
    assert fleet.running("w3")["w3"] == every

    # kill -9 the last: presence expires, every agent offline within 3 x interval + 5 s.
    fleet.workers["w3"].proc.kill()
    wait(
        lambda: all(p["status"] == "offline" for p in fleet.presence().values()),
        timeout_s=3 * INTERVAL_MS / 1000 + 5,
        what="every agent offline",
    )


def test_a_second_process_with_the_same_worker_id_never_takes_the_first_ones_place(
    fleet: Fleet,
) -> None:
    agent = fleet.admin.create_agent("solo", INTERVAL_MS)
    first = fleet.start("same")
    wait(lambda: fleet.running("same")["same"] == {agent.id}, what="the first one running")
    second = RuntimeProcess({**fleet.env, "WORKER_ID": "same"})
    try:
        health = wait(
            lambda: (h := second.health())["workers"]["lastError"] and h, what="the refusal"
        )
        assert "'same' is registered by another live process" in health["workers"]["lastError"]
        assert not health["workers"]["registered"]
        assert second.agents() == []
        assert len([r for r in second.records() if "registered by another" in r["message"]]) == 1
        # The first keeps its registration and its agent.
        assert first.health()["workers"]["registered"]
        assert fleet.admin.list_workers() == ["same"]
        first.signal(signal.SIGTERM)  # it leaves: the second takes the id and the agent
        assert first.proc.wait(timeout=5) == 0
        wait(second.agents, timeout_s=5, what="the second one running the agent")
        assert second.health()["workers"]["registered"]
    finally:
        second.stop()
