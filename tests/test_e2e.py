"""End to end: the worker and the CLI as subprocesses sharing one SQLite file."""

import itertools
import json
import signal
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.clock import monotonic_s
from tests.conftest import stays_false, wait_for
from tests.runtime_process import RuntimeProcess, base_env, cli


@pytest.fixture
def runtime(env: dict[str, str]) -> Iterator[RuntimeProcess]:
    process = RuntimeProcess(env)
    yield process
    process.stop()


def agents_json(env: dict[str, str]) -> list[dict[str, Any]]:
    result = cli(env, "agents", "list", "--json")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, Any]] = json.loads(result.stdout)
    return listed


def add_agent(env: dict[str, str], name: str, interval_ms: int) -> str:
    result = cli(env, "agents", "add", name, "--heartbeat-interval", str(interval_ms))
    assert result.returncode == 0, result.stderr
    agent_id = result.stdout.strip()
    assert result.stdout == f"{agent_id}\n"  # only the id is printed
    assert agent_id
    return agent_id


def test_added_agent_is_online_within_3_s_without_restart(
    env: dict[str, str], runtime: RuntimeProcess
) -> None:
    wait_for(lambda: runtime.health()["agentSync"]["lastSyncAt"], what="the start-up sync")
    agent_id = add_agent(env, "scout", 5000)
    added_s = monotonic_s()  # the agent exists from here (the CLI's own start-up excluded)

    def in_health() -> bool:
        agent = runtime.agent(agent_id)
        return bool(agent and agent["lastHeartbeatAt"])

    # /agents shows what the backend accepted; it is cheap to poll, so the time is exact.
    wait_for(in_health, timeout_s=3.0 + 1.0, what="the agent online in /agents")
    assert monotonic_s() - added_s <= 3.0
    listed = [a for a in agents_json(env) if a["id"] == agent_id]
    assert listed[0]["status"] == "online"
    assert listed[0]["lastHeartbeatAt"]
    health = runtime.health()
    assert health["status"] == "ok"
    assert health["agentSync"]["addedCount"] == 1
    assert health["agents"] == {"running": 1, "online": 1, "restarting": 0}
    (agent,) = runtime.agents()
    assert agent == {
        "id": agent_id,
        "name": "scout",
        "sessionKey": f"agent:{agent_id}",
        "heartbeatIntervalMs": 5000,
        "lastHeartbeatAt": agent["lastHeartbeatAt"],
        "status": "online",
        "restarts": 0,
    }


def test_interval_change_changes_the_heartbeat_spacing(
    env: dict[str, str], runtime: RuntimeProcess
) -> None:
    agent_id = add_agent(env, "pacer", 1000)
    wait_for(lambda: len(runtime.beat_times_s(agent_id)) >= 3, timeout_s=8, what="3 beats")
    assert cli(env, "agents", "update", agent_id, "--heartbeat-interval", "300").returncode == 0
    wait_for(lambda: "heartbeat rescheduled" in runtime.text(), what="the reschedule")
    before = len(runtime.beat_times_s(agent_id))
    wait_for(lambda: len(runtime.beat_times_s(agent_id)) >= before + 6, what="6 new beats")
    times = runtime.beat_times_s(agent_id)
    old_gaps = [b - a for a, b in itertools.pairwise(times[:before])]
    new_gaps = [b - a for a, b in itertools.pairwise(times[before:])]
    assert statistics.median(old_gaps) == pytest.approx(1.0, abs=0.1)
    assert statistics.median(new_gaps) == pytest.approx(0.3, abs=0.06)


def test_removed_agent_leaves_health_and_stops_beating(
    env: dict[str, str], runtime: RuntimeProcess
) -> None:
    agent_id = add_agent(env, "brief", 300)
    wait_for(lambda: runtime.beat_times_s(agent_id), what="a first beat")
    assert cli(env, "agents", "remove", agent_id).returncode == 0
    wait_for(lambda: runtime.agent(agent_id) is None, what="gone from /agents")
    wait_for(lambda: "agent stopped" in runtime.text(), what="the actor stopped")
    count = len(runtime.beat_times_s(agent_id))
    assert stays_false(lambda: len(runtime.beat_times_s(agent_id)) > count, 1.0)
    assert agents_json(env) == []
    assert runtime.health()["agentSync"]["removedCount"] == 1


def test_sigterm_exits_0_within_5_s_and_marks_agents_offline(
    env: dict[str, str], runtime: RuntimeProcess
) -> None:
    agent_id = add_agent(env, "sleeper", 1000)
    wait_for(lambda: agents_json(env)[0]["status"] == "online", timeout_s=5, what="online")
    started = monotonic_s()
    runtime.signal(signal.SIGTERM)
    assert runtime.proc.wait(timeout=5) == 0
    assert monotonic_s() - started < 5
    (agent,) = agents_json(env)
    assert agent["id"] == agent_id
    assert agent["status"] == "offline"
    assert agent["lastHeartbeatAt"] is not None


def test_sigint_also_shuts_down_cleanly(runtime: RuntimeProcess) -> None:
    runtime.signal(signal.SIGINT)
    assert runtime.proc.wait(timeout=5) == 0


def test_sigusr1_logs_every_thread_traceback(env: dict[str, str], runtime: RuntimeProcess) -> None:
    agent_id = add_agent(env, "dumped", 1000)
    wait_for(lambda: runtime.agent(agent_id), what="agent running")
    runtime.signal(signal.SIGUSR1)
    wait_for(
        lambda: "Scheduler" in runtime.text() and "Current state of" in runtime.text(),
        what="the thread dump",
    )
    dump = runtime.text()
    for thread in (
        "Scheduler",
        "SyncActor",
        "HeartbeatWriter",
        "HTTP",
        f"agent-dumped-{agent_id[:8]}",
    ):
        assert thread in dump
    assert runtime.proc.poll() is None  # still running


def test_metrics_are_served_in_prometheus_format(
    env: dict[str, str], runtime: RuntimeProcess
) -> None:
    agent_id = add_agent(env, "counted", 300)
    wait_for(lambda: (runtime.agent(agent_id) or {}).get("lastHeartbeatAt"), what="a beat")
    response = runtime.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert "agent_runtime_agents_running 1.0" in body
    assert "agent_runtime_heartbeats_written_total" in body
    assert "agent_runtime_sync_duration_seconds_count" in body
    assert "agent_runtime_restarts_total" in body or "agent_runtime_restarts" in body


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("AGENT_SYNC_INTERVAL", "abc", "AGENT_SYNC_INTERVAL='abc' is invalid: expected whole"),
        ("AGENT_SYNC_INTERVAL", "999", "AGENT_SYNC_INTERVAL='999' is invalid"),
        ("PORT", "http", "PORT='http' is invalid: expected a TCP port"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is invalid: expected text or json"),
        ("AGENT_ROLE", "chef", "AGENT_ROLE='chef' is invalid"),
    ],
)
def test_bad_setting_exits_2_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    result = cli(base_env(tmp_path / "local.db", **{variable: value}), "run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert expected in lines[0]


def test_production_refuses_role_all(tmp_path: Path) -> None:
    result = cli(base_env(tmp_path / "local.db", APP_ENV="production", AGENT_ROLE="all"), "run")
    assert result.returncode == 2
    assert "AGENT_ROLE='all' is refused when APP_ENV='production'" in result.stderr


def test_convex_without_agent_secret_refuses_to_start(tmp_path: Path) -> None:
    result = cli(base_env(tmp_path / "x.db", CONVEX_URL="http://127.0.0.1:9"), "run")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "AGENT_SECRET is required when CONVEX_URL is set" in line
