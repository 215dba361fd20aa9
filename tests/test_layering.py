"""Imports point one way: messages <- ground (agent_runtime/*.py) <- backend <- actors <-
the application (agent_runtime/app). pykka's private API is used in one module only."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

LAYERS = ["messages", "ground", "backend", "actors", "app"]
"""Lowest first: a module may import its own layer and the layers before it."""


def layer_of(module: str) -> str | None:
    """The layer of a first-party module name, or None for stdlib and third parties."""
    top = module.split(".", maxsplit=1)[0]
    if module.startswith(("agent_runtime.app", "agent_runtime.__main__")):
        return "app"  # `python -m agent_runtime` is the command line
    if top == "agent_runtime":
        return "ground"
    return top if top in LAYERS else None


def source_files() -> list[Path]:
    packages = ["messages", "agent_runtime", "backend", "actors"]
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path: Path) -> None:
    own = layer_of(module_name(path))
    assert own is not None
    for imported in imports(path):
        target = layer_of(imported)
        if target is None:
            continue
        assert LAYERS.index(target) <= LAYERS.index(own), f"{own} imports {target}: {imported}"
        if own == "actors" and target == "backend":
            assert imported.startswith("backend.port."), (
                f"actors import backend.port only: {imported}"
            )


def test_only_the_dispatcher_reaches_into_pykka_private_modules() -> None:
    users = {
        str(path.relative_to(ROOT))
        for path in source_files()
        if any(name.startswith("pykka._") for name in imports(path))
    }
    assert users == {"actors/dispatcher.py"}


def test_the_checker_sees_a_wrong_way_import() -> None:
    assert layer_of("agent_runtime.app.config") == "app"
    assert layer_of("agent_runtime.clock") == "ground"
    assert layer_of("backend.local.LocalBackend") == "backend"
    assert layer_of("httpx") is None
    assert LAYERS.index("app") > LAYERS.index("actors")
