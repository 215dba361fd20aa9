"""Benchmark: what the Convex adapter costs, against a fake deployment on 127.0.0.1.

Prints one JSON object on its last stdout line:
  local_call_ms / http_call_ms: median and p99 of `agents_version()` on the embedded
    backend directly, and through the Convex adapter (httpx -> the fake deployment ->
    the same embedded logic); added_ms is the difference of the medians: the HTTP
    adapter's own cost per call on loopback, not a real network's;
  create_to_sync_ms / create_to_first_heartbeat_ms, for AGENT_SYNC_MODE subscribe and
    poll: from `create_agent` returning until the runtime runs the agent, and until the
    backend has its first heartbeat (this includes the 0-2 s first-beat jitter).

Usage (from the repository root, which holds the test fixture it uses):
  PYTHONPATH=. python benchmarks/convex_backend.py [--calls 500] [--trials 8]
"""

import argparse
import json
import statistics
import sys
import tempfile
import threading
from pathlib import Path

from pydantic import SecretStr

from actors.agents.sync import STATUS_NAME
from actors.runtime import Runtime, RuntimeOptions
from agent_runtime import logs
from agent_runtime.clock import monotonic_s
from agent_runtime.status import StatusBoard
from backend.convex import ConvexBackend
from backend.local import LocalBackend
from messages import HeartbeatStatus, SyncStatus
from tests.convex_service import LocalService
from tests.fake_convex import FakeConvex

SECRET = "benchmark-secret"
_idle = threading.Event()


def timed_calls(call, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        started = monotonic_s()
        call()
        times.append((monotonic_s() - started) * 1000)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median": round(statistics.median(ordered), 3),
        "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
    }


def wait_until(predicate, timeout_s: float = 30.0) -> float:  # type: ignore[no-untyped-def]
    deadline = monotonic_s() + timeout_s
    while not predicate():
        if monotonic_s() > deadline:
            raise SystemExit("benchmark: timed out")
        _idle.wait(0.002)
    return monotonic_s()


def creation_latency(fake: FakeConvex, *, subscribe: bool, trials: int) -> dict[str, object]:
    board = StatusBoard()
    backend = ConvexBackend(fake.url, SecretStr(SECRET), subscribe=subscribe)
    admin = ConvexBackend(fake.url, SecretStr(SECRET))
    runtime = Runtime.start(
        options=RuntimeOptions(
            runs_agents=True,
            sync_interval_s=60.0,
            worker_id="bench",
            worker_heartbeat_s=5.0,
            worker_ttl_ms=15_000,
        ),
        backend=backend,
        status_board=board,
        on_fatal=lambda reason: None,
    )

    def running(agent_id: str) -> bool:
        status = board.get(STATUS_NAME)
        return isinstance(status, SyncStatus) and any(
            a.record.id == agent_id for a in status.agents
        )

    def written(agent_id: str) -> bool:
        status = board.get("heartbeats")
        return isinstance(status, HeartbeatStatus) and agent_id in status.last_written_at

    wait_until(lambda: board.get(STATUS_NAME) is not None)
    if subscribe:
        wait_until(lambda: fake.sync_connections >= 1)
    to_sync, to_beat = [], []
    for i in range(trials):
        _idle.wait(0.3)  # spread the trials over the change-poll phase
        record = admin.create_agent(f"bench-{subscribe}-{i}", 1000)
        created = monotonic_s()
        to_sync.append((wait_until(lambda r=record: running(r.id)) - created) * 1000)
        to_beat.append((wait_until(lambda r=record: written(r.id)) - created) * 1000)
    runtime.stop(timeout=10)
    backend.close()
    admin.close()
    return {"sync_ms": summary(to_sync), "first_heartbeat_ms": summary(to_beat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    logs.configure("WARNING", "text")
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalBackend(Path(tmp) / "bench.db")
        with FakeConvex(LocalService(local, SECRET).call) as fake:
            convex = ConvexBackend(fake.url, SecretStr(SECRET))
            convex.agents_version()  # warm the connection pool
            local_ms = timed_calls(local.agents_version, args.calls)
            http_ms = timed_calls(convex.agents_version, args.calls)
            convex.close()
            print("calls measured", file=sys.stderr)
            subscribe = creation_latency(fake, subscribe=True, trials=args.trials)
            poll = creation_latency(fake, subscribe=False, trials=args.trials)
        local.close()
    result = {
        "calls": args.calls,
        "local_call_ms": summary(local_ms),
        "http_call_ms": summary(http_ms),
        "added_ms": round(statistics.median(http_ms) - statistics.median(local_ms), 3),
        "trials": args.trials,
        "subscribe": subscribe,
        "poll": poll,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
