"""Agent records are validated row by row at the backend boundary."""

import pytest

from messages import AgentRecord, parse_agent_rows
from messages.agent import MAX_HEARTBEAT_INTERVAL_MS
from tests.conftest import agent_row


def test_valid_row_becomes_a_record_with_camel_case_on_the_wire() -> None:
    listed = parse_agent_rows([agent_row()])
    assert listed.rejected == ()
    (record,) = listed.agents
    assert record.heartbeat_interval_ms == 5000
    assert record.model_dump(by_alias=True) == agent_row()


def test_integral_float_from_a_json_backend_is_accepted() -> None:
    (record,) = parse_agent_rows([agent_row(heartbeatIntervalMs=5000.0)]).agents
    assert record.heartbeat_interval_ms == 5000
    assert isinstance(record.heartbeat_interval_ms, int)


@pytest.mark.parametrize(
    ("overrides", "expected_problem"),
    [
        ({"heartbeatIntervalMs": "5000"}, "heartbeatIntervalMs: expected a whole number"),
        ({"heartbeatIntervalMs": "abc"}, "heartbeatIntervalMs: expected a whole number"),
        ({"heartbeatIntervalMs": 0}, "heartbeatIntervalMs: input should be greater than 0"),
        ({"heartbeatIntervalMs": -5}, "heartbeatIntervalMs: input should be greater than 0"),
        ({"heartbeatIntervalMs": MAX_HEARTBEAT_INTERVAL_MS + 1}, "less than or equal to"),
        ({"heartbeatIntervalMs": 2.5}, "expected a whole number, got 2.5"),
        ({"heartbeatIntervalMs": True}, "expected a whole number, got True"),
        ({"name": 7}, "name: input should be a valid string"),
        ({"sessionKey": None}, "sessionKey: input should be a valid string"),
        ({"status": "sleepy"}, "status: input should be 'online' or 'offline'"),
    ],
)
def test_bad_row_is_rejected_by_id_with_the_problem(
    overrides: dict[str, object], expected_problem: str
) -> None:
    listed = parse_agent_rows([agent_row(id="bad", **overrides), agent_row(id="good")])
    assert [a.id for a in listed.agents] == ["good"]
    (rejected,) = listed.rejected
    assert rejected.label == "bad"
    assert rejected.agent_id == "bad"
    assert expected_problem in rejected.problem


def test_row_without_id_is_named_by_its_name_or_position() -> None:
    missing_id = agent_row()
    del missing_id["id"]
    listed = parse_agent_rows([missing_id, "not a record", agent_row(id="")])
    assert listed.agents == ()
    labels = [r.label for r in listed.rejected]
    assert labels == ["name='scout'", "row #1", "name='scout'"]
    assert listed.rejected[0].problem == "id: missing"
    assert all(r.agent_id is None for r in listed.rejected)


def test_same_config_ignores_presence_only() -> None:
    (a,) = parse_agent_rows([agent_row()]).agents
    assert a.same_config(a.model_copy(update={"status": "offline", "last_heartbeat_at": 1}))
    assert not a.same_config(a.model_copy(update={"heartbeat_interval_ms": 1000}))
    assert not a.same_config(a.model_copy(update={"session_key": "other"}))
    assert not a.same_config(a.model_copy(update={"name": "other"}))


def test_records_are_frozen() -> None:
    (a,) = parse_agent_rows([agent_row()]).agents
    with pytest.raises(ValueError, match="frozen"):
        a.name = "changed"  # type: ignore[misc]
    assert isinstance(a, AgentRecord)
