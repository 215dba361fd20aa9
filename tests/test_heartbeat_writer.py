"""The HeartbeatWriter batches heartbeats, keeps them on failure, and marks agents offline."""

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from pytest_mock import MockerFixture

from actors.agents.heartbeat_writer import FLUSH_INTERVAL_S, MIN_FLUSH_SPACING_S, HeartbeatWriter
from actors.scheduler import Scheduler
from agent_runtime.clock import monotonic_s, now_ms
from agent_runtime.errors import BackendError
from agent_runtime.status import StatusBoard
from backend.port import Backend
from messages import AgentsStopped, Heartbeat, HeartbeatStatus
from tests.conftest import wait_for


class Recorded:
    def __init__(self, mocker: MockerFixture) -> None:
        self.lock = threading.Lock()
        self.writes: list[tuple[float, dict[str, int]]] = []
        self.calls: list[str] = []
        self.backend = mocker.create_autospec(Backend, instance=True)
        self.backend.record_heartbeats.side_effect = self._record
        self.backend.mark_offline.side_effect = self._offline

    def _record(self, beats: Any) -> list[str]:
        with self.lock:
            self.writes.append((monotonic_s(), {b.agent_id: b.at_ms for b in beats}))
            self.calls.append("record")
        return []

    def _offline(self, ids: Any) -> None:
        with self.lock:
            self.calls.append("offline:" + ",".join(ids))

    def written(self) -> list[dict[str, int]]:
        with self.lock:
            return [w for _, w in self.writes]


@pytest.fixture
def recorded(mocker: MockerFixture) -> Recorded:
    return Recorded(mocker)


@pytest.fixture
def writer(
    recorded: Recorded, scheduler: Scheduler, board: StatusBoard
) -> Iterator[pykka.ActorRef[HeartbeatWriter]]:
    ref = HeartbeatWriter.start(
        supervisor=None, backend=recorded.backend, scheduler=scheduler, status_board=board
    )
    yield ref
    ref.stop()


def test_first_beat_is_written_at_once_later_ones_batched(
    writer: Any, recorded: Recorded, board: StatusBoard
) -> None:
    started = monotonic_s()
    writer.tell(Heartbeat(agent_id="a", at_ms=1))
    wait_for(recorded.written, what="the first write")
    assert recorded.writes[0][0] - started < MIN_FLUSH_SPACING_S
    for at_ms in range(2, 50):  # many beats from a and b, coalesced to the latest each
        writer.tell(Heartbeat(agent_id="a", at_ms=at_ms))
        writer.tell(Heartbeat(agent_id="b", at_ms=at_ms))
    wait_for(lambda: len(recorded.written()) >= 2, what="the batched write")
    assert recorded.written()[1] == {"a": 49, "b": 49}
    assert recorded.writes[1][0] - recorded.writes[0][0] >= MIN_FLUSH_SPACING_S
    status = board.get("heartbeats")
    assert isinstance(status, HeartbeatStatus)
    assert status.last_written_at == {"a": 49, "b": 49}


def test_writes_are_spaced_and_a_beat_waits_at_most_the_flush_interval(
    writer: Any, recorded: Recorded
) -> None:
    writer.tell(Heartbeat(agent_id="a", at_ms=0))
    wait_for(recorded.written, what="first write")
    deadline = monotonic_s() + 2.5
    at_ms = 1
    while monotonic_s() < deadline:  # a steady stream of beats from one known agent
        writer.ask(Heartbeat(agent_id="a", at_ms=at_ms))
        at_ms += 1
    wait_for(lambda: recorded.written()[-1]["a"] == at_ms - 1, what="the last beat written")
    times = [t for t, _ in recorded.writes]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= MIN_FLUSH_SPACING_S - 0.01
    assert max(gaps) <= FLUSH_INTERVAL_S + 0.15


def test_failed_write_keeps_the_beats_and_retries(
    writer: Any, recorded: Recorded, board: StatusBoard
) -> None:
    recorded.backend.record_heartbeats.side_effect = [BackendError("backend down"), []]
    writer.tell(Heartbeat(agent_id="a", at_ms=7))
    wait_for(lambda: recorded.backend.record_heartbeats.call_count == 1, what="failed write")
    status = board.get("heartbeats")
    assert isinstance(status, HeartbeatStatus)
    assert status.last_error is not None
    assert "backend down" in status.last_error
    wait_for(lambda: recorded.backend.record_heartbeats.call_count == 2, what="the retry")
    (beats,) = recorded.backend.record_heartbeats.call_args.args
    assert [(b.agent_id, b.at_ms) for b in beats] == [("a", 7)]
    wait_for(
        lambda: board.get("heartbeats").last_error is None,  # type: ignore[union-attr]
        what="error cleared",
    )


def test_agents_stopped_flushes_then_marks_offline(writer: Any, recorded: Recorded) -> None:
    writer.tell(Heartbeat(agent_id="a", at_ms=1))
    wait_for(recorded.written, what="first write")
    writer.tell(Heartbeat(agent_id="a", at_ms=2))
    writer.ask(AgentsStopped(agent_ids=("a",), offline=("a",)))
    assert recorded.calls == ["record", "record", "offline:a"]
    assert recorded.written()[-1] == {"a": 2}


def test_stop_flushes_what_is_pending(writer: Any, recorded: Recorded) -> None:
    writer.tell(Heartbeat(agent_id="a", at_ms=1))
    wait_for(recorded.written, what="the first write")
    writer.tell(Heartbeat(agent_id="a", at_ms=2))  # pending: the next flush is 0.5 s away
    writer.stop()
    assert recorded.written()[-1] == {"a": 2}


def test_error_clears_once_offline_marks_succeed_even_without_beats(
    writer: Any, recorded: Recorded, board: StatusBoard
) -> None:
    recorded.backend.mark_offline.side_effect = [BackendError("backend down"), []]
    writer.ask(AgentsStopped(agent_ids=("gone",), offline=("gone",)))
    status = board.get("heartbeats")
    assert isinstance(status, HeartbeatStatus)
    assert status.last_error is not None
    assert "offline failed" in status.last_error
    wait_for(lambda: recorded.backend.mark_offline.call_count == 2, what="the offline retry")
    wait_for(
        lambda: board.get("heartbeats").last_error is None,  # type: ignore[union-attr]
        what="error cleared",
    )


def test_stopped_agent_whose_last_beat_failed_is_never_written_online_again(
    writer: Any, recorded: Recorded
) -> None:
    writer.tell(Heartbeat(agent_id="a", at_ms=1))
    wait_for(recorded.written, what="first write")
    recorded.backend.record_heartbeats.side_effect = BackendError("backend down")
    writer.tell(Heartbeat(agent_id="a", at_ms=2))
    writer.tell(Heartbeat(agent_id="b", at_ms=2))
    writer.ask(AgentsStopped(agent_ids=("a",), offline=("a",)))
    recorded.backend.record_heartbeats.side_effect = recorded._record
    calls = recorded.backend.record_heartbeats.call_count
    wait_for(lambda: recorded.backend.record_heartbeats.call_count > calls, what="the retry")
    writer.stop()
    assert recorded.written()[-1] == {"b": 2}
    assert all("a" not in w for w in recorded.written()[1:])


def test_a_beat_from_an_agent_marked_offline_while_it_stops_is_dropped(
    writer: pykka.ActorRef[HeartbeatWriter], recorded: Recorded
) -> None:
    writer.ask(AgentsStopped(agent_ids=("a",), offline=("a",)))  # marked before it stopped
    writer.tell(Heartbeat(agent_id="a", at_ms=7))  # its actor beat once more meanwhile
    writer.tell(Heartbeat(agent_id="b", at_ms=7))
    writer.stop()
    assert recorded.calls == ["offline:a", "record"]
    assert recorded.written() == [{"b": 7}]


def test_moved_agents_are_forgotten_without_offline_marks(
    writer: pykka.ActorRef[HeartbeatWriter], recorded: Recorded
) -> None:
    writer.tell(Heartbeat(agent_id="moved", at_ms=5))
    writer.ask(AgentsStopped(agent_ids=("moved",), offline=()))
    writer.stop()  # flushes: nothing left to write
    assert recorded.calls == ["record"]
    assert recorded.written() == [{"moved": 5}]


def test_refused_beats_are_reported_and_dropped(
    writer: pykka.ActorRef[HeartbeatWriter], recorded: Recorded, board: StatusBoard
) -> None:
    recorded.backend.record_heartbeats.side_effect = lambda beats: [b.agent_id for b in beats]
    writer.tell(Heartbeat(agent_id="ahead", at_ms=10**13))

    def reported() -> bool:
        status = board.get("heartbeats")
        return isinstance(status, HeartbeatStatus) and "clock" in (status.last_error or "")

    wait_for(reported, what="the refusal in the status")
    status = board.get("heartbeats")
    assert isinstance(status, HeartbeatStatus)
    assert status.pending == 0  # not retried: the same clock would be refused again
    assert "ahead" not in status.last_written_at


def test_a_short_interval_beat_waits_at_most_half_its_interval(
    writer: pykka.ActorRef[HeartbeatWriter], recorded: Recorded
) -> None:
    writer.tell(Heartbeat(agent_id="a", at_ms=1, interval_ms=600))
    wait_for(lambda: len(recorded.written()) == 1, what="the first beat, at once")
    writer.ask(Heartbeat(agent_id="a", at_ms=2, interval_ms=600))
    told_s = monotonic_s()
    wait_for(lambda: len(recorded.written()) == 2, what="the second beat")
    with recorded.lock:
        written_s = recorded.writes[1][0]
    # Without the interval: FLUSH_INTERVAL_S (1 s) later; with it: 0.3 s (at least the
    # 0.5 s spacing after the first write).
    assert written_s - told_s < FLUSH_INTERVAL_S - 0.2


def test_the_status_counts_agents_online_until_three_intervals_pass(
    writer: pykka.ActorRef[HeartbeatWriter], board: StatusBoard
) -> None:
    def online() -> int:
        status = board.get("heartbeats")
        return status.online if isinstance(status, HeartbeatStatus) else -1

    writer.tell(Heartbeat(agent_id="quick", at_ms=now_ms(), interval_ms=100))
    writer.tell(Heartbeat(agent_id="slow", at_ms=now_ms(), interval_ms=60_000))
    wait_for(lambda: online() == 2, what="both online")
    # No more beats: "quick" expires after 0.3 s and the next status says so, with no write.
    wait_for(lambda: online() == 1, timeout_s=3, what="the quick one offline")
