"""agent-runtime: the worker that keeps an AI-agent fleet online.

The process wiring, configuration, CLI and HTTP surface live here; the actors are in
`actors`, the values they exchange in `messages`, the backend port in `backend`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agent-runtime")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
