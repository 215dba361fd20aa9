"""Benchmark: core workers as a fleet, real subprocesses on one SQLite file.

Starts `agent-runtime run` (AGENT_ROLE=core) three times on a fresh database of N agents
(default 3,000 at a 5 s heartbeat interval), then kills and stops workers and measures
from outside, reading each worker's GET /agents and the backend's presence:
  fleet_start_s: from starting the workers until the agents are sharded over the three
    (the union of their /agents is every agent, pairwise disjoint) and all online;
  rebalance_after_kill_running_s / rebalance_after_kill_s: after SIGKILL of one worker,
    until the two survivors run every agent, and until in addition every agent has a
    backend heartbeat later than the kill (expected within WORKER_TTL_MS + 2 s);
    offline_seen_on_kill counts agents seen offline meanwhile, offline_on_kill_longest_s
    the longest any stayed so, at the poll's resolution (informative);
  rebalance_after_term_s: after SIGTERM of a second worker, until every agent it ran
    has a heartbeat after the signal in the backend, written by the survivor (its
    /agents lists the agent with that heartbeat); offline_flaps_on_term: distinct agents
    seen offline in the backend (polled every 0.1 s) from the signal until 5 s after
    the moved agents beat again (must be 0); term_exit_code / term_exit_s: the stopped
    worker's exit status, and when it came;
  presence_expiry_s: after SIGKILL of the last worker, until every agent is offline;
  health_p50_ms / health_p99_ms / health_max_ms: a separate phase, one worker on a fresh
    database of 10,000 agents: sequential GET /health over one keep-alive connection once
    all run (health_max_at_s: when the slowest came, from the window's start);
    health_bytes (the body's size) and agents_endpoint_ms (one GET /agents).
The parameters and a `targets` object of booleans are included. Progress goes to stderr,
one JSON object to stdout (with "error" and exit status 1 if a wait timed out).

Usage (from the repository root; about 1-2 minutes, and it needs both cores):
  .venv/bin/python benchmarks/fleet.py [--agents 3000] [--health-agents 10000]
      [--skip-health] [--worker-heartbeat-ms 5000] [--worker-ttl-ms 15000]
      [--log-dir DIR]   (keeps the workers' JSON logs, otherwise deleted with the database)
"""

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any, TypeVar

import httpx
import workers
from workers import BenchmarkError, Worker, seconds

from agent_runtime.app.config import DEFAULT_WORKER_HEARTBEAT_MS, DEFAULT_WORKER_TTL_MS
from agent_runtime.clock import monotonic_s, now_ms
from backend.local import LocalBackend

T = TypeVar("T")

POLL_S = 0.1
"""How often the conditions are read: 3 workers' /agents and the backend's presence; a
tighter loop would take the CPU the workers need (2 cores)."""

AFTER_TERM_WATCH_S = 5.0
"""How long offline flaps are still counted after the moved agents beat again."""


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    """`workers.wait_until`, reading every POLL_S."""
    return workers.wait_until(predicate, timeout_s, what, POLL_S)


def log(message: str) -> None:
    print(f"fleet: {message}", file=sys.stderr, flush=True)


def worker_env(db_path: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_", "LOG_", "APP_", "WORKER_", "CONVEX_"))
    }
    env.update(
        LOCAL_DB_PATH=str(db_path),
        PORT="0",
        HOST="127.0.0.1",
        LOG_LEVEL="INFO",  # the HTTP port is logged at INFO
        LOG_FORMAT="json",
        AGENT_ROLE="core",
        WORKER_HEARTBEAT_MS=str(args.worker_heartbeat_ms),
        WORKER_TTL_MS=str(args.worker_ttl_ms),
    )
    return env


def create_agents(backend: LocalBackend, n: int, interval_ms: int) -> set[str]:
    started_s = monotonic_s()
    every = {backend.create_agent(f"fleet-{i}", interval_ms).id for i in range(n)}
    log(f"created {n} agents in {monotonic_s() - started_s:.1f} s")
    return every


def presence(backend: LocalBackend) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in backend.list_agents_with_presence()}


def not_online(rows: dict[str, dict[str, Any]]) -> set[str]:
    return {a for a, p in rows.items() if p["status"] != "online"}


def sharded(workers: list[Worker], every: set[str]) -> bool:
    """The workers' /agents are pairwise disjoint and together every agent."""
    running = [w.ids() for w in workers]
    disjoint = all(not (a & b) for a, b in combinations(running, 2))
    return disjoint and set().union(*running) == every


def start_fleet(
    env: dict[str, str], folder: Path, backend: LocalBackend, every: set[str]
) -> tuple[list[Worker], dict[str, Any]]:
    started_s = monotonic_s()
    workers: list[Worker] = []
    try:
        for name in ("w1", "w2", "w3"):
            workers.append(Worker(name, env, folder))
        wait_until(
            lambda: sharded(workers, every) and not not_online(presence(backend)),
            120,
            "3 workers to share the agents, all online",
        )
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    shares = {w.name: len(w.ids()) for w in workers}
    log(f"sharded over 3 workers, all online, in {monotonic_s() - started_s:.1f} s: {shares}")
    return workers, {"fleet_start_s": seconds(monotonic_s() - started_s), "shares": shares}


def kill_phase(
    victim: Worker, survivors: list[Worker], backend: LocalBackend, every: set[str], ttl_ms: int
) -> dict[str, Any]:
    """SIGKILL `victim`: until the survivors run every agent, and every agent beats again."""
    offline: dict[str, list[float]] = {}  # agent id: first and last time seen offline
    running_after: list[float] = []
    killed_ms = now_ms()
    victim.proc.kill()
    killed_s = monotonic_s()

    def rebalanced() -> bool:
        union = set().union(*(w.ids() for w in survivors))
        if union == every and not running_after:
            running_after.append(monotonic_s() - killed_s)
        rows = presence(backend)
        seen_s = monotonic_s() - killed_s
        for agent_id in not_online(rows):
            offline.setdefault(agent_id, [seen_s, seen_s])[1] = seen_s
        beating = all((p["lastHeartbeatAt"] or 0) > killed_ms for p in rows.values())
        return union == every and beating

    wait_until(rebalanced, ttl_ms / 1000 + 60, "the survivors to run and beat every agent")
    took_s = monotonic_s() - killed_s
    victim.proc.wait(10)
    log(f"kill: running after {running_after[0]:.2f} s, all beating after {took_s:.2f} s")
    return {
        "rebalance_after_kill_running_s": seconds(running_after[0]),
        "rebalance_after_kill_s": seconds(took_s),
        "offline_seen_on_kill": len(offline),
        "offline_on_kill_longest_s": seconds(max((b - a for a, b in offline.values()), default=0)),
    }


def term_phase(stopped: Worker, survivor: Worker, backend: LocalBackend) -> dict[str, Any]:
    """SIGTERM `stopped`: until its agents beat from `survivor`, counting offline flaps."""
    moved = stopped.ids()
    offline: set[str] = set()
    exited_after: list[float] = []
    moved_after: list[float] = []
    term_ms = now_ms()
    stopped.proc.send_signal(signal.SIGTERM)
    term_s = monotonic_s()

    def settled() -> bool:
        elapsed_s = monotonic_s() - term_s
        rows = presence(backend)
        offline.update(not_online(rows))
        if not exited_after and stopped.proc.poll() is not None:
            exited_after.append(elapsed_s)
        if not moved_after and all((rows[a]["lastHeartbeatAt"] or 0) >= term_ms for a in moved):
            listed = {a["id"]: a for a in survivor.agents()}
            if all((listed.get(a, {}).get("lastHeartbeatAt") or 0) >= term_ms for a in moved):
                moved_after.append(elapsed_s)
        return bool(moved_after) and elapsed_s >= moved_after[0] + AFTER_TERM_WATCH_S

    wait_until(settled, 60, "the stopped worker's agents to beat from the survivor")
    try:
        exit_code = stopped.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{stopped.name} did not exit within 10 s of the watch") from None
    if not exited_after:
        exited_after.append(monotonic_s() - term_s)
    log(
        f"term: {len(moved)} moved agents beating from {survivor.name} after"
        f" {moved_after[0]:.2f} s; {len(offline)} seen offline; exit {exit_code}"
        f" after {exited_after[0]:.2f} s"
    )
    return {
        "moved_on_term": len(moved),
        "rebalance_after_term_s": seconds(moved_after[0]),
        "offline_flaps_on_term": len(offline),
        "offline_flaps_on_term_moved": len(offline & moved),
        "term_exit_code": exit_code,
        "term_exit_s": seconds(exited_after[0]),
    }


def expiry_phase(last: Worker, backend: LocalBackend, interval_ms: int) -> dict[str, Any]:
    """SIGKILL the last worker: until every agent is offline in the backend."""
    first_offline: list[float] = []
    last.proc.kill()
    killed_s = monotonic_s()

    def expired() -> bool:
        rows = presence(backend)
        offline = not_online(rows)
        if offline and not first_offline:
            first_offline.append(monotonic_s() - killed_s)
        return len(offline) == len(rows)

    wait_until(expired, 3 * interval_ms / 1000 + 30, "every agent to show offline")
    took_s = monotonic_s() - killed_s
    last.proc.wait(10)
    log(f"expiry: first offline after {first_offline[0]:.2f} s, all after {took_s:.2f} s")
    return {
        "presence_first_offline_s": seconds(first_offline[0]),
        "presence_expiry_s": seconds(took_s),
    }


def keep_logs(workers: list[Worker], log_dir: Path | None) -> None:
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        for worker in workers:
            shutil.copy(worker.log_path, log_dir / worker.log_path.name)


def fleet_phases(args: argparse.Namespace, result: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        folder = Path(tmp)
        backend = LocalBackend(folder / "fleet.db")
        workers: list[Worker] = []
        try:
            every = create_agents(backend, args.agents, args.interval_ms)
            env = worker_env(backend.path, args)
            workers, started = start_fleet(env, folder, backend, every)
            result.update(started)
            w1, w2, w3 = workers
            result.update(kill_phase(w1, [w2, w3], backend, every, args.worker_ttl_ms))
            result.update(term_phase(w2, w3, backend))
            if not sharded([w3], every):
                raise BenchmarkError("after the SIGTERM, the last worker does not run every agent")
            result.update(expiry_phase(w3, backend, args.interval_ms))
        finally:
            for worker in workers:
                worker.stop()
            keep_logs(workers, args.log_dir)
            backend.close()


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def health_phase(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """One worker, a fresh database of `--health-agents`: /health under load."""
    n = args.health_agents
    with tempfile.TemporaryDirectory(prefix="fleet-bench-health-") as tmp:
        folder = Path(tmp)
        backend = LocalBackend(folder / "health.db")
        worker: Worker | None = None
        try:
            create_agents(backend, n, args.interval_ms)
            started_s = monotonic_s()
            worker = Worker("h1", worker_env(backend.path, args), folder)
            ready = worker
            wait_until(lambda: ready.health()["agents"]["running"] == n, 180, f"{n} agents running")
            log(f"{n} agents running on one worker after {monotonic_s() - started_s:.1f} s")
            result.update(time_health(worker, n, args.health_requests))
            worker.proc.send_signal(signal.SIGTERM)
            worker.proc.wait(30)
        finally:
            if worker is not None:
                worker.stop()
                keep_logs([worker], args.log_dir)
            backend.close()


def time_health(worker: Worker, n: int, requests: int) -> dict[str, Any]:
    online_before = worker.health()["agents"]["online"]  # also the warm-up request
    times: list[float] = []
    body = b""
    window_started_s = monotonic_s()
    for _ in range(requests):
        started_s = monotonic_s()
        response = worker.client.get("/health")
        times.append((monotonic_s() - started_s) * 1000)
        response.raise_for_status()
        body = response.content
    online_after = json.loads(body)["agents"]["online"]
    started_s = monotonic_s()
    response = worker.client.get("/agents")
    agents_ms = (monotonic_s() - started_s) * 1000
    response.raise_for_status()
    if len(response.json()) != n:
        raise BenchmarkError(f"GET /agents listed {len(response.json())} agents, not {n}")
    ordered = sorted(times)
    log(f"/health p50 {statistics.median(ordered):.2f} ms, p99 {percentile(ordered, 0.99):.2f} ms")
    return {
        "health_requests": requests,
        "health_online_before": online_before,
        "health_online_after": online_after,
        "health_p50_ms": round(statistics.median(ordered), 2),
        "health_p99_ms": round(percentile(ordered, 0.99), 2),
        "health_max_ms": round(ordered[-1], 2),
        "health_max_at_s": seconds(sum(times[: times.index(ordered[-1]) + 1]) / 1000),
        "health_window_s": seconds(monotonic_s() - window_started_s),
        "health_bytes": len(body),
        "agents_endpoint_ms": round(agents_ms, 1),
        "agents_endpoint_bytes": len(response.content),
    }


def targets(result: dict[str, Any], args: argparse.Namespace) -> dict[str, bool | None]:
    def check(key: str, ok: Callable[[Any], bool]) -> bool | None:
        return ok(result[key]) if key in result else None

    ttl_s = args.worker_ttl_ms / 1000
    return {
        "rebalance_after_kill_s": check("rebalance_after_kill_s", lambda v: v <= ttl_s + 2),
        "rebalance_after_term_s": check("rebalance_after_term_s", lambda v: v <= 2),
        "offline_flaps_on_term": check("offline_flaps_on_term", lambda v: v == 0),
        "presence_expiry_s": check(
            "presence_expiry_s", lambda v: v <= 3 * args.interval_ms / 1000 + 5
        ),
        "health_p99_ms": check("health_p99_ms", lambda v: v <= 50),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=3000)
    parser.add_argument("--interval-ms", type=int, default=5000, help="agents' heartbeat")
    parser.add_argument("--health-agents", type=int, default=10000)
    parser.add_argument("--health-requests", type=int, default=1000)
    parser.add_argument("--skip-health", action="store_true")
    parser.add_argument("--log-dir", type=Path, help="keep the workers' logs here")
    parser.add_argument("--worker-heartbeat-ms", type=int, default=DEFAULT_WORKER_HEARTBEAT_MS)
    parser.add_argument("--worker-ttl-ms", type=int, default=DEFAULT_WORKER_TTL_MS)
    args = parser.parse_args()

    result: dict[str, Any] = {
        "agents": args.agents,
        "workers": 3,
        "interval_ms": args.interval_ms,
        "worker_heartbeat_ms": args.worker_heartbeat_ms,
        "worker_ttl_ms": args.worker_ttl_ms,
        "health_agents": None if args.skip_health else args.health_agents,
    }
    status = 0
    try:
        fleet_phases(args, result)
        if not args.skip_health:
            health_phase(args, result)
    except (BenchmarkError, httpx.HTTPError, OSError) as error:
        result["error"] = f"{type(error).__name__}: {error}"
        log(result["error"])
        status = 1
    result["targets"] = targets(result, args)
    print(json.dumps(result))
    sys.exit(status)


if __name__ == "__main__":
    main()
