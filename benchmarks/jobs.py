"""Benchmark: jobs with the echo model on core workers, real `agent-runtime run`
subprocesses on one SQLite file, measured from outside (the backend, the workers' JSON
logs, /health).

Each run (--runs, default 3) has three phases, each on a fresh database of --agents
(100) agents beating every 5 s and fresh workers (AGENT_ROLE=core, MODEL_PROVIDER=echo,
LOG_LEVEL=INFO, the default JOB_* settings unless --concurrency sets JOB_CONCURRENCY).
Every phase first waits until ownership settled (every worker's /health lists all the
phase's workers as live, their ownedAgents sum to the agents and all of them run) and
then until a warm-up job per agent is done, so the clock starts on a warm worker.
  jobs_per_s_1_worker, jobs_per_s_3_workers: --jobs (10,000) plain echo jobs (`bench
    N`, no tool call) queued round-robin over the agents in ONE transaction (enqueue_s:
    how long that took; none can start before its commit). The figure is jobs / (the
    last "job X done" log line - the first "job X started" line among them), both
    times from the workers' logs (ms resolution, the machine's wall clock). drain_s:
    from the commit until /health counted every job completed (polled every 0.5 s);
    worker_cpu_cores: the workers' CPU seconds per second of drain_s (2 = both cores).
  enqueue_to_start_p50_ms, _p99_ms (nearest rank), _max_ms: one worker, jobs offered at
    --rate (100/s) for --offered-s (20 s), round-robin over the agents, each queued by one
    `LocalBackend.enqueue_job` call at its due time t0 + i / rate (deadlines, so one late
    call does not shift the rest; enqueue_late_max_ms says how late the latest was). The
    delay of a job is the worker's "job X started (attempt 1)" log time minus its
    createdAt, both wall-clock ms of this machine (each truncated to the ms).
  In every phase: order_violations counts jobs that started before the completion of the
    previous job of their agent in queue order (createdAt, then insertion), read from the
    order of the lines in the log of the agent's worker (by log time if an agent ran on
    several workers); duplicates counts runs of a job beyond its first ("started"
    lines); not_done counts jobs not done in the backend. All three must be 0.

Each figure is given per run (`<key>_runs`) and as the median of the runs (`<key>`);
order_violations, duplicates and not_done are totals over every phase of every run.
`targets` (booleans, on the medians): jobs_per_s_1_worker >= 300, enqueue_to_start_p99_ms
<= 250, and the three counts 0. load_average (1 min, before and after) shows whether
something else shared the machine. Progress goes to stderr, one JSON object to stdout
(with "error" and exit status 1 if a wait timed out).

Usage (from the repository root; under a minute per run, and it needs both cores):
  .venv/bin/python benchmarks/jobs.py [--runs 3] [--agents 100] [--jobs 10000]
      [--rate 100] [--offered-s 20] [--concurrency N] [--skip-throughput]
      [--skip-latency] [--log-dir DIR]   (keeps the workers' JSON logs)
"""

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import httpx
import workers
from workers import BenchmarkError, Worker, seconds

from agent_runtime.clock import monotonic_s
from backend.local import LocalBackend
from backend.local_jobs import insert_job

T = TypeVar("T")

POLL_S = 0.5
"""How often /health is read while jobs drain: often enough for drain_s, rarely enough
not to take CPU from the workers (the throughput figure itself comes from their logs)."""

AGENT_INTERVAL_MS = 5000
MIN_JOBS_PER_S = 300
MAX_ENQUEUE_TO_START_P99_MS = 250
WORKER_NAMES = ("w1", "w2", "w3")

STARTED = re.compile(r"job (\w+) started \(attempt (\d+)\)")
DONE = re.compile(r"job (\w+) done in ")
_idle = threading.Event()


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    """`workers.wait_until`, reading every POLL_S."""
    return workers.wait_until(predicate, timeout_s, what, POLL_S)


def log(message: str) -> None:
    print(f"jobs: {message}", file=sys.stderr, flush=True)


def worker_env(db_path: Path, args: argparse.Namespace) -> dict[str, str]:
    prefixes = ("AGENT_", "LOG_", "APP_", "WORKER_", "CONVEX_", "JOB_", "MODEL", "OPENAI_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith((*prefixes, "TOOLS_", "WHATSAPP_", "ENABLE_WHATSAPP"))
    }
    env.update(
        LOCAL_DB_PATH=str(db_path),
        PORT="0",
        HOST="127.0.0.1",
        LOG_LEVEL="INFO",  # the HTTP port and every job's start and end are logged at INFO
        LOG_FORMAT="json",
        AGENT_ROLE="core",
        MODEL_PROVIDER="echo",
    )
    if args.concurrency is not None:
        env["JOB_CONCURRENCY"] = str(args.concurrency)
    return env


# ---------------------------------------------------------------------------- workers


@dataclass
class Fleet:
    """A fresh database of agents and the workers on it."""

    folder: Path
    backend: LocalBackend
    agents: list[str]
    workers: list[Worker]

    def completed(self) -> int:
        """Jobs the workers completed, by their /health."""
        return sum(w.health()["jobs"]["completed"] for w in self.workers)

    def settled(self) -> bool:
        """Every worker sees them all live; they own and run every agent between them."""
        healths = [w.health() for w in self.workers]
        return (
            all(len(h["workers"]["live"]) == len(self.workers) for h in healths)
            and sum(h["workers"]["ownedAgents"] for h in healths) == len(self.agents)
            and sum(h["agents"]["running"] for h in healths) == len(self.agents)
        )

    def cpu_s(self) -> float:
        return sum(w.cpu_s() for w in self.workers)

    def wait_done(self, count: int, timeout_s: float, what: str) -> None:
        wait_until(lambda: self.completed() >= count, timeout_s, what)


@contextmanager
def fleet(args: argparse.Namespace, count: int, label: str) -> Iterator[Fleet]:
    """`count` workers on a fresh database of --agents agents, settled and warmed up (one
    job per agent done); stopped, and their logs kept in --log-dir, on exit."""
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
        folder = Path(tmp)
        backend = LocalBackend(folder / "jobs.db")
        started: list[Worker] = []
        try:
            agents = [
                backend.create_agent(f"bench-{i}", AGENT_INTERVAL_MS).id for i in range(args.agents)
            ]
            env = worker_env(backend.path, args)
            for name in WORKER_NAMES[:count]:
                started.append(Worker(name, env, folder))
            running = Fleet(folder, backend, agents, started)
            wait_until(running.settled, 60, f"{count} worker(s) to settle on the agents")
            for agent in agents:
                backend.enqueue_job(agent, "warm-up")
            running.wait_done(len(agents), 60, "the warm-up jobs")
            yield running
        finally:
            for worker in started:
                worker.stop()
                if args.log_dir is not None:
                    args.log_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copy(worker.log_path, args.log_dir / f"{label}-{worker.name}.log")
            backend.close()


# ---------------------------------------------------------------------------- what ran


@dataclass(frozen=True)
class JobLine:
    """A "job X started" or "job X done" line of a worker's log."""

    worker: str
    line: int
    at_ms: float
    kind: str  # "started" or "done"
    job_id: str
    agent_id: str


def log_time_ms(asctime: str) -> float:
    """Epoch ms of a JSON log line's "time" (local time, ms resolution)."""
    return datetime.strptime(asctime, "%Y-%m-%d %H:%M:%S,%f").timestamp() * 1000


def job_lines(worker: Worker) -> list[JobLine]:
    found = []
    with worker.log_path.open() as lines:
        for number, line in enumerate(lines):
            if '"job ' not in line:
                continue  # cheap: most lines are not about a job's start or end
            record = json.loads(line)
            message = record.get("message", "")
            for kind, pattern in (("started", STARTED), ("done", DONE)):
                match = pattern.match(message)
                if match:
                    found.append(
                        JobLine(
                            worker.name,
                            number,
                            log_time_ms(record["time"]),
                            kind,
                            match.group(1),
                            record["agent"]["id"],
                        )
                    )
    return found


@dataclass(frozen=True)
class QueuedJob:
    id: str
    agent_id: str
    created_at: int
    status: str


def queued_jobs(backend: LocalBackend) -> list[QueuedJob]:
    """Every job, in queue order (the benchmark reads the table directly: list_jobs stops
    at 1,000)."""
    rows = backend._read(
        "SELECT id, agent_id, created_at, status FROM jobs ORDER BY created_at, rowid"
    )
    return [QueuedJob(*row) for row in rows]


def first_lines(lines: list[JobLine], kind: str) -> dict[str, JobLine]:
    """The first line of this kind for each job."""
    first: dict[str, JobLine] = {}
    for line in lines:
        if line.kind == kind and line.job_id not in first:
            first[line.job_id] = line
    return first


def correctness(jobs: list[QueuedJob], lines: list[JobLine]) -> dict[str, int]:
    """order_violations, duplicates and not_done (see the module docstring)."""
    lines = sorted(lines, key=lambda line: (line.worker, line.line))
    starts = Counter(line.job_id for line in lines if line.kind == "started")
    started, done = first_lines(lines, "started"), first_lines(lines, "done")
    workers_of: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        workers_of[line.agent_id].add(line.worker)
    queues: dict[str, list[str]] = defaultdict(list)
    for job in jobs:
        queues[job.agent_id].append(job.id)
    violations = 0
    for agent_id, queue in queues.items():
        several = len(workers_of[agent_id]) > 1

        def position(line: JobLine, several: bool = several) -> tuple[float, str, int]:
            return (line.at_ms, line.worker, line.line) if several else (0, "", line.line)

        for previous, job_id in pairwise(queue):
            if job_id in started and (
                previous not in done or position(started[job_id]) <= position(done[previous])
            ):
                violations += 1
    return {
        "order_violations": violations,
        "duplicates": sum(n - 1 for n in starts.values()),
        "not_done": sum(1 for job in jobs if job.status != "done"),
        "agents_on_several_workers": sum(1 for w in workers_of.values() if len(w) > 1),
    }


# ---------------------------------------------------------------------------- phases


def enqueue_all(backend: LocalBackend, agents: list[str], per_agent: int) -> list[str]:
    """Queue `per_agent` jobs for each agent, round-robin, in one transaction (all with
    the same createdAt: queue order is insertion order)."""
    now = backend.clock()
    with backend._write() as db:
        return [
            insert_job(db, now, agent, f"bench {seq}", None, idempotency_key=None)
            for seq in range(per_agent)
            for agent in agents
        ]


def throughput_phase(args: argparse.Namespace, count: int, label: str) -> dict[str, Any]:
    per_agent = args.jobs // args.agents
    with fleet(args, count, label) as running:
        before = running.completed()
        cpu_before = running.cpu_s()
        started_s = monotonic_s()
        ids = enqueue_all(running.backend, running.agents, per_agent)
        committed_s = monotonic_s()
        running.wait_done(before + len(ids), len(ids) / 20 + 60, f"{len(ids)} jobs done")
        drain_s = monotonic_s() - committed_s
        cores = (running.cpu_s() - cpu_before) / drain_s
        lines = [line for w in running.workers for line in job_lines(w)]
        jobs = queued_jobs(running.backend)
    measured = set(ids)
    first_start = min(line.at_ms for line in lines if line.job_id in measured)
    last_done = max(line.at_ms for line in lines if line.job_id in measured and line.kind == "done")
    rate = len(ids) / ((last_done - first_start) / 1000)
    checked = correctness(jobs, lines)
    log(
        f"{label}: {len(ids)} jobs at {rate:.0f} jobs/s (queued in {committed_s - started_s:.2f}"
        f" s, drained in {drain_s:.1f} s, {cores:.2f} cores); {checked}"
    )
    return {
        "jobs_per_s": round(rate, 1),
        "enqueue_s": seconds(committed_s - started_s),
        "drain_s": seconds(drain_s),
        "worker_cpu_cores": round(cores, 2),
        **checked,
    }


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_phase(args: argparse.Namespace, label: str) -> dict[str, Any]:
    total = int(args.rate * args.offered_s)
    with fleet(args, 1, label) as running:
        before = running.completed()
        ids: list[str] = []
        late_s = 0.0
        t0 = monotonic_s() + 0.1
        for i in range(total):
            due_s = t0 + i / args.rate
            if (wait_s := due_s - monotonic_s()) > 0:
                _idle.wait(wait_s)
            late_s = max(late_s, monotonic_s() - due_s)
            ids.append(running.backend.enqueue_job(running.agents[i % args.agents], f"bench {i}"))
        offered_s = monotonic_s() - t0
        running.wait_done(before + total, 60, f"the {total} offered jobs done")
        lines = [line for w in running.workers for line in job_lines(w)]
        jobs = queued_jobs(running.backend)
    created = {job.id: job.created_at for job in jobs}
    started = first_lines(lines, "started")
    delays = sorted(started[job_id].at_ms - created[job_id] for job_id in ids)
    checked = correctness(jobs, lines)
    result = {
        "offered_per_s": round(total / offered_s, 1),
        "enqueue_late_max_ms": round(late_s * 1000, 1),
        "enqueue_to_start_p50_ms": round(statistics.median(delays), 1),
        "enqueue_to_start_p99_ms": round(percentile(delays, 0.99), 1),
        "enqueue_to_start_max_ms": round(delays[-1], 1),
        **checked,
    }
    log(
        f"{label}: {total} jobs offered at {result['offered_per_s']}/s; enqueue to start"
        f" p50 {result['enqueue_to_start_p50_ms']} ms, p99 {result['enqueue_to_start_p99_ms']}"
        f" ms, max {result['enqueue_to_start_max_ms']} ms; {checked}"
    )
    return result


# ---------------------------------------------------------------------------- main


def one_run(args: argparse.Namespace, run: int, phases: dict[str, dict[str, Any]]) -> None:
    """The run's phases, each added to `phases` as it ends (a failed run keeps the rest)."""
    if not args.skip_throughput:
        phases["1_worker"] = throughput_phase(args, 1, f"run{run}-1-worker")
        phases["3_workers"] = throughput_phase(args, 3, f"run{run}-3-workers")
    if not args.skip_latency:
        phases["latency"] = latency_phase(args, f"run{run}-latency")


FIGURES = {
    "jobs_per_s_1_worker": ("1_worker", "jobs_per_s"),
    "jobs_per_s_3_workers": ("3_workers", "jobs_per_s"),
    "enqueue_to_start_p50_ms": ("latency", "enqueue_to_start_p50_ms"),
    "enqueue_to_start_p99_ms": ("latency", "enqueue_to_start_p99_ms"),
    "enqueue_to_start_max_ms": ("latency", "enqueue_to_start_max_ms"),
    "worker_cpu_cores_1_worker": ("1_worker", "worker_cpu_cores"),
    "worker_cpu_cores_3_workers": ("3_workers", "worker_cpu_cores"),
    "drain_s_1_worker": ("1_worker", "drain_s"),
    "drain_s_3_workers": ("3_workers", "drain_s"),
    "enqueue_s": ("1_worker", "enqueue_s"),
    "offered_per_s": ("latency", "offered_per_s"),
    "enqueue_late_max_ms": ("latency", "enqueue_late_max_ms"),
}
COUNTS = ("order_violations", "duplicates", "not_done", "agents_on_several_workers")


def summarize(runs: list[dict[str, dict[str, Any]]], result: dict[str, Any]) -> None:
    """Each figure's per-run values and median; the counts' totals."""
    for key, (phase, field) in FIGURES.items():
        values = [run[phase][field] for run in runs if phase in run]
        if values:
            result[key] = round(statistics.median(values), 3)
            result[f"{key}_runs"] = values
    for count in COUNTS:
        result[count] = sum(phase[count] for run in runs for phase in run.values())
        result[f"{count}_runs"] = [sum(phase[count] for phase in run.values()) for run in runs]


def targets(result: dict[str, Any]) -> dict[str, bool | None]:
    def check(key: str, ok: Callable[[Any], bool]) -> bool | None:
        return ok(result[key]) if key in result else None

    return {
        "jobs_per_s_1_worker": check("jobs_per_s_1_worker", lambda v: v >= MIN_JOBS_PER_S),
        "enqueue_to_start_p99_ms": check(
            "enqueue_to_start_p99_ms", lambda v: v <= MAX_ENQUEUE_TO_START_P99_MS
        ),
        "order_violations": check("order_violations", lambda v: v == 0),
        "duplicates": check("duplicates", lambda v: v == 0),
        "not_done": check("not_done", lambda v: v == 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10_000, help="a multiple of --agents")
    parser.add_argument("--rate", type=float, default=100.0, help="offered jobs per second")
    parser.add_argument("--offered-s", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, help="JOB_CONCURRENCY (default: its own)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--log-dir", type=Path, help="keep the workers' logs here")
    args = parser.parse_args()
    if args.jobs % args.agents:
        parser.error(f"--jobs {args.jobs} is not a multiple of --agents {args.agents}")

    result: dict[str, Any] = {
        "runs": args.runs,
        "agents": args.agents,
        "jobs": args.jobs,
        "rate": args.rate,
        "offered_s": args.offered_s,
        "job_concurrency": args.concurrency,
        "load_average_before": os.getloadavg()[0],
    }
    runs: list[dict[str, dict[str, Any]]] = []
    status = 0
    try:
        for run in range(1, args.runs + 1):
            runs.append({})
            one_run(args, run, runs[-1])
    except (BenchmarkError, httpx.HTTPError, OSError) as error:
        result["error"] = f"{type(error).__name__}: {error}"
        log(result["error"])
        status = 1
    summarize(runs, result)
    result["load_average_after"] = os.getloadavg()[0]
    result["targets"] = targets(result)
    print(json.dumps(result))
    sys.exit(status)


if __name__ == "__main__":
    main()
