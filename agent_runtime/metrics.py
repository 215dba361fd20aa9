"""Prometheus metrics, served at /metrics. Names carry their units."""

from prometheus_client import Counter, Gauge, Histogram

AGENTS_RUNNING = Gauge("agent_runtime_agents_running", "AgentActors running in this worker")
HEARTBEATS_WRITTEN = Counter(
    "agent_runtime_heartbeats_written", "Heartbeats the backend accepted (one per agent per beat)"
)
HEARTBEAT_WRITES = Counter(
    "agent_runtime_heartbeat_writes", "Batched heartbeat write calls made to the backend"
)
PRESENCE_WRITE_FAILURES = Counter(
    "agent_runtime_presence_write_failures",
    "Presence writes that failed and will be retried, by backend call",
    labelnames=("call",),
)
HEARTBEAT_LATENESS = Histogram(
    "agent_runtime_heartbeat_lateness_seconds",
    "How late an agent handled its heartbeat tick, after its due time",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
SYNC_DURATION = Histogram(
    "agent_runtime_sync_duration_seconds",
    "Duration of one agent sync (list, diff, apply)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SYNC_FAILURES = Counter("agent_runtime_sync_failures", "Agent syncs that failed")
RESTARTS = Counter(
    "agent_runtime_restarts", "Actor restarts by the supervisor", labelnames=("actor",)
)
WHATSAPP_SENDS = Counter(
    "agent_runtime_whatsapp_sends",
    "WhatsApp send attempts by outcome (sent, retry, permanent, pause)",
    labelnames=("outcome",),
)
WHATSAPP_UNCERTAIN_SENDS = Counter(
    "agent_runtime_whatsapp_uncertain_sends",
    "Sends that Meta may have accepted without the backend recording them (possible duplicates)",
)
