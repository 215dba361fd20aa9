"""The SyncActor, its AgentActors and the HeartbeatWriter, as actors, on a mocked backend."""

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from pytest_mock import MockerFixture

from actors.agents.agent import AgentActor
from actors.agents.heartbeat_writer import HeartbeatWriter
from actors.agents.ownership import owner_of
from actors.agents.sync import STATUS_NAME, SyncActor
from actors.dispatcher import Dispatcher
from actors.scheduler import Scheduler
from agent_runtime.backoff import Backoff
from agent_runtime.errors import BackendError
from agent_runtime.status import StatusBoard
from backend.port import Backend
from messages import GetRunningAgents, RegistrationChanged, RequestSync, SyncStatus
from tests.conftest import stays_false, wait_for

FAST_BACKOFF = Backoff(min_s=0.05, max_s=0.2, random_factor=0.2)
WORKER = "w1"


def row(agent_id: str, interval_ms: int = 100, **overrides: Any) -> dict[str, Any]:
    base = {
        "id": agent_id,
        "name": f"name-{agent_id}",
        "sessionKey": f"agent:{agent_id}",
        "heartbeatIntervalMs": interval_ms,
        "status": "offline",
        "lastHeartbeatAt": None,
        "updatedAt": 1,
    }
    base.update(overrides)
    return base


class Fleet:
    """A mocked backend whose agent list the test edits, plus a running SyncActor."""

    def __init__(
        self,
        mocker: MockerFixture,
        scheduler: Scheduler,
        dispatcher: Dispatcher,
        board: StatusBoard,
    ) -> None:
        self.dispatcher = dispatcher
        self.rows: list[dict[str, Any]] = []
        self.version = 0
        self._lock = threading.Lock()
        self.beats: list[tuple[str, int]] = []
        self.offline: list[str] = []
        self.workers = [WORKER]
        self.backend = mocker.create_autospec(Backend, instance=True)
        self.backend.list_agents.side_effect = self._list
        self.backend.agents_version.side_effect = lambda: str(self.version)
        self.backend.record_heartbeats.side_effect = self._record
        self.backend.list_workers.side_effect = lambda: list(self.workers)
        self.backend.mark_offline.side_effect = self.offline.extend
        # The port's default: the two reads (the tests count and fail list_agents).
        self.backend.agents_and_workers.side_effect = lambda: (
            self.backend.list_agents(),
            self.backend.list_workers(),
        )
        self.scheduler = scheduler
        self.board = board
        self.writer: pykka.ActorRef[Any] | None = None
        self.sync: pykka.ActorRef[Any] | None = None

    def _list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.rows]

    def _record(self, beats: Any) -> list[str]:
        with self._lock:
            self.beats.extend((b.agent_id, b.at_ms) for b in beats)
        return []

    def set_rows(self, *rows: dict[str, Any]) -> None:
        """Replace the agent list and move the change signal, as an admin edit would."""
        with self._lock:
            self.rows = list(rows)
            self.version += 1

    def start(self, sync_interval_s: float = 60.0, *, registered: bool = True) -> None:
        self.writer = HeartbeatWriter.start(
            supervisor=None, backend=self.backend, scheduler=self.scheduler, status_board=self.board
        )
        self.sync = SyncActor.start(
            supervisor=None,
            backend=self.backend,
            scheduler=self.scheduler,
            dispatcher=self.dispatcher,
            heartbeat_writer=self.writer,
            status_board=self.board,
            worker_id=WORKER,
            sync_interval_s=sync_interval_s,
            backoff=FAST_BACKOFF,
        )
        if registered:  # as the Membership actor says once its registration is in
            self.sync.tell(RegistrationChanged(registered=True))

    def set_workers(self, *workers: str) -> None:
        """Replace the live workers and move the change signal, as a join or leave does."""
        with self._lock:
            self.workers = list(workers)
            self.version += 1

    def running(self) -> set[str]:
        assert self.sync is not None
        return set(self.sync.ask(GetRunningAgents()))

    def status(self) -> SyncStatus:
        status = self.board.get(STATUS_NAME)
        assert isinstance(status, SyncStatus)
        return status

    def restarts(self, agent_id: str) -> int:
        status = self.board.get(STATUS_NAME)
        if not isinstance(status, SyncStatus):
            return 0
        return {a.record.id: a.restarts for a in status.agents}.get(agent_id, 0)

    def beat_times(self, agent_id: str) -> list[int]:
        with self._lock:
            return [at for a, at in self.beats if a == agent_id]

    def agent_ref(self, agent_id: str) -> pykka.ActorRef[Any]:
        for ref in pykka.ActorRegistry.get_by_class(AgentActor):
            if ref.proxy().record.get().id == agent_id:
                return ref
        raise AssertionError(f"no AgentActor for {agent_id}")


@pytest.fixture
def fleet(
    mocker: MockerFixture, scheduler: Scheduler, dispatcher: Dispatcher, board: StatusBoard
) -> Iterator[Fleet]:
    f = Fleet(mocker, scheduler, dispatcher, board)
    yield f
    if f.sync is not None:
        f.sync.stop()
    if f.writer is not None:
        f.writer.stop()


def test_first_sync_starts_an_actor_per_agent_and_they_beat(fleet: Fleet) -> None:
    fleet.set_rows(row("a"), row("b"))
    fleet.start()
    wait_for(lambda: fleet.running() == {"a", "b"}, what="both agents running")
    wait_for(lambda: fleet.beat_times("a") and fleet.beat_times("b"), what="both beats written")
    status = fleet.status()
    assert status.added_count == 2
    assert status.last_error is None
    assert [a.record.id for a in status.agents] == ["a", "b"]


def test_change_signal_adds_updates_and_removes_without_waiting_for_the_interval(
    fleet: Fleet,
) -> None:
    fleet.set_rows(row("a"), row("b"))
    fleet.start(sync_interval_s=60.0)
    wait_for(lambda: fleet.running() == {"a", "b"}, what="start-up sync")

    fleet.set_rows(row("a", name="renamed"), row("c"))
    wait_for(lambda: fleet.running() == {"a", "c"}, what="c added and b removed")
    wait_for(lambda: "b" in fleet.offline, what="b marked offline")
    wait_for(lambda: fleet.agent_ref("a").proxy().record.get().name == "renamed", what="update")
    status = fleet.status()
    assert (status.added_count, status.removed_count, status.updated_count) == (3, 1, 1)
    removed_beats = len(fleet.beat_times("b"))
    assert stays_false(lambda: len(fleet.beat_times("b")) > removed_beats, 0.4)


def test_interval_change_leaves_exactly_one_timer_and_new_spacing(fleet: Fleet) -> None:
    fleet.set_rows(row("a", interval_ms=400))
    fleet.start()
    wait_for(lambda: fleet.running() == {"a"}, what="agent running")
    ref = fleet.agent_ref("a")
    for interval_ms in (300, 200, 100):
        fleet.set_rows(row("a", interval_ms=interval_ms))
        wait_for(
            lambda ms=interval_ms: ref.proxy().record.get().heartbeat_interval_ms == ms,
            what=f"interval {interval_ms}",
        )
        wait_for(lambda: fleet.scheduler.armed_count(ref) == 1, what="its one timer re-armed")
        assert fleet.scheduler.armed_count(ref) == 1
    # Heartbeats are written at most every 0.5 s, so watch lateness-free spacing via ticks:
    count = len(fleet.beat_times("a"))
    wait_for(lambda: len(fleet.beat_times("a")) >= count + 2, what="beats at the new rate")


def test_session_key_change_replaces_the_session(fleet: Fleet, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    fleet.set_rows(row("a"))
    fleet.start()
    wait_for(lambda: fleet.running() == {"a"}, what="agent running")
    fleet.set_rows(row("a", sessionKey="agent:new"))
    wait_for(
        lambda: "session replaced: agent:a -> agent:new" in caplog.text, what="session replaced"
    )
    assert "session agent:a closed" in caplog.text


def test_crashing_agent_is_restarted_with_backoff_while_others_keep_beating(
    fleet: Fleet, mocker: MockerFixture
) -> None:
    original = AgentActor._beat

    def beat(self: AgentActor, tick: Any) -> None:
        if self.record.id == "bad":
            raise RuntimeError("boom")
        original(self, tick)

    mocker.patch.object(AgentActor, "_beat", autospec=True, side_effect=beat)
    fleet.set_rows(row("good", interval_ms=50), row("bad", interval_ms=50))
    fleet.start()
    wait_for(
        lambda: fleet.restarts("bad") >= 3,
        timeout_s=10,
        what="three restarts of the bad agent",
    )
    good_beats = len(fleet.beat_times("good"))
    wait_for(lambda: len(fleet.beat_times("good")) > good_beats, what="good agent still beating")
    assert fleet.beat_times("bad") == []
    assert fleet.restarts("good") == 0
    assert fleet.board.restarts()["agent"] >= 3


def test_failed_sync_is_reported_and_the_next_one_runs(fleet: Fleet) -> None:
    fleet.backend.list_agents.side_effect = [BackendError("database is locked"), [row("a")]]
    fleet.start()
    wait_for(
        lambda: fleet.board.get(STATUS_NAME) and fleet.status().last_error == "database is locked",
        what="error reported",
    )
    assert fleet.running() == set()
    assert fleet.sync is not None
    fleet.sync.tell(RequestSync(reason="test"))
    wait_for(lambda: fleet.running() == {"a"}, what="the next sync to succeed")
    assert fleet.status().last_error is None


def test_timed_sync_runs_without_any_change_signal(fleet: Fleet) -> None:
    fleet.backend.agents_version.side_effect = BackendError("no signal")
    fleet.set_rows(row("a"))
    fleet.start(sync_interval_s=0.2)
    wait_for(lambda: fleet.running() == {"a"}, what="first sync")
    fleet.set_rows(row("a"), row("b"))
    wait_for(lambda: fleet.running() == {"a", "b"}, what="timed sync picks up b")


def test_invalid_agent_is_skipped_with_one_log_line_not_repeated(fleet: Fleet, caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    fleet.set_rows(row("good"), row("bad", interval_ms=0))
    fleet.start(sync_interval_s=0.1)
    wait_for(lambda: fleet.running() == {"good"}, what="good agent running")
    wait_for(lambda: fleet.backend.list_agents.call_count >= 4, what="several syncs")
    lines = [r.getMessage() for r in caplog.records if "skipping invalid agent" in r.message]
    assert lines == [
        "skipping invalid agent bad: heartbeatIntervalMs: input should be greater than 0 (got 0)"
    ]


def test_agent_whose_record_turns_invalid_keeps_running_on_its_last_good_record(
    fleet: Fleet,
) -> None:
    fleet.set_rows(row("a"))
    fleet.start()
    wait_for(lambda: fleet.running() == {"a"}, what="agent running")
    fleet.set_rows(row("a", heartbeatIntervalMs="soon"))
    wait_for(lambda: fleet.backend.list_agents.call_count >= 2, what="the next sync")
    assert fleet.running() == {"a"}
    assert fleet.agent_ref("a").proxy().record.get().heartbeat_interval_ms == 100


def test_the_last_worker_leaving_marks_its_agents_offline(fleet: Fleet) -> None:
    fleet.set_rows(row("a"), row("b"))
    fleet.start()
    wait_for(lambda: fleet.running() == {"a", "b"}, what="agents running")
    assert fleet.sync is not None
    fleet.workers = []  # the Membership deregistered first; nobody else is live
    fleet.sync.stop()
    fleet.sync = None
    wait_for(lambda: set(fleet.offline) == {"a", "b"}, what="both marked offline")
    assert pykka.ActorRegistry.get_by_class(AgentActor) == []


def test_leaving_while_another_worker_is_live_marks_nothing_offline(fleet: Fleet) -> None:
    fleet.set_rows(row("a"), row("b"))
    fleet.start()
    wait_for(lambda: fleet.running() == {"a", "b"}, what="agents running")
    assert fleet.sync is not None
    assert fleet.writer is not None
    fleet.workers = ["w2"]  # deregistered; w2 takes every agent
    fleet.sync.stop()
    fleet.sync = None
    fleet.writer.stop()  # flushes whatever is pending, offline marks included
    fleet.writer = None
    assert fleet.offline == []
    assert pykka.ActorRegistry.get_by_class(AgentActor) == []


def test_a_restart_while_still_registered_marks_nothing_offline(fleet: Fleet) -> None:
    fleet.set_rows(row("a"))
    fleet.start()
    wait_for(lambda: fleet.running() == {"a"}, what="agent running")
    assert fleet.sync is not None
    assert fleet.writer is not None
    fleet.sync.stop()  # this worker is still listed live: its actors are restarting
    fleet.sync = None
    fleet.writer.stop()
    fleet.writer = None
    assert fleet.offline == []


def test_runs_only_the_agents_it_owns_and_hands_over_on_a_join(fleet: Fleet) -> None:
    ids = [f"agent-{i}" for i in range(40)]
    fleet.set_rows(*(row(i) for i in ids))
    fleet.start()
    wait_for(lambda: fleet.running() == set(ids), what="every agent on the only worker")
    fleet.set_workers(WORKER, "w2")
    mine = {i for i in ids if owner_of(i, [WORKER, "w2"]) == WORKER}
    assert 0 < len(mine) < len(ids)  # 40 agents over 2 workers: both get some
    wait_for(lambda: fleet.running() == mine, what="w2's agents handed over")
    assert fleet.offline == []  # moved, not gone: w2 beats for them now
    assert fleet.status().live_workers == (WORKER, "w2")
    fleet.set_workers(WORKER)  # w2 died or left
    wait_for(lambda: fleet.running() == set(ids), what="every agent back")
    assert fleet.offline == []


def test_an_unregistered_worker_runs_no_agents(fleet: Fleet) -> None:
    fleet.set_rows(row("a"))
    fleet.start(registered=False)
    assert fleet.sync is not None
    fleet.sync.tell(RequestSync(reason="test"))
    assert stays_false(fleet.running, 0.3)
    fleet.sync.tell(RegistrationChanged(registered=True))
    wait_for(lambda: fleet.running() == {"a"}, what="runs once registered")
    fleet.sync.tell(RegistrationChanged(registered=False))  # another process took the id
    wait_for(lambda: fleet.running() == set(), what="stops again")
    assert fleet.offline == []


def test_failing_sync_retries_on_backoff_not_on_every_change_poll(fleet: Fleet) -> None:
    fleet.backend.list_agents.side_effect = BackendError("backend down")
    fleet.start(sync_interval_s=60.0)
    wait_for(lambda: fleet.backend.list_agents.call_count >= 1, what="the first sync")
    for _ in range(8):  # the change signal keeps moving while the backend fails
        fleet.set_rows(row("a"))
        assert fleet.sync is not None
        fleet.sync.ask(GetRunningAgents())
    # Polled 4x per second, a storm would be several syncs in 0.9 s; the backoff allows one.
    assert stays_false(lambda: fleet.backend.list_agents.call_count > 2, 0.9)
    fleet.backend.list_agents.side_effect = fleet._list
    wait_for(lambda: fleet.running() == {"a"}, timeout_s=5, what="recovery on the retry")
    assert fleet.status().last_error is None


def test_stale_change_polls_are_dropped_while_the_backend_is_slow(fleet: Fleet) -> None:
    slow = threading.Event()

    def version() -> str:
        if slow.is_set():
            threading.Event().wait(0.5)  # a slow backend call, blocking the actor
        return str(fleet.version)

    fleet.backend.agents_version.side_effect = version
    fleet.start()
    wait_for(lambda: fleet.backend.list_agents.call_count >= 1, what="the first sync")
    slow.set()
    calls = fleet.backend.agents_version.call_count
    wait_for(lambda: fleet.backend.agents_version.call_count >= calls + 4, what="slow polls")
    slow.clear()
    assert fleet.sync is not None
    # Polls kept arriving every 0.25 s while each read took 0.5 s; were the stale ones kept,
    # they would hold the actor for seconds. Dropped, it answers at once.
    assert fleet.sync.ask(GetRunningAgents(), timeout=1.0) == ()
