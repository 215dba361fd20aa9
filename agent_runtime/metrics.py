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
JOB_DURATION = Histogram(
    "agent_runtime_job_duration_seconds",
    "Duration of one job run, by outcome (done, retry, failed, dead, abandoned)",
    labelnames=("outcome",),
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
JOBS_CLAIMED = Counter("agent_runtime_jobs_claimed", "Jobs this worker claimed")
MODEL_LATENCY = Histogram(
    "agent_runtime_model_latency_seconds",
    "Duration of one model call (retries inside the provider included)",
    buckets=(0.001, 0.01, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
MODEL_TOKENS = Counter(
    "agent_runtime_model_tokens",
    "Model tokens used, by direction (input, output)",
    labelnames=("direction",),
)
TOOL_CALLS = Counter(
    "agent_runtime_tool_calls",
    "Tool calls a model asked for, by tool (unknown for unregistered names) and ok",
    labelnames=("tool", "ok"),
)
