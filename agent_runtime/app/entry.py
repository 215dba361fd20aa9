"""The `agent-runtime` console script. For `run`, the stop signals are handled from the
first moment, before the imports that take half a second (see `signals`)."""

import sys


def main() -> int:
    """Entry point: install the stop signals for `run`, then hand over to the CLI."""
    if sys.argv[1:2] == ["run"]:
        from agent_runtime.app.signals import STOP  # noqa: PLC0415 - before the heavy imports

        STOP.install()
    from agent_runtime.app.cli import main as cli_main  # noqa: PLC0415

    return cli_main()
