"""The embedded backend's logic behind Convex-shaped service functions.

`LocalService.call(kind, path, args)` behaves as the reference functions in `convex/`
do (same paths, same `serviceKey` check, same error codes, the same pages and batch
maxima), on a real `LocalBackend`; the calls that read or write many documents charge
them to the fake deployment's limits (`tests.fake_convex.charge`).
It runs the contract vectors on the Python side and sits behind the fake Convex
deployment (`tests/fake_convex.py`) in end-to-end tests.
"""

import hmac
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from agent_runtime.errors import (
    AgentNotFound,
    Fenced,
    InvalidArgument,
    JobNotFound,
    MessageNotFound,
    WorkerIdTaken,
)
from backend.local import LocalBackend
from messages import AgentRecord, Heartbeat
from messages.agent import describe_validation_error
from tests.convex_jobs_service import jobs_functions
from tests.convex_pages import PAGE_ARGS, page_of
from tests.convex_whatsapp_service import whatsapp_functions
from tests.fake_convex import ServiceError, charge
from tests.service_args import label, string


class LocalService:
    """Dispatches function paths to `backend`, checking `serviceKey` against `secret`
    (a deployment without a secret refuses every call)."""

    def __init__(self, backend: LocalBackend, secret: str | None) -> None:
        self.backend = backend
        self.secret = secret
        self._listed: tuple[str, list[dict[str, Any]]] = ("", [])
        # path -> (kind, implementation, the arguments it takes besides serviceKey)
        self._functions: dict[str, tuple[str, Callable[[dict[str, Any]], Any], set[str]]] = {
            "service/agents:list": ("query", lambda a: page_of(self._agents(), a), PAGE_ARGS),
            "service/agents:version": ("query", lambda a: backend.agents_version(), set()),
            "service/agents:snapshot": ("query", self._snapshot, PAGE_ARGS),
            "service/agents:create": (
                "mutation",
                self._create,
                (_FIELDS - {"agentId"}) | {"idempotencyKey"},
            ),
            "service/agents:update": ("mutation", self._update, _FIELDS),
            "service/agents:remove": ("mutation", self._remove, {"agentId"}),
            "service/presence:list": ("query", self._presence, PAGE_ARGS),
            "service/presence:recordHeartbeats": ("mutation", self._record_heartbeats, {"beats"}),
            "service/presence:markOffline": ("mutation", self._mark_offline, {"agentIds"}),
            "service/workers:heartbeat": (
                "mutation",
                self._worker_heartbeat,
                {"workerId", "instanceId", "ttlMs"},
            ),
            "service/workers:remove": ("mutation", self._worker_remove, {"workerId", "instanceId"}),
            "service/workers:list": ("query", lambda a: backend.list_workers(), set()),
            "service/actions:listAgents": (
                "action",
                lambda a: backend.list_agents_with_presence(),
                set(),
            ),
            "service/actions:updateAgentHeartbeat": (
                "action",
                self._update_heartbeat,
                {"agentId", "atMs"},
            ),
            **whatsapp_functions(backend),
            **jobs_functions(backend),
        }

    def call(self, kind: str, path: str, args: dict[str, Any]) -> Any:
        """Run one service function; raises ServiceError(code, message) on failure."""
        if path not in self._functions or self._functions[path][0] != kind:
            # As Convex: an uncoded error, not a ConvexError.
            raise LookupError(f"Could not find public function for '{path}'")
        key = args.get("serviceKey")
        if (
            not self.secret
            or not isinstance(key, str)
            or not hmac.compare_digest(key.encode(), self.secret.encode())
        ):
            raise ServiceError("UNAUTHORIZED", "missing or wrong service key")
        _kind, function, takes = self._functions[path]
        # A setting given as null at a create is unset, and a null cursor is the first page,
        # as on the reference functions.
        nullable = PAGE_ARGS | (_SETTINGS if path == "service/agents:create" else set())
        _check_arguments(args, takes, nullable)
        try:
            return function(args)
        except (AgentNotFound, MessageNotFound, JobNotFound) as error:
            raise ServiceError("NOT_FOUND", str(error)) from None
        except InvalidArgument as error:
            raise ServiceError("INVALID_ARGUMENT", str(error)) from None
        except Fenced as error:
            raise ServiceError("FENCED", str(error)) from None
        except WorkerIdTaken as error:
            raise ServiceError("CONFLICT", str(error)) from None

    def _create(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_setting_types(args)
        record = self.backend.create_agent(
            args.get("name"),  # type: ignore[arg-type]  # validated by the backend
            args.get("heartbeatIntervalMs"),  # type: ignore[arg-type]
            args.get("sessionKey"),
            label(args, "idempotencyKey") if "idempotencyKey" in args else None,
            instructions=args.get("instructions"),
            model=args.get("model"),
            wakeup_prompt=args.get("wakeupPrompt"),
            wakeup_interval_ms=args.get("wakeupIntervalMs"),
        )
        return _config(record.model_dump(by_alias=True))

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_setting_types(args)
        _check_agent_fields(args)  # before looking the agent up, as the functions do
        record = self.backend.update_agent(
            string(args, "agentId"),
            name=args.get("name"),
            heartbeat_interval_ms=args.get("heartbeatIntervalMs"),
            session_key=args.get("sessionKey"),
            instructions=args.get("instructions"),
            model=args.get("model"),
            wakeup_prompt=args.get("wakeupPrompt"),
            wakeup_interval_ms=args.get("wakeupIntervalMs"),
        )
        return _config(record.model_dump(by_alias=True))

    def _remove(self, args: dict[str, Any]) -> None:
        self.backend.remove_agent(string(args, "agentId"))

    def _agents(self) -> list[dict[str, Any]]:
        """`backend.list_agents()`, read again only when `agents_version()` moved: a list
        read page by page reads it once per page (0.3 s at 20,000 agents)."""
        version = self.backend.agents_version()
        if self._listed[0] != version:
            self._listed = (version, self.backend.list_agents())
        return self._listed[1]

    def _snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        return {**page_of(self._agents(), args), "workers": self.backend.list_workers()}

    def _presence(self, args: dict[str, Any]) -> dict[str, Any]:
        # An agent, then its presence: two documents per row, as the reference function.
        return page_of(self.backend.list_presence(), args, reads_per_row=2)

    def _record_heartbeats(self, args: dict[str, Any]) -> dict[str, list[str]]:
        beats = args.get("beats")
        if not isinstance(beats, list) or len(beats) > MAX_PRESENCE_BATCH:
            raise ServiceError(
                "INVALID_ARGUMENT", f"beats: expected at most {MAX_PRESENCE_BATCH} beats"
            )
        charge(read=len(beats), written=len(beats))
        return {"refused": self.backend.record_heartbeats([_heartbeat(b) for b in beats])}

    def _mark_offline(self, args: dict[str, Any]) -> None:
        ids = args.get("agentIds")
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_PRESENCE_BATCH
            or not all(isinstance(i, str) for i in ids)
        ):
            raise ServiceError(
                "INVALID_ARGUMENT", f"agentIds: expected at most {MAX_PRESENCE_BATCH} strings"
            )
        charge(read=len(ids), written=len(ids))
        self.backend.mark_offline(ids)

    def _update_heartbeat(self, args: dict[str, Any]) -> None:
        beat = _heartbeat({k: args[k] for k in args if k != "serviceKey"})
        if self.backend.record_heartbeats([beat]):
            raise ServiceError("INVALID_ARGUMENT", "atMs: more than 60 s ahead of the clock")

    def _worker_heartbeat(self, args: dict[str, Any]) -> dict[str, Any]:
        worker_id, instance_id = label(args, "workerId"), label(args, "instanceId")
        ttl_ms = args.get("ttlMs")
        if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int | float):
            raise ServiceError("INVALID_ARGUMENT", f"ttlMs: expected a number, got {ttl_ms!r}")
        if ttl_ms != int(ttl_ms) or not MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS:
            raise ServiceError(
                "INVALID_ARGUMENT",
                f"ttlMs: expected a whole number from {MIN_TTL_MS} to {MAX_TTL_MS}, got {ttl_ms}",
            )
        workers = self.backend.register_worker(worker_id, instance_id, int(ttl_ms))
        return {"workers": workers, "expiresAt": self.backend.clock() + int(ttl_ms)}

    def _worker_remove(self, args: dict[str, Any]) -> dict[str, bool]:
        worker_id, instance_id = label(args, "workerId"), label(args, "instanceId")
        return {"removed": self.backend.deregister_worker(worker_id, instance_id)}


_SETTINGS = {"instructions", "model", "wakeupPrompt", "wakeupIntervalMs"}
_FIELDS = {"agentId", "name", "heartbeatIntervalMs", "sessionKey", *_SETTINGS}
_CONFIG = ("id", "name", "sessionKey", "heartbeatIntervalMs", *sorted(_SETTINGS), "updatedAt")
MIN_TTL_MS, MAX_TTL_MS = 1_000, 600_000
MAX_PRESENCE_BATCH = 1000


def _check_arguments(args: dict[str, Any], takes: set[str], nullable: set[str]) -> None:
    unknown = set(args) - takes - {"serviceKey"}
    if unknown:
        raise ServiceError("INVALID_ARGUMENT", f"unknown argument(s): {sorted(unknown)}")
    nulls = [name for name in takes - nullable if name in args and args[name] is None]
    if nulls:
        raise ServiceError("INVALID_ARGUMENT", f"{nulls[0]}: expected a value, got null")


def _check_setting_types(args: dict[str, Any]) -> None:
    """Refuse a setting of the wrong type first: the backend reads any false value as unset,
    the functions only "" for a string setting and 0 for the interval."""
    for name in _SETTINGS - {"wakeupIntervalMs"}:
        if name in args and args[name] is not None:
            string(args, name)
    interval = args.get("wakeupIntervalMs")
    if isinstance(interval, bool) or not isinstance(interval, int | float | None):
        raise ServiceError(
            "INVALID_ARGUMENT", f"wakeupIntervalMs: expected a number, got {interval!r}"
        )


def _check_agent_fields(args: dict[str, Any]) -> None:
    """Each given field alone (an empty setting clears it); the wake-up pair needs the
    agent, so the backend checks it."""
    try:
        AgentRecord(
            id="check",
            name=args.get("name", "check"),
            session_key=args.get("sessionKey", "check"),
            heartbeat_interval_ms=args.get("heartbeatIntervalMs", 1),
            instructions=args.get("instructions") or None,
            model=args.get("model") or None,
            wakeup_prompt=args.get("wakeupPrompt") or "check",
            wakeup_interval_ms=args.get("wakeupIntervalMs") or 1000,
            updated_at=0,
        )
    except ValidationError as error:
        raise ServiceError("INVALID_ARGUMENT", describe_validation_error(error)) from None


def _config(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in _CONFIG}


def _heartbeat(beat: Any) -> Heartbeat:
    if not isinstance(beat, dict) or set(beat) - {"agentId", "atMs"}:
        raise ServiceError("INVALID_ARGUMENT", f"beat: expected {{agentId, atMs}}, got {beat!r}")
    try:
        return Heartbeat(agent_id=beat.get("agentId"), at_ms=beat.get("atMs"))
    except ValidationError as error:
        raise ServiceError("INVALID_ARGUMENT", describe_validation_error(error)) from None
