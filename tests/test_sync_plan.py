"""The diff between running agents and the backend's list."""

from actors.agents.sync import RecordCache, plan_sync
from messages import AgentRecord


def rec(agent_id: str, **changes: object) -> AgentRecord:
    fields: dict[str, object] = {
        "id": agent_id,
        "name": f"agent-{agent_id}",
        "session_key": f"agent:{agent_id}",
        "heartbeat_interval_ms": 5000,
        "updated_at": 1,
    }
    fields.update(changes)
    return AgentRecord(**fields)  # type: ignore[arg-type]


def test_nothing_running_everything_added() -> None:
    plan = plan_sync({}, [rec("a"), rec("b")])
    assert [r.id for r in plan.added] == ["a", "b"]
    assert plan.removed == ()
    assert plan.updated == ()
    assert plan.changed


def test_missing_from_list_is_removed_and_new_is_added() -> None:
    plan = plan_sync({"a": rec("a"), "b": rec("b")}, [rec("b"), rec("c")])
    assert [r.id for r in plan.added] == ["c"]
    assert plan.removed == ("a",)
    assert plan.updated == ()


def test_config_change_is_an_update_presence_change_is_not() -> None:
    running = {"a": rec("a"), "b": rec("b"), "c": rec("c")}
    listed = [
        rec("a", heartbeat_interval_ms=1000),
        rec("b", status="online", last_heartbeat_at=99),
        rec("c", session_key="new-key"),
    ]
    plan = plan_sync(running, listed)
    assert [r.id for r in plan.updated] == ["a", "c"]
    assert plan.updated[0].heartbeat_interval_ms == 1000
    assert plan.added == ()
    assert plan.removed == ()


def test_unchanged_list_plans_nothing() -> None:
    running = {"a": rec("a")}
    plan = plan_sync(running, [rec("a")])
    assert not plan.changed


def test_rejected_ids_are_kept_running() -> None:
    plan = plan_sync({"a": rec("a"), "b": rec("b")}, [rec("b")], keep={"a"})
    assert plan.removed == ()


def raw(agent_id: str, **changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "id": agent_id,
        "name": f"agent-{agent_id}",
        "sessionKey": f"agent:{agent_id}",
        "heartbeatIntervalMs": 5000,
        "updatedAt": 1,
        "status": "offline",
        "lastHeartbeatAt": None,
    }
    fields.update(changes)
    return fields


def test_record_cache_reuses_records_of_unchanged_rows() -> None:
    cache = RecordCache()
    first = cache.parse([raw("a"), raw("b")])
    again = cache.parse([raw("a", status="online", lastHeartbeatAt=5), raw("b", name="new")])
    assert again.agents[0] is first.agents[0]  # presence does not count
    assert again.agents[1] is not first.agents[1]
    assert again.agents[1].name == "new"
    assert not plan_sync({a.id: a for a in first.agents}, again.agents).added


def test_record_cache_still_rejects_bad_rows_and_tells_types_apart() -> None:
    cache = RecordCache()
    cache.parse([raw("a", heartbeatIntervalMs=1)])
    listed = cache.parse([raw("a", heartbeatIntervalMs=True), raw("b", heartbeatIntervalMs=0)])
    assert listed.agents == ()
    assert [r.label for r in listed.rejected] == ["a", "b"]
    assert cache.parse([raw("a", heartbeatIntervalMs="1")]).rejected[0].label == "a"
    assert cache.parse([{"id": ["unhashable"]}]).rejected[0].label == "row #0"
