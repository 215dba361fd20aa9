"""`open_backend`: the adapter the settings name, for `run`, the CLI and `doctor`."""

from agent_runtime.app.config import Settings
from backend.convex import ConvexBackend
from backend.local import LocalBackend
from backend.port import Backend


def open_backend(settings: Settings) -> Backend:
    """The backend the settings describe: Convex when CONVEX_URL is set (settings
    validation guarantees AGENT_SECRET then), else the SQLite file at LOCAL_DB_PATH.

    Raises:
        BackendError: the local database cannot be opened or created.
    """
    if settings.convex_url is not None:
        assert settings.agent_secret is not None
        return ConvexBackend(
            settings.convex_url,
            settings.agent_secret,
            connect_timeout_s=settings.convex_connect_timeout_ms / 1000,
            read_timeout_s=settings.convex_read_timeout_ms / 1000,
            subscribe=settings.subscribes,
        )
    return LocalBackend(settings.local_db_path)
