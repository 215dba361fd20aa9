"""The change feed in a running worker, in the default mode on Convex (subscribe): an
idle worker costs almost no function calls, a feed that drops falls back to polling and
stops polling when it is back, and a deployment that never answers the WebSocket
handshake leaves the worker fully responsive."""

import signal
import statistics
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent_runtime.clock import monotonic_s
from backend.local import LocalBackend
from tests.conftest import SECRET, stays_false, wait_for
from tests.convex_service import LocalService
from tests.fake_convex import FakeConvex
from tests.runtime_process import RuntimeProcess, base_env

HEARTBEAT_WRITES = frozenset({"service/workers:heartbeat", "service/presence:recordHeartbeats"})
"""The worker's registration and the agents' presence: heartbeat writes, which the idle
budget sets aside."""

SIGNALS = frozenset({"service/agents:version", "service/jobs:version"})


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[FakeConvex, LocalBackend]]:
    backend = LocalBackend(tmp_path / "deployment.db")
    with FakeConvex(LocalService(backend, SECRET).call) as fake:
        yield fake, backend
    backend.close()


def start_worker(tmp_path: Path, fake: FakeConvex, **extra: str) -> RuntimeProcess:
    return RuntimeProcess(
        base_env(
            tmp_path / "unused.db",
            CONVEX_URL=fake.url,
            AGENT_SECRET=SECRET,
            AGENT_ROLE="core",
            LOG_LEVEL="INFO",
            **extra,
        )
    )


def calls_since(fake: FakeConvex, start: int, paths: frozenset[str] | None = None) -> list[str]:
    """The function paths called since the `start`-th request, heartbeat writes aside."""
    called = [r.path for r in fake.requests[start:] if r.path not in HEARTBEAT_WRITES]
    return [p for p in called if paths is None or p in paths]


def feed(worker: RuntimeProcess) -> str:
    return str(worker.health()["agentSync"]["feed"])


def test_an_idle_worker_makes_at_most_one_function_call_in_30_s(
    tmp_path: Path, deployment: tuple[FakeConvex, LocalBackend]
) -> None:
    fake, _ = deployment
    worker = start_worker(tmp_path, fake)
    try:
        wait_for(lambda: feed(worker) == "subscribed", what="the feed subscribed")
        wait_for(lambda: worker.health()["agentSync"]["lastSyncAt"], what="the first sync")
        start = len(fake.requests)
        # 0.05 calls/s over 30 s; the timed sync (one call a minute) may fall in the window.
        assert stays_false(lambda: len(calls_since(fake, start)) > 1, window_s=30)
        assert feed(worker) == "subscribed"
    finally:
        worker.stop()


def test_a_dropped_feed_falls_back_to_polling_and_polling_stops_when_it_is_back(
    tmp_path: Path, deployment: tuple[FakeConvex, LocalBackend]
) -> None:
    fake, backend = deployment
    worker = start_worker(tmp_path, fake, AGENT_FALLBACK_POLL_MS="1000")
    try:
        wait_for(lambda: feed(worker) == "subscribed", what="the feed subscribed")
        fake.stall_sync = True  # reconnections hang in the handshake from now on
        dropped_s = monotonic_s()
        start = len(fake.requests)
        assert fake.drop_sync() >= 1
        wait_for(lambda: calls_since(fake, start, SIGNALS), timeout_s=2, what="a poll")
        assert monotonic_s() - dropped_s <= 2.0
        wait_for(lambda: feed(worker) == "polling", timeout_s=2, what="/health: polling")
        assert worker.health()["agentSync"]["feedError"]
        # A change made while the feed is down is seen by polling.
        agent = backend.create_agent("while-down", 1000).id
        wait_for(lambda: worker.agent(agent), timeout_s=5, what="the agent, by polling")
        fake.stall_sync = False
        wait_for(lambda: feed(worker) == "subscribed", timeout_s=15, what="subscribed again")
        start = len(fake.requests)
        assert stays_false(lambda: calls_since(fake, start, SIGNALS), window_s=3)
    finally:
        worker.stop()


def test_a_handshake_that_never_completes_leaves_the_worker_responsive(
    tmp_path: Path, deployment: tuple[FakeConvex, LocalBackend]
) -> None:
    fake, backend = deployment
    fake.stall_sync = True  # HTTP answers; the WebSocket is accepted and never answered
    agent = backend.create_agent("steady", 1000).id
    worker = start_worker(tmp_path, fake)
    try:
        wait_for(lambda: worker.agent(agent), timeout_s=10, what="the agent running")
        url = f"http://127.0.0.1:{worker.port}/health"
        latencies_ms: list[float] = []
        beats: set[int] = set()
        with httpx.Client(timeout=5) as client:
            deadline_s = monotonic_s() + 20
            while monotonic_s() < deadline_s:
                asked_s = monotonic_s()
                assert client.get(url).status_code == 200
                latencies_ms.append((monotonic_s() - asked_s) * 1000)
                presence = {p["agentId"]: p for p in backend.list_presence()}
                beats.add(presence[agent]["lastHeartbeatAt"] or 0)
                next_s = asked_s + 0.05
                wait_for(lambda due_s=next_s: monotonic_s() >= due_s, poll_s=0.01)
        assert statistics.quantiles(latencies_ms, n=100)[98] < 100
        assert len(beats - {0}) >= 15  # a beat a second, written on schedule
        assert feed(worker) != "subscribed"
        stopped_s = monotonic_s()
        worker.signal(signal.SIGTERM)
        assert worker.proc.wait(10) == 0
        assert monotonic_s() - stopped_s < 5
    finally:
        worker.stop()
