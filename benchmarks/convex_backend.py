"""Benchmark: what the Convex adapter costs, against a fake deployment on 127.0.0.1.

Prints one JSON object on its last stdout line:
  local_call_ms / http_call_ms: median and p99 of `agents_version()` on the embedded
    backend directly, and through the Convex adapter (httpx -> the fake deployment ->
    the same embedded logic); added_ms is the difference of the medians: the HTTP
    adapter's own cost per call on loopback, not a real network's;
  create_to_sync_ms / create_to_first_heartbeat_ms, for AGENT_SYNC_MODE subscribe and
    poll: from `create_agent` returning until the runtime runs the agent, and until the
    backend has its first heartbeat (this includes the 0-2 s first-beat jitter).

The change feed, for each AGENT_SYNC_MODE (--modes, default subscribe and poll): a real
`agent-runtime run` worker (AGENT_ROLE=core, every interval at its default) against a
fresh fake deployment per mode and run. Each figure is the median of --runs (`<key>`)
and its per-run values (`<key>_runs`):
  idle_calls_per_s_<mode>: function calls per second at the fake while nothing changes,
    heartbeat writes (service/workers:heartbeat, service/presence:recordHeartbeats)
    aside, over --window-s (default 60 s: the timed sync, AGENT_SYNC_INTERVAL = 60 s,
    falls in the window once), for a worker with no agents; `_with_agents`: the same
    with --agents agents (default 100, beating every --heartbeat-interval-ms) running;
  heartbeat_calls_per_s_<mode> (and `_with_agents`): those heartbeat writes, in the
    same windows;
  change_to_sync_p50_ms_<mode> / change_to_sync_p99_ms_<mode>: over --changes agents
    (default 30) created one at a time, 0.75-1.25 s apart, through the fake's HTTP API:
    from sending the create mutation until the worker's log line "agent sync: 1 added"
    (its timestamp, to the millisecond), the agent then confirmed by GET /agents/{id}.
    The fake pushes the change to subscribers before it answers the mutation, so this
    includes the create's own round trip (create_call_ms). p99 is the nearest rank: of
    30 changes, the largest.
  feed_runs: per run and mode, each idle window's calls by function path (`calls`), and
    the fake's runs of the subscribed queries (`fake_query_reruns`): the fake re-runs
    them after every successful mutation, heartbeats included, where a real deployment
    re-runs a query only when a document it read changed.
With the defaults one run takes about 6 minutes (per mode: two windows and the changes).

Usage (from the repository root, which holds the test fixture it uses):
  PYTHONPATH=. python benchmarks/convex_backend.py [--calls 500] [--trials 8] [--runs 3]
      [--modes subscribe,poll] [--window-s 60] [--agents 100] [--changes 30]
      [--skip-adapter] [--skip-idle] [--skip-latency] [--log-dir DIR]
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import workers
from pydantic import SecretStr
from workers import BenchmarkError, Worker

from actors.agents.sync import STATUS_NAME
from actors.runtime import Runtime, RuntimeOptions
from agent_runtime import logs
from agent_runtime.clock import monotonic_s
from agent_runtime.status import StatusBoard
from backend.convex import ConvexBackend
from backend.local import LocalBackend
from messages import HeartbeatStatus, SyncStatus
from tests.convex_service import LocalService
from tests.fake_convex import Call, FakeConvex

SECRET = "benchmark-secret"
FEED_MODES = ("subscribe", "poll")
HEARTBEAT_WRITES = frozenset({"service/workers:heartbeat", "service/presence:recordHeartbeats"})
"""The worker's registration and the agents' presence: counted apart from idle calls."""
SYNC_ADDED = re.compile(r"^agent sync: (\d+) added")
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
SETTINGS_PREFIXES = (
    "AGENT_",
    "APP_",
    "CONVEX_",
    "JOB_",
    "LOG_",
    "MODEL",
    "OPENAI_",
    "WHATSAPP_",
    "WORKER_",
)
"""The worker gets none of this process's settings, only its own."""
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


def adapter_figures(args: argparse.Namespace) -> dict[str, Any]:
    """The adapter's cost per call, and the in-process creation latencies."""
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
    return {
        "calls": args.calls,
        "local_call_ms": summary(local_ms),
        "http_call_ms": summary(http_ms),
        "added_ms": round(statistics.median(http_ms) - statistics.median(local_ms), 3),
        "trials": args.trials,
        "subscribe": subscribe,
        "poll": poll,
    }


# --- the change feed, in a real worker ---------------------------------------------------


def log(message: str) -> None:
    print(f"convex_backend: {message}", file=sys.stderr, flush=True)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class CountingService:
    """The deployment's functions behind the fake, counting every run by path: the HTTP
    calls (which the fake also records) and the fake's runs of subscribed queries."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._lock = threading.Lock()
        self._runs: Counter[str] = Counter()

    def call(self, kind: str, path: str, args: dict[str, Any]) -> Any:
        with self._lock:
            self._runs[path] += 1
        return self._call(kind, path, args)

    def runs(self) -> Counter[str]:
        with self._lock:
            return Counter(self._runs)


def feed_env(mode: str, url: str, folder: Path) -> dict[str, str]:
    """A core worker on the fake deployment in `mode`, every interval at its default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(
        CONVEX_URL=url,
        AGENT_SECRET=SECRET,
        AGENT_ROLE="core",
        AGENT_SYNC_MODE=mode,
        LOCAL_DB_PATH=str(folder / "unused.db"),
        PORT="0",
        HOST="127.0.0.1",
        LOG_LEVEL="INFO",  # the HTTP port and each applied sync are logged at INFO
        LOG_FORMAT="json",
        MODEL_PROVIDER="echo",  # no job runs; nothing reaches a model
    )
    return env


def ready(worker: Worker, mode: str) -> bool:
    """Registered, synced once, and in subscribe mode subscribed."""
    health = worker.health()
    sync = health["agentSync"]
    subscribed = mode != "subscribe" or sync.get("feed") == "subscribed"
    return bool(health["workers"]["registered"] and sync.get("lastSyncAt") and subscribed)


def wait_ready(worker: Worker, mode: str, fake: FakeConvex) -> None:
    """Wait until `ready`; if it never is, say what the worker and the fake show."""
    try:
        workers.wait_until(lambda: ready(worker, mode), 60, f"{worker.name} ready", 0.05)
    except BenchmarkError as error:
        health = worker.health()
        worker.proc.send_signal(signal.SIGUSR1)  # the worker logs every thread's traceback
        _idle.wait(1.0)
        calls = dict(Counter(r.path for r in fake.requests))
        raise BenchmarkError(
            f"{error}: /health agentSync={health['agentSync']} workers={health['workers']};"
            f" calls at the fake {calls}, sync connections {fake.sync_connections};"
            " the worker logged its threads' tracebacks"
        ) from None


def all_online(worker: Worker, count: int) -> bool:
    agents = worker.health()["agents"]
    return bool(agents["running"] == count and agents["online"] == count)


def idle_window(fake: FakeConvex, service: CountingService, window_s: float) -> dict[str, Any]:
    """Every function call the fake gets while the worker is left alone for `window_s`."""
    first, runs_before, started_s = len(fake.requests), service.runs(), monotonic_s()
    _idle.wait(window_s)
    requests, runs_after = fake.requests[first:], service.runs()
    elapsed_s = monotonic_s() - started_s
    calls = Counter(r.path for r in requests)
    reruns = (runs_after - runs_before) - calls  # what no HTTP call accounts for
    idle = sum(n for path, n in calls.items() if path not in HEARTBEAT_WRITES)
    beats = sum(n for path, n in calls.items() if path in HEARTBEAT_WRITES)
    return {
        "window_s": round(elapsed_s, 2),
        "calls_per_s": round(idle / elapsed_s, 4),
        "heartbeat_calls_per_s": round(beats / elapsed_s, 4),
        "calls": dict(sorted(calls.items())),
        "fake_query_reruns": dict(sorted(reruns.items())),
    }


def added_at(log_path: Path, offset: int) -> float | None:
    """The epoch time of the first "agent sync: N added" line (N >= 1) after `offset`."""
    with log_path.open("rb") as log_file:
        log_file.seek(offset)
        complete = log_file.read().decode(errors="replace").split("\n")[:-1]
    for line in complete:
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        match = SYNC_ADDED.match(str(record.get("message", "")))
        if match and int(match.group(1)) >= 1:
            return datetime.strptime(record["time"], LOG_TIME_FORMAT).timestamp()
    return None


def change_latencies(
    worker: Worker, admin: ConvexBackend, count: int, interval_ms: int
) -> dict[str, Any]:
    """Create `count` agents one at a time; time each until the worker runs it."""
    assert worker.client is not None
    client = worker.client
    to_sync_ms: list[float] = []
    create_ms: list[float] = []
    for i in range(count):
        _idle.wait(random.uniform(0.75, 1.25))  # not in step with a 0.25 s poll
        offset = worker.log_path.stat().st_size
        sent = time.time()  # epoch seconds, as the log's timestamps are
        record = admin.create_agent(f"change-{i}", interval_ms)
        create_ms.append((time.time() - sent) * 1000)
        workers.wait_until(
            lambda r=record: client.get(f"/agents/{r.id}").status_code == 200,
            10,
            f"agent {record.id} running",
            0.01,
        )
        synced = workers.wait_until(
            lambda o=offset: added_at(worker.log_path, o), 5, "the sync's log line", 0.01
        )
        to_sync_ms.append((synced - sent) * 1000)
    ordered = sorted(to_sync_ms)
    return {
        "changes": count,
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(percentile(ordered, 0.99), 1),
        "values_ms": [round(v, 1) for v in to_sync_ms],
        "create_call_ms": round(statistics.median(create_ms), 1),
    }


def stop_worker(worker: Worker) -> None:
    """SIGTERM (the feed process goes with it), then make sure it is reaped."""
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(15)
        except subprocess.TimeoutExpired:
            log(f"{worker.name} did not exit within 15 s of SIGTERM; killing it")
    worker.stop()


def feed_mode_run(mode: str, args: argparse.Namespace, folder: Path, name: str) -> dict[str, Any]:
    """One worker in `mode` on a fresh deployment: idle, changes, idle with agents."""
    backend = LocalBackend(folder / f"{name}.db")
    service = CountingService(LocalService(backend, SECRET).call)
    measured: dict[str, Any] = {}
    try:
        with FakeConvex(service.call) as fake:
            admin = ConvexBackend(fake.url, SecretStr(SECRET))
            worker = Worker(name, feed_env(mode, fake.url, folder), folder)
            try:
                wait_ready(worker, mode, fake)
                if not args.skip_idle:
                    log(f"{name}: idle window, no agents ({args.window_s:g} s)")
                    measured["idle"] = idle_window(fake, service, args.window_s)
                created = 0
                if not args.skip_latency:
                    log(f"{name}: {args.changes} changes")
                    measured["change_to_sync"] = change_latencies(
                        worker, admin, args.changes, args.heartbeat_interval_ms
                    )
                    created = args.changes
                for i in range(created, args.agents):
                    admin.create_agent(f"agent-{i}", args.heartbeat_interval_ms)
                if not args.skip_idle:
                    total = max(created, args.agents)
                    workers.wait_until(
                        lambda: all_online(worker, total), 60, f"{total} agents online", 0.1
                    )
                    _idle.wait(args.heartbeat_interval_ms / 1000)  # beats in their rhythm
                    log(f"{name}: idle window, {total} agents ({args.window_s:g} s)")
                    measured["idle_with_agents"] = idle_window(fake, service, args.window_s)
                    measured["idle_with_agents"]["agents"] = total
                measured["feed_at_end"] = worker.health()["agentSync"].get("feed")
            finally:
                stop_worker(worker)
                admin.close()
                if args.log_dir is not None:
                    args.log_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copy(worker.log_path, args.log_dir / worker.log_path.name)
    finally:
        backend.close()
    return measured


def feed_figures(mode: str, measured: dict[str, Any]) -> dict[str, float]:
    """The headline figures of one mode's run, named `<figure>_<mode>[_with_agents]`."""
    figures: dict[str, float] = {}
    for window, suffix in (("idle", ""), ("idle_with_agents", "_with_agents")):
        if window in measured:
            figures[f"idle_calls_per_s_{mode}{suffix}"] = measured[window]["calls_per_s"]
            figures[f"heartbeat_calls_per_s_{mode}{suffix}"] = measured[window][
                "heartbeat_calls_per_s"
            ]
    if "change_to_sync" in measured:
        figures[f"change_to_sync_p50_ms_{mode}"] = measured["change_to_sync"]["p50_ms"]
        figures[f"change_to_sync_p99_ms_{mode}"] = measured["change_to_sync"]["p99_ms"]
    return figures


def feed_runs(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """Every run of every mode; each figure's median and per-run values into `result`.
    Returns how many mode-runs failed (each failure is in `feed_runs`)."""
    runs: list[dict[str, Any]] = []
    per_run: list[dict[str, float]] = []
    for run in range(1, args.runs + 1):
        details: dict[str, Any] = {"run": run, "load_average_before": os.getloadavg()[0]}
        figures: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="convex-feed-bench-") as tmp:
            for mode in args.modes:
                try:
                    measured = feed_mode_run(mode, args, Path(tmp), f"{mode}-run{run}")
                except (BenchmarkError, httpx.HTTPError, OSError) as error:
                    measured = {"error": f"{type(error).__name__}: {error}"}
                    log(f"{mode}-run{run}: {measured['error']}")
                details[mode] = measured
                figures.update(feed_figures(mode, measured))
        details["load_average_after"] = os.getloadavg()[0]
        runs.append(details)
        per_run.append(figures)
        log(f"run {run}: {json.dumps(figures)}")
    for key in dict.fromkeys(key for figures in per_run for key in figures):
        values = [figures[key] for figures in per_run if key in figures]
        result[key] = round(statistics.median(values), 4)
        result[f"{key}_runs"] = values
    result["feed_runs"] = runs
    return sum("error" in run[mode] for run in runs for mode in args.modes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="runs of the change-feed part")
    parser.add_argument(
        "--modes",
        type=lambda text: [m for m in text.split(",") if m],
        default=list(FEED_MODES),
        help="comma-separated AGENT_SYNC_MODEs (default subscribe,poll)",
    )
    parser.add_argument("--window-s", type=float, default=60.0, help="each idle window")
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--skip-adapter", action="store_true", help="no adapter/creation part")
    parser.add_argument("--skip-feed", action="store_true", help="no change-feed part")
    parser.add_argument("--skip-idle", action="store_true", help="no idle windows")
    parser.add_argument("--skip-latency", action="store_true", help="no change latencies")
    parser.add_argument("--log-dir", type=Path, help="keep the workers' logs here")
    args = parser.parse_args()
    unknown = sorted(set(args.modes) - set(FEED_MODES))
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; expected subscribe and/or poll")
    logs.configure("WARNING", "text")
    result: dict[str, Any] = {"load_average_before": os.getloadavg()[0]}
    if not args.skip_adapter:
        result.update(adapter_figures(args))
    status = 0
    if not args.skip_feed:
        result.update(
            feed_modes=args.modes,
            feed_window_s=args.window_s,
            feed_agents=args.agents,
            feed_heartbeat_interval_ms=args.heartbeat_interval_ms,
            feed_changes=args.changes,
            feed_runs_count=args.runs,
        )
        if feed_runs(args, result):
            status = 1
    result["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(result))
    sys.exit(status)


if __name__ == "__main__":
    main()
