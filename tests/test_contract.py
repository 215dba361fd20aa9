"""The backend contract (contract/*.json) run against the embedded backend's logic."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from backend.local import LocalBackend
from tests.convex_service import LocalService
from tests.fake_convex import ServiceError

CONTRACT = Path(__file__).parent.parent / "contract"
SECRET = "contract-secret"
TEMPLATE = re.compile(r"\$\{(\w+)\}")


class Mismatch(AssertionError):
    pass


class Vectors:
    """Substitution and matching exactly as contract/README.md specifies."""

    def __init__(self) -> None:
        self.saved: dict[str, Any] = {}

    def substitute(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items() if v != "$omit"}
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if isinstance(value, str):
            if value == "$secret":
                return SECRET
            if value.startswith("$") and value[1:] in self.saved:
                return self.saved[value[1:]]
            return TEMPLATE.sub(lambda m: str(self.saved[m.group(1)]), value)
        return value

    def match(self, expected: Any, actual: Any, where: str = "result") -> None:
        if isinstance(expected, str) and expected.startswith("$"):
            self._special(expected, actual, where)
        elif isinstance(expected, dict):
            if not isinstance(actual, dict) or set(actual) != set(expected):
                raise Mismatch(f"{where}: expected keys {sorted(expected)}, got {actual!r}")
            for key, value in expected.items():
                self.match(value, actual[key], f"{where}.{key}")
        elif isinstance(expected, list):
            if not isinstance(actual, list) or len(actual) != len(expected):
                raise Mismatch(f"{where}: expected {len(expected)} items, got {actual!r}")
            for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
                self.match(e, a, f"{where}[{i}]")
        else:
            if isinstance(expected, str):
                expected = self.substitute(expected)
            numbers = isinstance(expected, int | float) and isinstance(actual, int | float)
            same_kind = numbers or type(expected) is type(actual)
            if not (same_kind and expected == actual) or isinstance(actual, bool) != isinstance(
                expected, bool
            ):
                raise Mismatch(f"{where}: expected {expected!r}, got {actual!r}")

    def _special(self, expected: str, actual: Any, where: str) -> None:
        name = expected[1:]
        if name == "any":
            return
        if name == "number":
            if isinstance(actual, bool) or not isinstance(actual, int | float):
                raise Mismatch(f"{where}: expected a number, got {actual!r}")
        elif name == "string":
            if not isinstance(actual, str):
                raise Mismatch(f"{where}: expected a string, got {actual!r}")
        elif name.startswith("save:"):
            self.saved[name[5:]] = actual
        elif name.startswith("not:"):
            if actual == self.saved[name[4:]]:
                raise Mismatch(f"{where}: expected a value other than {actual!r}")
        elif name in self.saved:
            if actual != self.saved[name]:
                raise Mismatch(f"{where}: expected {self.saved[name]!r}, got {actual!r}")
        else:
            value = self.substitute(expected)
            if value == expected:
                raise Mismatch(f"{where}: {expected!r} names no saved value")
            self.match(value, actual, where)


def scenarios() -> list[Path]:
    return sorted(CONTRACT.glob("*.json"))


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda p: p.stem)
def test_contract_on_the_embedded_backend(scenario: Path, tmp_path: Path) -> None:
    spec = json.loads(scenario.read_text())
    backend = LocalBackend(tmp_path / "contract.db")
    service = LocalService(backend, SECRET)
    vectors = Vectors()
    try:
        for index, step in enumerate(spec["steps"]):
            where = f"{scenario.name} step {index} ({step['kind']} {step['path']})"
            args = vectors.substitute(step["args"])
            if "error" in step:
                with pytest.raises(ServiceError) as raised:
                    service.call(step["kind"], step["path"], args)
                assert raised.value.code == step["error"], f"{where}: {raised.value.message}"
                continue
            result = service.call(step["kind"], step["path"], args)
            # What goes over the wire is JSON: compare after a JSON round trip.
            vectors.match(step["expect"], json.loads(json.dumps(result)), where)
    finally:
        backend.close()


def test_every_backend_call_is_covered_by_the_contract() -> None:
    called = {step["path"] for p in scenarios() for step in json.loads(p.read_text())["steps"]}
    service = LocalService.__new__(LocalService)
    LocalService.__init__(service, None, "x")  # type: ignore[arg-type]
    assert called == set(service._functions)


def test_matcher_can_fail() -> None:
    vectors = Vectors()
    with pytest.raises(Mismatch):
        vectors.match({"a": 1}, {"a": 1, "b": 2})
    with pytest.raises(Mismatch):
        vectors.match([1], [1, 2])
    with pytest.raises(Mismatch):
        vectors.match("$number", "5")
    with pytest.raises(Mismatch):
        vectors.match(None, False)
    vectors.match("$save:x", 5)
    with pytest.raises(Mismatch):
        vectors.match("$not:x", 5)
    vectors.match(5000, 5000.0)
    with pytest.raises(Mismatch, match="names no saved value"):
        vectors.match("$typo", "x")
