"""The root supervisor: core actors restarted with backoff, escalation past the limit."""

import threading
from typing import Any

from pytest_mock import MockerFixture

from actors.agents.sync import STATUS_NAME, SyncActor
from actors.runtime import Runtime, RuntimeOptions
from agent_runtime.backoff import Backoff
from agent_runtime.status import StatusBoard
from backend.local import LocalBackend
from messages import MembershipStatus, SyncStatus
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


def options(**changes: Any) -> RuntimeOptions:
    fields: dict[str, Any] = {
        "runs_agents": True,
        "sync_interval_s": 60.0,
        "worker_id": "w1",
        "worker_heartbeat_s": 0.1,
        "worker_ttl_ms": 1000,
        "backoff": FAST,
        "intensity": (3, 60.0),
    }
    fields.update(changes)
    return RuntimeOptions(**fields)


def start_runtime(
    local_backend: LocalBackend, board: StatusBoard, fatal: Fatal, **changes: Any
) -> Any:
    return Runtime.start(
        options=options(**changes), backend=local_backend, status_board=board, on_fatal=fatal
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
        options=options(runs_agents=False),
        backend=local_backend,
        status_board=board,
        on_fatal=fatal,
    )
    assert runtime.proxy().sync.get() is None
    assert board.get(STATUS_NAME) is None
    runtime.stop()


def test_stop_deregisters_first_and_the_last_worker_marks_its_agents_offline(
    local_backend: LocalBackend, board: StatusBoard
) -> None:
    agent = local_backend.create_agent("scout", 1000)
    runtime = start_runtime(local_backend, board, Fatal())
    wait_for(lambda: local_backend.list_workers() == ["w1"], what="registered")
    wait_for(
        lambda: local_backend.list_agents_with_presence()[0]["status"] == "online", what="online"
    )
    runtime.stop()
    assert local_backend.list_workers() == []
    (row,) = local_backend.list_agents_with_presence()
    assert (row["id"], row["status"]) == (agent.id, "offline")


def test_a_worker_id_held_by_another_live_process_is_waited_for_not_taken(
    local_backend: LocalBackend, board: StatusBoard
) -> None:
    local_backend.create_agent("scout", 1000)
    local_backend.register_worker("w1", "the-other-process", ttl_ms=60_000)
    runtime = start_runtime(local_backend, board, Fatal())

    def membership() -> MembershipStatus | None:
        status = board.get("membership")
        return status if isinstance(status, MembershipStatus) else None

    wait_for(lambda: getattr(membership(), "last_error", None), what="the refusal")
    status = membership()
    assert status is not None
    assert not status.registered
    assert "is registered by another live process" in (status.last_error or "")
    assert running_ids(board) == set()
    # The other process's registration is intact: it can still renew and remove it.
    assert local_backend.register_worker("w1", "the-other-process", ttl_ms=60_000) == ["w1"]
    assert local_backend.deregister_worker("w1", "the-other-process")
    wait_for(lambda: len(running_ids(board)) == 1, what="runs once the id is free")
    runtime.stop()
