"""20,000 agents on Convex (the fake deployment, which holds every call to Convex's
limits): one core worker runs them all, reads them page by page, writes their heartbeats
in chunks, and the CLI lists them; no call is refused for a limit. As the last worker to
stop it marks them offline, in chunks.

The scenario runs once (`fleet`); each test checks one part of what it observed."""

import json
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from agent_runtime.clock import monotonic_s
from backend.convex import PRESENCE_CHUNK
from backend.local import LocalBackend
from tests.conftest import SECRET, wait_for
from tests.convex_pages import MAX_PAGE_ITEMS
from tests.convex_service import LocalService
from tests.fake_convex import FakeConvex, Refusal
from tests.runtime_process import RuntimeProcess, base_env, cli

AGENTS = 20_000
HEARTBEAT_INTERVAL_MS = 20_000
"""Start-up stagger min(0.4 x 20 s, 120 s) = 8 s: about 2,500 first beats per second, then
1,000 a second, which this 2-core machine carries beside the fake deployment."""

SYNC_INTERVAL_MS = 10_000
"""The timed sync: the one after the first finds nothing to change."""

SYNC_METRIC = re.compile(r"^agent_runtime_sync_duration_seconds_(sum|count) (\S+)$", re.M)


@dataclass
class Fleet:
    """What the scenario observed."""

    online_s: float
    running: int
    first_sync: dict[str, int]
    snapshot_calls: int
    next_sync: dict[str, int]
    unchanged_sync_ms: float
    listed: list[dict[str, object]]
    exit_code: int
    stop_s: float
    beats_per_call: list[int]
    marks_per_call: list[int]
    online_after_stop: int
    refusals: list[Refusal]


def insert_agents(backend: LocalBackend, count: int) -> None:
    """`count` agents in one transaction (creating them one by one takes ~30 s)."""
    now = backend.clock()
    rows = [(f"agent{n:05d}", f"agent-{n}", HEARTBEAT_INTERVAL_MS, now + n) for n in range(count)]
    with backend._write() as db:
        db.executemany(
            "INSERT INTO agents (id, name, session_key, heartbeat_interval_ms, created_at,"
            " updated_at) VALUES (?1, ?2, 'agent:' || ?1, ?3, ?4, ?4)",
            rows,
        )


def online(backend: LocalBackend) -> int:
    return sum(p["status"] == "online" for p in backend.list_presence())


def sync_metric(worker: RuntimeProcess) -> tuple[float, int]:
    """The worker's total sync time (s) and number of syncs, from /metrics."""
    text = httpx.get(f"http://127.0.0.1:{worker.port}/metrics", timeout=5).text
    values = {name: float(value) for name, value in SYNC_METRIC.findall(text)}
    return values["sum"], int(values["count"])


def counts(sync: dict[str, int]) -> dict[str, int]:
    return {key: sync[key] for key in ("addedCount", "removedCount", "updatedCount")}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp_path = tmp_path_factory.mktemp("fleet")
    backend = LocalBackend(tmp_path / "deployment.db")
    insert_agents(backend, AGENTS)
    with FakeConvex(LocalService(backend, SECRET).call) as deployment:
        env = base_env(
            tmp_path / "unused.db",
            CONVEX_URL=deployment.url,
            AGENT_SECRET=SECRET,
            AGENT_ROLE="core",
            AGENT_SYNC_INTERVAL=str(SYNC_INTERVAL_MS),
            LOG_LEVEL="INFO",
        )
        started_s = monotonic_s()
        worker = RuntimeProcess(env)
        try:
            wait_for(lambda: online(backend) == AGENTS, timeout_s=60, poll_s=0.5, what="online")
            online_s = monotonic_s() - started_s
            health = worker.health()
            snapshot_calls = sum(r.path == "service/agents:snapshot" for r in deployment.requests)
            total_s, syncs = sync_metric(worker)
            wait_for(
                lambda: sync_metric(worker)[1] > syncs,
                timeout_s=SYNC_INTERVAL_MS / 1000 + 10,
                poll_s=0.2,
                what="the next sync",
            )
            later_total_s, later_syncs = sync_metric(worker)
            next_sync = worker.health()["agentSync"]
            listed = cli(env, "agents", "list", "--json", timeout_s=120)
            assert listed.returncode == 0, listed.stderr
            before = len(deployment.requests)
            stop_started_s = monotonic_s()
            worker.signal(signal.SIGTERM)
            exit_code = worker.proc.wait(timeout=30)
            stop_s = monotonic_s() - stop_started_s
        finally:
            worker.stop()
        requests = deployment.requests
        yield Fleet(
            online_s=online_s,
            running=health["agents"]["running"],
            first_sync=counts(health["agentSync"]),
            snapshot_calls=snapshot_calls,
            next_sync=counts(next_sync),
            unchanged_sync_ms=(later_total_s - total_s) / (later_syncs - syncs) * 1000,
            listed=json.loads(listed.stdout),
            exit_code=exit_code,
            stop_s=stop_s,
            beats_per_call=[
                len(r.args["beats"])
                for r in requests
                if r.path == "service/presence:recordHeartbeats"
            ],
            marks_per_call=[
                len(r.args["agentIds"])
                for r in requests[before:]
                if r.path == "service/presence:markOffline"
            ],
            online_after_stop=online(backend),
            refusals=deployment.refusals,
        )
    backend.close()


def test_every_agent_runs_and_goes_online(fleet: Fleet) -> None:
    assert fleet.running == AGENTS
    assert fleet.first_sync == {"addedCount": AGENTS, "removedCount": 0, "updatedCount": 0}
    assert fleet.snapshot_calls >= AGENTS / MAX_PAGE_ITEMS  # a sync reads every page
    print(f"\n{AGENTS} agents online {fleet.online_s:.1f} s after the worker started")


def test_the_next_sync_changes_nothing(fleet: Fleet) -> None:
    assert fleet.next_sync == fleet.first_sync
    print(f"\nunchanged sync of {AGENTS} agents: {fleet.unchanged_sync_ms:.0f} ms")


def test_the_cli_lists_every_agent_online(fleet: Fleet) -> None:
    assert len(fleet.listed) == AGENTS
    assert {row["status"] for row in fleet.listed} == {"online"}


def test_heartbeats_and_offline_marks_go_in_chunks_none_refused(fleet: Fleet) -> None:
    assert fleet.exit_code == 0
    assert max(fleet.beats_per_call) <= PRESENCE_CHUNK
    assert max(fleet.marks_per_call, default=0) <= PRESENCE_CHUNK
    assert fleet.refusals == []
    print(
        f"\n{len(fleet.beats_per_call)} heartbeat writes; SIGTERM: exit in {fleet.stop_s:.1f} s,"
        f" {sum(fleet.marks_per_call)} offline marks in {len(fleet.marks_per_call)} call(s)"
    )


def test_the_last_worker_marks_every_agent_offline_at_sigterm(fleet: Fleet) -> None:
    assert sum(fleet.marks_per_call) == AGENTS
    assert fleet.online_after_stop == 0
    assert fleet.exit_code == 0
    assert fleet.stop_s < 5.0
