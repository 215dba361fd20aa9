"""Tools for the jobs' end-to-end tests, loaded by the worker subprocesses through
TOOLS_MODULES=tests.job_tools. They record their runs in the file RUNS_FILE names (one
line per run, appended atomically), so the test sees which worker ran which job."""

import os
import threading
from pathlib import Path

from agent_runtime.tools import tool

GATE_WAIT_S = 60.0


def _record(line: str) -> None:
    fd = os.open(os.environ["RUNS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@tool
def record_run(agent: str, seq: int) -> str:
    """Record that this worker ran the job `seq` of `agent`."""
    _record(f"{os.environ['WORKER_ID']} {agent} {seq}")
    return f"recorded {seq}"


@tool
def wait_for_gate(name: str) -> str:
    """Record the run, then wait until the file GATE_DIR/name exists (a job that takes
    as long as the test wants)."""
    _record(f"{os.environ['WORKER_ID']} gate {name}")
    gate = Path(os.environ["GATE_DIR"]) / name
    opened = threading.Event()
    for _ in range(int(GATE_WAIT_S / 0.05)):
        if gate.exists():
            opened.set()
            break
        opened.wait(0.05)
    return f"gate {name} {'open' if opened.is_set() else 'still closed'}"
