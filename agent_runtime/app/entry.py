"""The `agent-runtime` console script. For `run`, the stop signals are handled from the
first moment, before the imports that take half a second (see `signals`)."""

import logging
import os
import sys


def main() -> int:
    """Entry point: install the stop signals for `run`, then hand over to the CLI.

    `run` ends with `os._exit` once its output is flushed: everything was stopped or
    abandoned within the shutdown deadline, and the interpreter's own teardown of
    thousands of actors (daemon threads still finishing their last messages) took
    another 2 s at 20,000 agents, past the promise of an exit within 5 s."""
    if sys.argv[1:2] != ["run"]:
        from agent_runtime.app.cli import main as cli_main  # noqa: PLC0415

        return cli_main()
    from agent_runtime.app.signals import STOP  # noqa: PLC0415 - before the heavy imports

    STOP.install()
    from agent_runtime.app.cli import main as cli_main  # noqa: PLC0415

    status = cli_main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
