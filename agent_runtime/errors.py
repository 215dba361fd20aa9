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


class BackendUnavailable(BackendError):
    """The backend could not be reached or answered with a server error (transport
    failure, timeout, 5xx, 429, unreadable body), after the retries that were safe."""


class ServiceKeyRejected(BackendError):
    """The backend refused the service key: AGENT_SECRET is missing or differs from the
    deployment's. Never retried."""


class ApplicationError(BackendError):
    """A backend function refused the call with a coded error (a ConvexError with data
    `{code, message}`). Never retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class FunctionError(BackendError):
    """A backend function failed without a code (a bug, or the function is not deployed),
    or the request was malformed. Never retried."""


class AgentNotFound(BackendError):
    """An admin command named an agent id the backend does not have."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(
            f"no agent with id {agent_id!r}; `agent-runtime agents list` shows the ids"
        )
        self.agent_id = agent_id


class WorkerIdTaken(BackendError):
    """Another live process is registered with this WORKER_ID (a second process started
    with the same fixed WORKER_ID, or a reused pid). It keeps its registration."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(
            f"worker id {worker_id!r} is registered by another live process; set a unique"
            " WORKER_ID per process, or leave it unset (host-pid-random)"
        )
        self.worker_id = worker_id


class InvalidArgument(BackendError):
    """A call was refused for a bad argument (a backend's INVALID_ARGUMENT): the message
    names the value and what is expected."""


class InvalidAgent(InvalidArgument):
    """An admin command asked for an agent the runtime would reject (bad name or interval)."""


class Fenced(BackendError):
    """A WhatsApp call was refused as stale: this owner no longer holds the lease at its
    epoch, or another claim replaced this one. The caller must stop, not retry."""


class MessageNotFound(BackendError):
    """A WhatsApp call named an outbound message id the backend does not have."""

    def __init__(self, message_id: str) -> None:
        super().__init__(
            f"no outbound message with id {message_id!r}; `agent-runtime whatsapp outbox`"
            " shows the ids"
        )
        self.message_id = message_id


class JobNotFound(BackendError):
    """A command named a job id the backend does not have."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}; `agent-runtime jobs list` shows the ids")
        self.job_id = job_id
