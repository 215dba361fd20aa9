"""`agent-runtime agents list | head -1`: a reader that stops early ends the command
quietly, as a real pipeline between two processes."""

import subprocess
from pathlib import Path

from backend.local import LocalBackend
from tests.runtime_process import COMMAND, base_env

AGENTS = 500
"""With 200-character names and keys, the table is ~230 KB: more than a pipe holds
(64 KiB on Linux) plus what `head` reads at once, so the lister is still writing when
`head` exits, every time."""


def test_listing_into_a_reader_that_stops_early_ends_without_a_traceback(
    tmp_path: Path,
) -> None:
    db = tmp_path / "local.db"
    backend = LocalBackend(db)
    for i in range(AGENTS):
        backend.create_agent(f"{i:04d}".ljust(200, "n"), 60_000, f"{i:04d}".ljust(200, "k"))
    backend.close()
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("w") as stderr:
        lister = subprocess.Popen(
            [*COMMAND, "agents", "list"],
            env=base_env(db),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        assert lister.stdout is not None
        head = subprocess.Popen(["head", "-1"], stdin=lister.stdout, stdout=subprocess.PIPE)
        lister.stdout.close()  # as a shell does: `head` is the only reader of the pipe
        first_line, _ = head.communicate(timeout=20)
        status = lister.wait(timeout=20)
    errors = stderr_path.read_text()
    assert head.returncode == 0
    assert first_line.decode().split() == [
        "ID",
        "NAME",
        "STATUS",
        "INTERVAL_MS",
        "LAST_HEARTBEAT",
        "SESSION_KEY",
        "MODEL",
        "WAKEUP_MS",
    ]
    assert "Traceback" not in errors
    assert "BrokenPipeError" not in errors
    assert errors == ""
    assert status == 1
