"""Every error the runtime raises on purpose; each message says what to do."""


class RuntimeErrorBase(Exception):
    """Base of the runtime's own errors."""


class ConfigError(RuntimeErrorBase):
    """A setting is missing or invalid. The message names the variable, the value and
    what is expected, in one line; the process exits with status 2."""


class BackendError(RuntimeErrorBase):
    """A backend call failed (unreachable, refused, or a storage error).

    Callers log it and try again later; nothing is lost by a failed call.
    """


class AgentNotFound(BackendError):
    """An admin command named an agent id the backend does not have."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(
            f"no agent with id {agent_id!r}; `agent-runtime agents list` shows the ids"
        )
        self.agent_id = agent_id


class InvalidAgent(RuntimeErrorBase):
    """An admin command asked for an agent the runtime would reject (bad name or interval)."""
