"""The runtime on Convex (a fake deployment on 127.0.0.1): faults, and reactive sync."""

import logging
import statistics
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from actors.agents.sync import STATUS_NAME
from actors.runtime import Runtime, RuntimeOptions
from agent_runtime import metrics
from agent_runtime.clock import monotonic_s
from agent_runtime.status import StatusBoard
from backend.convex import AGENTS_VERSION, ConvexBackend
from backend.convex_watch import ChangeFeed
from messages import HeartbeatStatus, SyncStatus
from tests.conftest import SECRET, wait_for
from tests.fake_convex import FakeConvex
from tests.runtime_process import RuntimeProcess, base_env, cli


def convex_env(tmp_path: Path, deployment: FakeConvex, **extra: str) -> dict[str, str]:
    return base_env(
        tmp_path / "unused.db",
        CONVEX_URL=deployment.url,
        AGENT_SECRET=SECRET,
        CONVEX_READ_TIMEOUT_MS="1000",
        **extra,
    )


def add_agent(env: dict[str, str], name: str, interval_ms: int) -> str:
    result = cli(env, "agents", "add", name, "--heartbeat-interval", str(interval_ms))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def runtime_on(tmp_path: Path) -> Iterator[Any]:
    started: list[RuntimeProcess] = []

    def start(env: dict[str, str]) -> RuntimeProcess:
        process = RuntimeProcess(env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


# --- faults: the runtime stays up, says so in /health, and recovers -------------------


def test_failing_sync_is_reported_in_health_and_recovers(
    tmp_path: Path, convex_deployment: FakeConvex, runtime_on: Any
) -> None:
    env = convex_env(tmp_path, convex_deployment)
    agent_id = add_agent(env, "steady", 500)
    convex_deployment.fail_next("503", count=1000, path="service/agents:snapshot")
    runtime = runtime_on(env)
    health = wait_for(
        lambda: (h := runtime.health())["agentSync"]["lastError"] and h,
        what="sync error in /health",
    )
    assert health["status"] == "degraded"
    assert "server error 503" in health["agentSync"]["lastError"]
    assert SECRET not in runtime.text()
    convex_deployment.clear_faults()
    wait_for(
        lambda: (
            runtime.health()["status"] == "ok"
            and any(a["id"] == agent_id and a["lastHeartbeatAt"] for a in runtime.agents())
        ),
        timeout_s=10,
        what="recovery: sync ok and the agent online",
    )
    assert runtime.proc.poll() is None


def test_failing_heartbeat_writes_are_kept_reported_and_recover(
    tmp_path: Path, convex_deployment: FakeConvex, runtime_on: Any
) -> None:
    env = convex_env(tmp_path, convex_deployment)
    agent_id = add_agent(env, "writer", 300)
    convex_deployment.fail_next("500", count=1000, path="service/presence:recordHeartbeats")
    runtime = runtime_on(env)
    wait_for(lambda: runtime.health()["heartbeats"]["lastError"], timeout_s=10, what="write error")
    assert runtime.health()["status"] == "degraded"
    convex_deployment.clear_faults()

    def online() -> bool:
        listed = cli(env, "agents", "list", "--json").stdout
        return f'"id": "{agent_id}"' in listed and '"status": "online"' in listed

    wait_for(online, timeout_s=10, what="the kept heartbeats written after the fault")
    wait_for(lambda: runtime.health()["status"] == "ok", what="/health ok again")


def test_wrong_service_key_keeps_the_runtime_up_and_never_logs_the_key(
    tmp_path: Path, convex_deployment: FakeConvex, runtime_on: Any
) -> None:
    env = {
        **convex_env(tmp_path, convex_deployment),  # the default mode: subscribe
        "AGENT_SECRET": "wrong-key-123",
    }
    runtime = runtime_on(env)
    health = wait_for(
        lambda: (h := runtime.health())["workers"]["lastError"] and h, what="the refusal"
    )
    assert "refused the service key" in health["workers"]["lastError"]
    assert health["status"] == "degraded"
    assert not health["workers"]["registered"]
    wait_for(lambda: "change subscription failed" in runtime.text(), what="feed failure")
    assert runtime.health()["agentSync"]["feed"] in ("polling", "down")
    assert runtime.proc.poll() is None
    assert "wrong-key-123" not in runtime.text()
    assert "wrong-key-123" not in httpx.get(f"http://127.0.0.1:{runtime.port}/health").text


def test_doctor_reports_each_problem_with_its_fix(
    tmp_path: Path, convex_deployment: FakeConvex
) -> None:
    env = convex_env(tmp_path, convex_deployment)
    good = cli(env, "doctor")
    assert good.returncode == 0, good.stdout
    assert "ok    service key: accepted by the deployment" in good.stdout
    bad_key = cli({**env, "AGENT_SECRET": "nope-456"}, "doctor")
    assert bad_key.returncode == 1
    assert "FAIL  service key" in bad_key.stdout
    assert "nope-456" not in bad_key.stdout + bad_key.stderr
    unreachable = cli({**env, "CONVEX_URL": "http://127.0.0.1:9"}, "doctor")
    assert unreachable.returncode == 1
    assert "FAIL  backend" in unreachable.stdout
    assert "fix: check CONVEX_URL" in unreachable.stdout


# --- reactive sync ---------------------------------------------------------------------


class InProcessRuntime:
    """The actor tree in this process on a Convex adapter, observed through its board."""

    def __init__(self, deployment: FakeConvex, *, subscribe: bool) -> None:
        self.board = StatusBoard()
        self.backend = ConvexBackend(
            deployment.url, SecretStr(SECRET), read_timeout_s=2.0, subscribe=subscribe
        )
        self.runtime = Runtime.start(
            options=RuntimeOptions(
                runs_agents=True,
                sync_interval_s=60.0,
                worker_id="w1",
                worker_heartbeat_s=5.0,
                worker_ttl_ms=15_000,
            ),
            backend=self.backend,
            status_board=self.board,
            on_fatal=lambda reason: None,
        )

    def running(self) -> set[str]:
        status = self.board.get(STATUS_NAME)
        return {a.record.id for a in status.agents} if isinstance(status, SyncStatus) else set()

    def written(self) -> dict[str, int]:
        status = self.board.get("heartbeats")
        return dict(status.last_written_at) if isinstance(status, HeartbeatStatus) else {}

    def stop(self) -> None:
        self.runtime.stop(timeout=5)
        self.backend.close()


def test_subscription_update_triggers_a_sync_within_1_s(convex_deployment: FakeConvex) -> None:
    runtime = InProcessRuntime(convex_deployment, subscribe=True)
    admin = ConvexBackend(convex_deployment.url, SecretStr(SECRET))
    try:
        wait_for(lambda: convex_deployment.sync_connections >= 1, what="the subscription")
        wait_for(lambda: runtime.board.get(STATUS_NAME), what="the start-up sync")
        for name in ("first", "second", "third"):
            created_s = monotonic_s()
            record = admin.create_agent(name, 5000)  # an HTTP mutation: the fake pushes
            wait_for(lambda r=record: r.id in runtime.running(), timeout_s=1.0, what=name)
            assert monotonic_s() - created_s < 1.0
    finally:
        admin.close()
        runtime.stop()


def beats_handled() -> float:
    """Heartbeat ticks handled by agents in this process so far (the lateness histogram)."""
    (family,) = metrics.HEARTBEAT_LATENESS.collect()
    return next(s.value for s in family.samples if s.name.endswith("_count"))


def test_stalled_deployment_does_not_stall_heartbeats_or_other_threads(
    convex_deployment: FakeConvex, caplog: pytest.LogCaptureFixture
) -> None:
    admin = ConvexBackend(convex_deployment.url, SecretStr(SECRET))
    agent = admin.create_agent("beater", 200)
    convex_deployment.stall_sync = True  # WebSocket accepted, never answered
    runtime = InProcessRuntime(convex_deployment, subscribe=True)
    ticks = 0
    stop = threading.Event()

    def ticker() -> None:
        nonlocal ticks
        while not stop.wait(0.001):
            ticks += 1

    thread = threading.Thread(target=ticker)
    try:
        wait_for(lambda: convex_deployment.sync_connections >= 1, what="the stalled connection")
        wait_for(lambda: agent.id in runtime.written(), what="first heartbeat")
        thread.start()
        window_started = monotonic_s()
        ticks_handled = beats_handled()
        written: list[int] = []
        latencies: list[float] = []
        while monotonic_s() - window_started < 2.0:
            call_started = monotonic_s()
            written.append(runtime.written()[agent.id])
            admin.agents_version()  # HTTP calls still go through
            latencies.append(monotonic_s() - call_started)
        stop.set()
        thread.join()
        elapsed = monotonic_s() - window_started
        assert beats_handled() - ticks_handled >= 8  # 200 ms interval: ~10 beats in 2 s
        assert len(set(written)) >= 2  # and they keep reaching the backend (~1 write/s)
        assert ticks / elapsed > 200  # a 1 ms ticker thread kept running
        assert statistics.median(latencies) < 0.05
    finally:
        stop.set()
        admin.close()
        runtime.stop()


def test_watcher_stops_cleanly_during_its_backoff(
    convex_deployment: FakeConvex, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    changes: list[int] = []
    # A refused key fails every subscription at once (UNAUTHORIZED), then the watcher
    # waits out its backoff; stop() lands in that wait.
    watcher = ChangeFeed(
        convex_deployment.url,
        SecretStr("wrong-key-789"),
        [AGENTS_VERSION],
        lambda _query: changes.append(1),
        name="agent",
    )
    watcher.start()
    wait_for(lambda: "agent subscription failed" in caplog.text, what="a failed subscription")
    watcher.stop(timeout_s=2.0)  # must not raise
    assert not watcher._thread.is_alive()
    assert changes == []
    assert "wrong-key-789" not in caplog.text
