"""Jobs at fleet scale: 3 core workers, 300 agents, 3,000 jobs on one SQLite file. Every
job is run and completed exactly once, each agent's jobs in queue order, each by the
worker that owns its agent."""

from collections import defaultdict
from pathlib import Path

from actors.agents.ownership import owner_of
from backend.local import LocalBackend
from tests.conftest import wait_for
from tests.runtime_process import RuntimeProcess
from tests.test_jobs_e2e import runs, worker_env

WORKERS = ("wa", "wb", "wc")
AGENTS = 300
JOBS_PER_AGENT = 10


def test_three_workers_run_3000_jobs_once_each_in_order_on_their_owners(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "local.db")
    agents = [backend.create_agent(f"agent-{n}", 5000).id for n in range(AGENTS)]
    # A registration outlives a loaded machine's late renewals: the owners stay put.
    slow_expiry = {"WORKER_HEARTBEAT_MS": "1000", "WORKER_TTL_MS": "15000"}
    workers = [RuntimeProcess(worker_env(tmp_path, name, **slow_expiry)) for name in WORKERS]
    try:
        # Ownership settles first (every worker sees all three), so it is fixed while jobs run.
        wait_for(
            lambda: (
                all(len(w.health()["workers"]["live"]) == 3 for w in workers)
                and sum(w.health()["workers"]["ownedAgents"] for w in workers) == AGENTS
            ),
            timeout_s=20,
            what="300 agents shared by 3 workers",
        )
        jobs = [
            backend.enqueue_job(agent, f'/tool record_run {{"agent": "{agent}", "seq": {seq}}}')
            for seq in range(JOBS_PER_AGENT)
            for agent in agents
        ]
        wait_for(
            lambda: sum(w.health()["jobs"]["completed"] for w in workers) == len(jobs),
            timeout_s=180,
            poll_s=0.5,
            what="3000 jobs done",
        )
    finally:
        for worker in workers:
            worker.stop()

    ran = [line.split() for line in runs(tmp_path)]
    assert len(ran) == len(jobs)
    assert len({(agent, seq) for _, agent, seq in ran}) == len(jobs)  # each once
    order: dict[str, list[int]] = defaultdict(list)
    for worker, agent, seq in ran:
        order[agent].append(int(seq))
        assert worker == owner_of(agent, WORKERS), f"{agent} ran on {worker}"
    assert all(seqs == list(range(JOBS_PER_AGENT)) for seqs in order.values())
    assert {backend.get_job(job_id)["status"] for job_id in jobs} == {"done"}
