"""The backend port (`Backend`) and its adapters; `open_backend` picks one from settings."""

from agent_runtime.config import Settings
from backend.local import LocalBackend
from backend.port import Backend

__all__ = ["Backend", "LocalBackend", "open_backend"]


def open_backend(settings: Settings) -> Backend:
    """The backend the settings describe: the embedded SQLite file at LOCAL_DB_PATH.

    Raises:
        BackendError: the database cannot be opened or created.
    """
    return LocalBackend(settings.local_db_path)
