"""The root supervisor: core actors restarted with backoff, escalation past the limit."""

import threading
from typing import Any

from pytest_mock import MockerFixture

from actors.agents.sync import STATUS_NAME, SyncActor
from actors.runtime import Runtime, RuntimeOptions
from agent_runtime.backoff import Backoff
from agent_runtime.status import StatusBoard
from backend.local import LocalBackend
from messages import SyncStatus
from tests.conftest import wait_for

FAST = Backoff(min_s=0.02, max_s=0.1, random_factor=0.1)


class Fatal:
    def __init__(self) -> None:
        self.reason: str | None = None
        self.event = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reason = reason
        self.event.set()


def running_ids(board: StatusBoard) -> set[str]:
    status = board.get(STATUS_NAME)
    if not isinstance(status, SyncStatus) or not status.running:
        return set()
    return {a.record.id for a in status.agents}


def start_runtime(local_backend: LocalBackend, board: StatusBoard, fatal: Fatal) -> Any:
    return Runtime.start(
        options=RuntimeOptions(
            runs_agents=True, sync_interval_s=60.0, backoff=FAST, intensity=(3, 60.0)
        ),
        backend=local_backend,
        status_board=board,
        on_fatal=fatal,
    )


def test_crashed_sync_actor_is_restarted_and_brings_agents_back(
    local_backend: LocalBackend, board: StatusBoard, mocker: MockerFixture
) -> None:
    agent = local_backend.create_agent("scout", 1000)
    original = SyncActor._sync
    crashes = iter([True])

    def sync_once_crashing(self: SyncActor) -> None:
        if next(crashes, False):
            raise RuntimeError("bug in sync")
        original(self)

    mocker.patch.object(SyncActor, "_sync", autospec=True, side_effect=sync_once_crashing)
    fatal = Fatal()
    runtime = start_runtime(local_backend, board, fatal)
    wait_for(lambda: running_ids(board) == {agent.id}, what="agent running after the restart")
    assert board.restarts() == {"sync": 1}
    assert not fatal.event.is_set()
    runtime.stop()


def test_core_actor_crashing_past_the_intensity_limit_is_fatal(
    local_backend: LocalBackend, board: StatusBoard, mocker: MockerFixture
) -> None:
    mocker.patch.object(SyncActor, "_sync", autospec=True, side_effect=RuntimeError("always"))
    fatal = Fatal()
    runtime = start_runtime(local_backend, board, fatal)
    assert fatal.event.wait(10), "the runtime never gave up"
    assert fatal.reason is not None
    assert "sync crashed more than 3 times in 60 s" in fatal.reason
    assert board.restarts()["sync"] == 3  # the fourth crash is not restarted
    runtime.stop()


def test_roles_without_agents_start_no_sync(
    local_backend: LocalBackend, board: StatusBoard
) -> None:
    fatal = Fatal()
    runtime = Runtime.start(
        options=RuntimeOptions(runs_agents=False, sync_interval_s=60.0),
        backend=local_backend,
        status_board=board,
        on_fatal=fatal,
    )
    assert runtime.proxy().sync.get() is None
    assert board.get(STATUS_NAME) is None
    runtime.stop()
