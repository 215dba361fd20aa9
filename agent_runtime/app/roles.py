"""The table of roles: which children each AGENT_ROLE runs. The process wiring, the HTTP
server and `doctor` all read it; nothing else decides what a role does."""

from dataclasses import dataclass
from typing import Literal, get_args

Role = Literal["core", "whatsapp", "all", "whatsapp-ingress", "whatsapp-egress"]
ROLE_NAMES: tuple[Role, ...] = get_args(Role)


@dataclass(frozen=True)
class RoleSpec:
    """What one role runs."""

    agents: bool
    """Worker membership, the SyncActor with its AgentActors, and the HeartbeatWriter."""
    summary: str
    """One line for `doctor` and the docs."""


ROLES: dict[Role, RoleSpec] = {
    "core": RoleSpec(agents=True, summary="agents: membership, sync, heartbeats"),
    "all": RoleSpec(agents=True, summary="core and whatsapp in one process (development)"),
    "whatsapp": RoleSpec(agents=False, summary="only the HTTP server so far"),
    "whatsapp-ingress": RoleSpec(agents=False, summary="only the HTTP server so far"),
    "whatsapp-egress": RoleSpec(agents=False, summary="only the HTTP server so far"),
}
