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
    whatsapp_sender: bool
    """The LeaseActor of WHATSAPP_ACCOUNT_ID and, while it holds the lease, the sender."""
    whatsapp_ingress: bool
    """The webhook at /webhooks/whatsapp (not lease-gated: any number of workers)."""
    summary: str
    """One line for `doctor` and the docs."""


ROLES: dict[Role, RoleSpec] = {
    "core": RoleSpec(
        agents=True,
        whatsapp_sender=False,
        whatsapp_ingress=False,
        summary="agents: membership, sync, heartbeats",
    ),
    "all": RoleSpec(
        agents=True,
        whatsapp_sender=True,
        whatsapp_ingress=True,
        summary="core and whatsapp in one process (development; ENABLE_WHATSAPP=false: core)",
    ),
    "whatsapp": RoleSpec(
        agents=False,
        whatsapp_sender=True,
        whatsapp_ingress=True,
        summary="the WhatsApp lease, sender and webhook of WHATSAPP_ACCOUNT_ID",
    ),
    "whatsapp-ingress": RoleSpec(
        agents=False,
        whatsapp_sender=False,
        whatsapp_ingress=True,
        summary="the WhatsApp webhook only",
    ),
    "whatsapp-egress": RoleSpec(
        agents=False,
        whatsapp_sender=True,
        whatsapp_ingress=False,
        summary="the WhatsApp lease and sender only",
    ),
}
