"""SyncActor: keeps the running AgentActors equal to the agents this worker owns.

Of the backend's agent list, this worker runs the agents that rendezvous hashing over the
live workers gives it (`actors.agents.ownership`), and none while it is not registered
(`RegistrationChanged` from the Membership actor). An agent that moves to another worker
is stopped without an offline mark; an agent removed from the backend is marked offline.

One sync at start, then every AGENT_SYNC_INTERVAL and whenever agents change: the
backend's change signal is polled every CHANGE_POLL_INTERVAL_S, unless the backend pushes
changes (a Convex subscription, forwarded as RequestSync); while such a feed is down
(`FeedStatus`), the signal is polled every AGENT_FALLBACK_POLL_MS instead. Requests are
coalesced and syncs never overlap (they run in this actor's thread). The SyncActor
supervises its agents: a crashed AgentActor is restarted with backoff, forever.
"""

import contextlib
import logging
import random
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

import pykka

from actors.agents.agent import AgentActor
from actors.agents.heartbeat_writer import HeartbeatWriter
from actors.agents.ownership import Owners
from actors.dispatcher import Dispatcher
from actors.jobs.runner import AgentJobs
from actors.scheduler import Scheduler, Timers
from actors.supervision import SupervisedActor
from agent_runtime import metrics
from agent_runtime.backoff import DEFAULT_BACKOFF, Backoff
from agent_runtime.clock import monotonic_s, now_ms
from agent_runtime.errors import BackendError
from agent_runtime.status import StatusBoard
from backend.port import Backend
from messages import (
    AgentList,
    AgentRecord,
    AgentRejection,
    AgentsStopped,
    ChildFailed,
    FeedStatus,
    GetRunningAgents,
    RegistrationChanged,
    RequestSync,
    RunningAgent,
    RunSync,
    SyncStatus,
    TimerFired,
    UpdateAgent,
)
from messages.agent import CONFIG_FIELDS, parse_agent_row

logger = logging.getLogger(__name__)

CHANGE_POLL_INTERVAL_S = 0.25
"""How often the cheap change signal is read; an agent change is seen within this."""

ADDED_AGENT_MAX_JITTER_S = 2.0
"""An agent created after start-up beats first after 0 to this many seconds."""

TAKEOVER_MAX_JITTER_S = 0.5
"""An agent taken over from another worker beats first after 0 to this many seconds: it
was online a moment ago, and must not look stale."""

STARTUP_STAGGER_FRACTION = 0.4
STARTUP_STAGGER_MAX_S = 120.0
"""At start-up, first beats spread over min(0.4 x interval, 120 s), so N agents do not
all beat in the same instant."""

STOP_TIMEOUT_S = 2.0
"""How long removing agents waits for their actors to stop."""

SYNC_RETRY_BACKOFF = Backoff(min_s=1.0, max_s=30.0)
"""After a failed sync, the next one comes after this backoff (never later than the timed
sync), not at every change-signal poll."""

SYNC_TIMER = "sync"
SYNC_RETRY_TIMER = "sync-retry"
CHANGE_POLL_TIMER = "change-poll"
RESTART_TIMER_PREFIX = "restart:"
STATUS_NAME = "agentSync"


@dataclass(frozen=True)
class SyncPlan:
    """What a sync must do to make the running agents match the listed ones."""

    added: tuple[AgentRecord, ...]
    removed: tuple[str, ...]
    updated: tuple[AgentRecord, ...]

    @property
    def changed(self) -> bool:
        """True when the sync has anything to apply."""
        return bool(self.added or self.removed or self.updated)


def plan_sync(
    running: Mapping[str, AgentRecord],
    listed: Sequence[AgentRecord],
    keep: Set[str] = frozenset(),
) -> SyncPlan:
    """Diff the running agents against the backend's list.

    Presence fields (status, lastHeartbeatAt) never count as a change. Ids in `keep`
    (listed, but rejected as invalid this time) are neither removed nor updated: the
    agent keeps running on its last valid record.
    """
    listed_by_id = {record.id: record for record in listed}
    added = tuple(r for agent_id, r in listed_by_id.items() if agent_id not in running)
    removed = tuple(
        agent_id for agent_id in running if agent_id not in listed_by_id and agent_id not in keep
    )
    updated = tuple(
        r
        for agent_id, r in listed_by_id.items()
        if agent_id in running
        and running[agent_id] is not r  # the same validated record: unchanged for sure
        and not running[agent_id].same_config(r)
    )
    return SyncPlan(added=added, removed=removed, updated=updated)


_ROW_CONFIG_FIELDS = tuple(sorted(str(AgentRecord.model_fields[f].alias) for f in CONFIG_FIELDS))


def _row_key(row: Any) -> tuple[Any, ...] | None:
    """A row's raw configuration, hashable, or None if the row cannot be keyed."""
    if not isinstance(row, Mapping):
        return None
    key = tuple(row.get(f) for f in _ROW_CONFIG_FIELDS)
    # 5000 == 5000.0 == True-ish values hash alike; the type keeps "5000" and True apart.
    key += (type(row.get("heartbeatIntervalMs")),)
    try:
        hash(key)
    except TypeError:
        return None
    return key


class RecordCache:
    """Validated records by raw row configuration, as of the last sync.

    At 10,000 agents, pydantic-validating every row dominates a sync in which nothing
    changed; a row whose configuration is exactly as last time reuses last time's record.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[Any, ...], AgentRecord] = {}

    def parse(self, rows: Sequence[Any]) -> AgentList:
        """As `parse_agent_rows(rows)`, but validating only rows not seen last time."""
        cached: dict[tuple[Any, ...], AgentRecord] = {}
        agents: list[AgentRecord] = []
        rejected: list[AgentRejection] = []
        for position, row in enumerate(rows):
            key = _row_key(row)
            known = self._records.get(key) if key is not None else None
            result = known if known is not None else parse_agent_row(row, position)
            if isinstance(result, AgentRejection):
                rejected.append(result)
                continue
            if key is not None:
                cached[key] = result
            agents.append(result)
        self._records = cached
        return AgentList(agents=tuple(agents), rejected=tuple(rejected))


class _Agent:
    """The SyncActor's private bookkeeping for one agent (its thread only)."""

    __slots__ = ("attempt", "record", "ref", "restarts", "started_s", "view")

    def __init__(self, record: AgentRecord) -> None:
        self.record = record
        self.ref: pykka.ActorRef[Any] | None = None
        self.restarts = 0
        self.attempt = 0
        self.started_s = 0.0
        self.view = RunningAgent(record=record, restarts=0, restarting=False)

    def refresh_view(self) -> None:
        self.view = RunningAgent(
            record=self.record, restarts=self.restarts, restarting=self.ref is None
        )


class SyncActor(SupervisedActor):
    """Lists agents, diffs, and starts, updates and stops AgentActors to match."""

    def __init__(
        self,
        *,
        supervisor: pykka.ActorRef[Any] | None,
        backend: Backend,
        scheduler: Scheduler,
        dispatcher: Dispatcher,
        heartbeat_writer: pykka.ActorRef[HeartbeatWriter],
        status_board: StatusBoard,
        worker_id: str,
        sync_interval_s: float,
        feed: bool = False,
        fallback_poll_s: float = CHANGE_POLL_INTERVAL_S,
        backoff: Backoff = DEFAULT_BACKOFF,
        jobs: AgentJobs | None = None,
    ) -> None:
        super().__init__(supervisor=supervisor, child_id="sync")
        self._jobs = jobs
        self._backend = backend
        self._scheduler = scheduler
        self._dispatcher = dispatcher
        self._writer = heartbeat_writer
        self._board = status_board
        self._worker_id = worker_id
        self._sync_interval_s = sync_interval_s
        self._feed = feed
        self._feed_state: str = "down"
        self._feed_error: str | None = None
        self._fallback_poll_s = fallback_poll_s
        self._poll_s: float | None = None
        self._signal_failed = False
        self._backoff = backoff
        self.timers = Timers(scheduler, self.actor_ref)
        self._agents: dict[str, _Agent] = {}
        self._rejections: dict[str, str] = {}
        self._records = RecordCache()
        self._owners = Owners()
        self._registered = False
        self._live: tuple[str, ...] = ()
        self._listed_ids: set[str] = set()
        self._sync_queued = False
        self._first_sync_done = False
        self._seen_version: str | None = None
        self._last_sync_at: int | None = None
        self._last_error: str | None = None
        self._failed_syncs = 0
        self._counts = {"added": 0, "removed": 0, "updated": 0}

    def started(self) -> None:
        self.timers.start_periodic(SYNC_TIMER, self._sync_interval_s)
        # A feed starts down: poll at the fallback interval until it is subscribed.
        self._poll_every(self._fallback_poll_s if self._feed else CHANGE_POLL_INTERVAL_S)
        self._publish()
        self._request("start")

    def _poll_every(self, interval_s: float | None) -> None:
        """Poll the change signal every `interval_s`, or not at all (None)."""
        if interval_s == self._poll_s:
            return
        self._poll_s = interval_s
        if interval_s is None:
            self.timers.cancel(CHANGE_POLL_TIMER)
        else:
            self.timers.start_periodic(CHANGE_POLL_TIMER, interval_s)

    def _feed_changed(self, status: FeedStatus) -> None:
        if status.state != self._feed_state:
            logger.info(
                "change feed %s%s",
                status.state,
                f"; polling every {self._fallback_poll_s:.1f} s meanwhile"
                if status.state == "down"
                else "; polling stopped",
            )
        went_down = status.state == "down" and self._feed_state == "subscribed"
        self._feed_state, self._feed_error = status.state, status.last_error
        self._poll_every(None if status.state == "subscribed" else self._fallback_poll_s)
        if went_down:  # a change may have been missed: catch up now, then poll
            self._request("feed down")
        self._publish()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TimerFired):
            if self.timers.accept(message):
                self._on_timer(message)
        elif isinstance(message, RequestSync):
            self._request(message.reason)
        elif isinstance(message, RunSync):
            self._sync_queued = False
            self._sync()
        elif isinstance(message, FeedStatus):
            self._feed_changed(message)
        elif isinstance(message, RegistrationChanged):
            self._registered = message.registered
            self._request("registered" if message.registered else "unregistered")
        elif isinstance(message, ChildFailed):
            self._agent_failed(message)
        elif isinstance(message, GetRunningAgents):
            return tuple(a.record.id for a in self._agents.values() if a.ref is not None)
        else:
            super().on_receive(message)
        return None

    def _on_timer(self, tick: TimerFired) -> None:
        key = tick.key
        if key == SYNC_TIMER:
            self._request("interval")
        elif key == SYNC_RETRY_TIMER:
            self._request("retry")
        elif key == CHANGE_POLL_TIMER:
            # Ticks queue up while a slow backend call blocks this actor; only a fresh
            # one is worth a backend read.
            if self._poll_s is not None and monotonic_s() - tick.due_s <= self._poll_s:
                self._poll_change_signal()
        elif key.startswith(RESTART_TIMER_PREFIX):
            self._restart(key.removeprefix(RESTART_TIMER_PREFIX))

    def _request(self, reason: str) -> None:
        if self._sync_queued:
            return  # one queued sync will see this change too
        self._sync_queued = True
        logger.debug("sync requested: %s", reason)
        self.actor_ref.tell(RunSync())

    def _poll_change_signal(self) -> None:
        version = self._read_change_signal()
        if version is not None and version != self._seen_version:
            self._request("change")

    def _read_change_signal(self) -> str | None:
        # The signal only makes syncs prompt; the timed sync works without it.
        try:
            version = self._backend.agents_version()
        except BackendError as error:
            logger.debug("change signal unavailable: %s", error)
            self._set_signal_failed(True)
            return None
        self._set_signal_failed(False)
        return version

    def _set_signal_failed(self, failed: bool) -> None:
        if failed != self._signal_failed:
            self._signal_failed = failed
            self._publish()

    # --- the sync itself ----------------------------------------------------------

    def _sync(self) -> None:
        started_s = monotonic_s()
        if not self._registered:
            # Another process may hold this worker's id: run nothing, mark nothing.
            self._apply(plan_sync(self._running(), ()), listed_ids=set(self._agents))
            self._publish()
            return
        # Read before listing, so a change made during the list is seen; only polling
        # needs it (a backend that pushes changes sends RequestSync instead).
        version = self._read_change_signal() if self._poll_s is not None else None
        try:
            rows, workers = self._backend.agents_and_workers()
        except BackendError as error:
            self._sync_failed(version, error)
            return
        live = tuple(sorted({*workers, self._worker_id}))
        listed = self._records.parse(rows)
        self._log_rejections(listed.rejected)
        listed_ids = {r.id for r in listed.agents} | {
            r.agent_id for r in listed.rejected if r.agent_id is not None
        }
        owned = self._owners.owned_by(self._worker_id, listed_ids, live)
        keep = {r.agent_id for r in listed.rejected if r.agent_id in owned}
        plan = plan_sync(self._running(), [r for r in listed.agents if r.id in owned], keep)
        if live != self._live:
            logger.info(
                "owning %d of %d agents over %d live worker(s)",
                len(owned),
                len(listed_ids),
                len(live),
            )
        self._live = live
        self._apply(plan, listed_ids)
        self._seen_version = version
        self._failed_syncs = 0
        self.timers.cancel(SYNC_RETRY_TIMER)
        self._first_sync_done = True
        self._last_sync_at = now_ms()
        self._last_error = None
        duration_s = monotonic_s() - started_s
        metrics.SYNC_DURATION.observe(duration_s)
        if plan.changed:
            logger.info(
                "agent sync: %d added, %d removed, %d updated (%d running, %.0f ms)",
                len(plan.added),
                len(plan.removed),
                len(plan.updated),
                len(self._agents),
                duration_s * 1000,
            )
        self._publish()

    def _sync_failed(self, version: str | None, error: BackendError) -> None:
        metrics.SYNC_FAILURES.inc()
        self._last_error = str(error)
        if version is not None:
            self._seen_version = version  # the retry below covers it; do not re-sync per poll
        delay_s = min(SYNC_RETRY_BACKOFF.delay_s(self._failed_syncs), self._sync_interval_s)
        self._failed_syncs += 1
        self.timers.start_single(SYNC_RETRY_TIMER, delay_s)
        logger.error("agent sync failed, retrying in %.1f s: %s", delay_s, error)
        self._publish()

    def _running(self) -> dict[str, AgentRecord]:
        return {agent_id: agent.record for agent_id, agent in self._agents.items()}

    def _apply(self, plan: SyncPlan, listed_ids: Set[str]) -> None:
        # Still listed: moved to another worker, which beats for it from now on.
        self._stop_agents(plan.removed, offline=[a for a in plan.removed if a not in listed_ids])
        for agent_id in plan.removed:
            self.timers.cancel(RESTART_TIMER_PREFIX + agent_id)
            del self._agents[agent_id]
        for record in plan.updated:
            agent = self._agents[record.id]
            agent.record = record
            agent.refresh_view()
            if agent.ref is not None:  # a crashed agent restarts on the new record
                # If it crashed just now, its ChildFailed is on the way.
                with contextlib.suppress(pykka.ActorDeadError):
                    agent.ref.tell(UpdateAgent(record=record))
        sync_started_s = monotonic_s()
        for record in plan.added:
            agent = _Agent(record)
            self._agents[record.id] = agent
            first_delay_s = self._first_delay_s(record, taken_over=record.id in self._listed_ids)
            self._spawn(agent, first_delay_s - (monotonic_s() - sync_started_s))
        self._listed_ids = set(listed_ids)
        self._counts["added"] += len(plan.added)
        self._counts["removed"] += len(plan.removed)
        self._counts["updated"] += len(plan.updated)
        metrics.AGENTS_RUNNING.set(len(self._agents))

    def _first_delay_s(self, record: AgentRecord, *, taken_over: bool) -> float:
        if taken_over:
            return random.uniform(0, TAKEOVER_MAX_JITTER_S)
        if self._first_sync_done:
            return random.uniform(0, ADDED_AGENT_MAX_JITTER_S)
        stagger_s = min(
            STARTUP_STAGGER_FRACTION * record.heartbeat_interval_ms / 1000, STARTUP_STAGGER_MAX_S
        )
        return random.uniform(0, stagger_s)

    def _spawn(self, agent: _Agent, first_heartbeat_delay_s: float) -> None:
        agent.started_s = monotonic_s()
        agent.ref = AgentActor.start(
            agent.record,
            supervisor=self.actor_ref,
            dispatcher=self._dispatcher,
            scheduler=self._scheduler,
            heartbeat_writer=self._writer,
            first_heartbeat_delay_s=max(0.0, first_heartbeat_delay_s),
            jobs=self._jobs,
        )

    def _stop_agents(self, agent_ids: Sequence[str], offline: Sequence[str]) -> None:
        """Stop these agents' actors, then have the writer forget them, marking the
        `offline` ones offline (the others are, or will be, run by another worker)."""
        if agent_ids:
            self._stop_actors(agent_ids)
            self._tell_writer(AgentsStopped(agent_ids=tuple(agent_ids), offline=tuple(offline)))

    def _stop_actors(self, agent_ids: Sequence[str]) -> None:
        agents = [self._agents[a] for a in agent_ids if a in self._agents]
        futures = [a.ref.stop(block=False) for a in agents if a.ref is not None]
        try:
            pykka.get_all(futures, timeout=STOP_TIMEOUT_S)
        except pykka.Timeout:
            logger.warning(
                "some of %d agent(s) did not stop within %.0f s", len(futures), STOP_TIMEOUT_S
            )
        for agent in agents:
            agent.ref = None

    def _tell_writer(self, message: AgentsStopped) -> None:
        try:
            self._writer.tell(message)
        except pykka.ActorDeadError:
            logger.warning(
                "heartbeat writer is gone; %d agent(s) not marked offline", len(message.offline)
            )

    def _log_rejections(self, rejected: Sequence[AgentRejection]) -> None:
        current = {r.label: r.problem for r in rejected}
        for label, problem in current.items():
            if self._rejections.get(label) != problem:
                logger.warning("skipping invalid agent %s: %s", label, problem)
        self._rejections = current

    # --- supervision of agents ------------------------------------------------------

    def _agent_failed(self, failure: ChildFailed) -> None:
        agent = self._agents.get(failure.child_id)
        if agent is None or agent.ref is None:
            return  # removed meanwhile, or already handled
        agent.ref = None
        agent.refresh_view()
        now_s = monotonic_s()
        if now_s - agent.started_s >= self._backoff.reset_after_s:
            agent.attempt = 0
        delay_s = self._backoff.delay_s(agent.attempt)
        agent.attempt += 1
        logger.warning(
            "agent %s (%s) crashed: %s; restart #%d in %.2f s",
            agent.record.id,
            agent.record.name,
            failure.error,
            agent.restarts + 1,
            delay_s,
        )
        self.timers.start_single(RESTART_TIMER_PREFIX + agent.record.id, delay_s)
        self._publish()

    def _restart(self, agent_id: str) -> None:
        agent = self._agents.get(agent_id)
        if agent is None or agent.ref is not None:
            return
        agent.restarts += 1
        self._board.count_restart("agent")
        self._spawn(agent, first_heartbeat_delay_s=0.0)
        agent.refresh_view()
        self._publish()

    # --- status and shutdown -----------------------------------------------------------

    def _publish(self) -> None:
        self._board.publish(
            STATUS_NAME,
            SyncStatus(
                running=True,
                last_sync_at=self._last_sync_at,
                last_error=self._last_error,
                added_count=self._counts["added"],
                removed_count=self._counts["removed"],
                updated_count=self._counts["updated"],
                worker_id=self._worker_id,
                registered=self._registered,
                live_workers=self._live,
                restarting=sum(1 for agent in self._agents.values() if agent.ref is None),
                agents=tuple(agent.view for agent in self._agents.values()),
                feed=self._feed_view(),
                feed_error=self._feed_error,
            ),
        )

    def _feed_view(self) -> str:
        """`subscribed` (changes pushed), `polling` (the signal is read, and answered) or
        `down` (no feed, and the last read failed)."""
        if self._feed and self._feed_state == "subscribed":
            return "subscribed"
        return "down" if self._signal_failed else "polling"

    def cleanup(self, crashed: bool) -> None:
        self.timers.cancel_all()
        if crashed:
            # The restarted SyncActor brings them back at once: do not flap them offline.
            for ref in [a.ref for a in self._agents.values() if a.ref is not None]:
                ref.stop(block=False)
        else:
            # The writer first: stopping thousands of actors can outlast the stop deadline,
            # and the offline marks must not wait for it (the writer drops any beat an
            # agent marked offline sends while it stops).
            agent_ids = list(self._agents)
            offline = agent_ids if self._last_worker() else ()
            self._tell_writer(AgentsStopped(agent_ids=tuple(agent_ids), offline=tuple(offline)))
            self._stop_actors(agent_ids)
        self._agents.clear()
        metrics.AGENTS_RUNNING.set(0)
        status = self._board.get(STATUS_NAME)
        if isinstance(status, SyncStatus):
            self._board.publish(
                STATUS_NAME, status.model_copy(update={"running": False, "agents": ()})
            )

    def _last_worker(self) -> bool:
        """At a stop: True when this worker has left the fleet (the Membership
        deregistered) and no other worker is live to take its agents, which must then be
        marked offline."""
        if not self._agents or not self._registered:
            return False
        try:
            live = set(self._backend.list_workers())
        except BackendError as error:
            logger.warning(
                "cannot list workers at stop; %d agent(s) left to expire, not marked offline: %s",
                len(self._agents),
                error,
            )
            return False
        # This worker still listed: a restart of the actors, not a leave.
        return not live
