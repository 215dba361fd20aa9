"""Benchmark: N agents on the embedded backend, in one process.

Prints progress to stderr and one JSON object on its last stdout line:
  agents, heartbeat_interval_ms, start_s (Runtime.start until every AgentActor runs),
  online_s (Runtime.start until every agent has a heartbeat in the backend),
  rss_mb (peak resident memory), lateness_p50_ms / lateness_p99_ms (how late agents
  handled their heartbeat ticks over the window, from the runtime's own histogram,
  interpolated as Prometheus' histogram_quantile does), unchanged_sync_ms (median
  duration of a sync in which nothing changed), heartbeat_writes_per_s (backend write
  calls over the window), shutdown_s.

Usage: python benchmarks/agents.py --agents 10000 [--heartbeat-interval-ms 5000]
"""

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
from pathlib import Path

from actors.agents.sync import STATUS_NAME as SYNC_STATUS
from actors.runtime import Runtime, RuntimeOptions
from agent_runtime import logs, metrics
from agent_runtime.clock import monotonic_s
from agent_runtime.status import StatusBoard
from backend.local import LocalBackend
from messages import HeartbeatStatus, RequestSync, SyncStatus

_idle = threading.Event()


def wait_until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = monotonic_s() + timeout_s
    while not predicate():
        if monotonic_s() > deadline:
            raise SystemExit(f"benchmark: timed out after {timeout_s} s waiting for {what}")
        _idle.wait(0.01)


def histogram_buckets(histogram) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    """(upper bound, cumulative count) pairs of an unlabelled prometheus Histogram."""
    (family,) = histogram.collect()
    return [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]


def quantile(
    q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> float:
    """histogram_quantile over the observations made between two bucket snapshots."""
    buckets = [(le, a - b) for (le, b), (_, a) in zip(before, after, strict=True)]
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower_bound
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return lower_bound


def sample_sum_count(histogram) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    (family,) = histogram.collect()
    values = {s.name: s.value for s in family.samples}
    return values[family.name + "_sum"], values[family.name + "_count"]


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=5000)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--syncs", type=int, default=5)
    args = parser.parse_args()
    logs.configure("WARNING", "text")
    log = logging.getLogger("benchmark")
    log.setLevel(logging.INFO)
    n = args.agents

    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(Path(tmp) / "bench.db")
        for i in range(n):
            backend.create_agent(f"bench-{i}", args.heartbeat_interval_ms)
        print(f"created {n} agents", file=sys.stderr)
        board = StatusBoard()

        def written() -> int:
            status = board.get("heartbeats")
            return len(status.last_written_at) if isinstance(status, HeartbeatStatus) else 0

        def running() -> int:
            status = board.get(SYNC_STATUS)
            return len(status.agents) if isinstance(status, SyncStatus) else 0

        started_s = monotonic_s()
        runtime = Runtime.start(
            options=RuntimeOptions(
                runs_agents=True,
                sync_interval_s=3600.0,
                worker_id="bench",
                worker_heartbeat_s=5.0,
                worker_ttl_ms=15_000,
            ),
            backend=backend,
            status_board=board,
            on_fatal=lambda reason: print(f"fatal: {reason}", file=sys.stderr),
        )
        wait_until(lambda: running() == n, 120, "all agents running")
        start_s = monotonic_s() - started_s
        wait_until(lambda: written() == n, 120, "all agents online")
        online_s = monotonic_s() - started_s
        print(f"started in {start_s:.2f} s, online in {online_s:.2f} s", file=sys.stderr)

        # Let the start-up stagger settle, then measure a steady window.
        settle = threading.Event()
        settle.wait(args.heartbeat_interval_ms / 1000)
        lateness_before = histogram_buckets(metrics.HEARTBEAT_LATENESS)
        writes_before = metrics.HEARTBEAT_WRITES._value.get()
        window_started_s = monotonic_s()
        settle.wait(args.window_s)
        window_s = monotonic_s() - window_started_s
        lateness_after = histogram_buckets(metrics.HEARTBEAT_LATENESS)
        writes = metrics.HEARTBEAT_WRITES._value.get() - writes_before

        sync = runtime.proxy().sync.get()
        durations = []
        for _ in range(args.syncs):
            total_before, count_before = sample_sum_count(metrics.SYNC_DURATION)
            sync.tell(RequestSync(reason="benchmark"))
            wait_until(
                lambda c=count_before: sample_sum_count(metrics.SYNC_DURATION)[1] > c, 30, "a sync"
            )
            durations.append(sample_sum_count(metrics.SYNC_DURATION)[0] - total_before)
        rss_mb = peak_rss_mb()

        stop_started_s = monotonic_s()
        runtime.stop(timeout=60)
        shutdown_s = monotonic_s() - stop_started_s
        backend.close()

    result = {
        "agents": n,
        "heartbeat_interval_ms": args.heartbeat_interval_ms,
        "start_s": round(start_s, 3),
        "online_s": round(online_s, 3),
        "rss_mb": round(rss_mb, 1),
        "lateness_p50_ms": round(quantile(0.5, lateness_before, lateness_after) * 1000, 2),
        "lateness_p99_ms": round(quantile(0.99, lateness_before, lateness_after) * 1000, 2),
        "unchanged_sync_ms": round(statistics.median(durations) * 1000, 2),
        "heartbeat_writes_per_s": round(writes / window_s, 2),
        "shutdown_s": round(shutdown_s, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
