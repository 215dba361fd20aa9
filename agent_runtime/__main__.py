"""`python -m agent_runtime` is the `agent-runtime` command."""

import sys

from agent_runtime.app.entry import main

sys.exit(main())
