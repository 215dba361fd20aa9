"""Tools: registration and specs, safe calls, the built-ins and TOOLS_MODULES loading."""

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import pydantic
import pytest

from agent_runtime import tools
from agent_runtime.tools import (
    MAX_ERROR_CHARS,
    MAX_RESULT_CHARS,
    ToolRegistry,
    ToolResult,
    load_modules,
    tool,
)


class Point(pydantic.BaseModel):
    x: int
    y: int


def plot(
    label: str,
    count: int,
    *,
    scale: float = 1.0,
    visible: bool = True,
    mode: Literal["line", "bar"] = "line",
    tags: list[str] | None = None,
    origin: Point | None = None,
    width: Annotated[int, pydantic.Field(description="Pixels.", ge=1)] = 10,
) -> dict[str, Any]:
    """Plot a labelled series.

    This second paragraph is not part of the description.
    """
    return {
        "label": label,
        "count": count,
        "scale": scale,
        "visible": visible,
        "mode": mode,
        "tags": tags,
        "origin": origin,
        "width": width,
    }


def fail(message: str) -> str:
    """Raise with the given message."""
    raise RuntimeError(message)


@pytest.fixture
def registry() -> ToolRegistry:
    """A fresh registry with `plot` and `fail`, so nothing leaks into the default one."""
    fresh = ToolRegistry()
    fresh.register(plot)
    fresh.register(fail)
    return fresh


@pytest.fixture
def default(monkeypatch: pytest.MonkeyPatch) -> ToolRegistry:
    """An empty registry standing in for the default one for the test's duration."""
    fresh = ToolRegistry()
    monkeypatch.setattr(tools, "REGISTRY", fresh)
    return fresh


def spec_of(registry: ToolRegistry, name: str) -> dict[str, Any]:
    (spec,) = [s for s in registry.specs() if s["function"]["name"] == name]
    return spec


# Registration and the spec.


def test_bare_decorator_registers_in_the_default_registry_and_returns_the_function(
    default: ToolRegistry,
) -> None:
    @tool
    def greet(name: str) -> str:
        """Say hello."""
        return f"hello {name}"

    assert greet("ann") == "hello ann"
    assert tools.default_registry() is default
    assert default.names() == ["greet"]
    assert default.call("greet", {"name": "bob"}) == ToolResult(ok=True, content="hello bob")


def test_the_spec_is_openai_style_with_the_docstring_first_paragraph(
    registry: ToolRegistry,
) -> None:
    spec = spec_of(registry, "plot")
    assert spec["type"] == "function"
    assert set(spec["function"]) == {"name", "description", "parameters"}
    assert spec["function"]["name"] == "plot"
    assert spec["function"]["description"] == "Plot a labelled series."


def test_the_parameters_schema_comes_from_the_annotations(registry: ToolRegistry) -> None:
    schema = spec_of(registry, "plot")["function"]["parameters"]
    json.dumps(schema)  # sent to the model as JSON
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["label", "count"]
    props = schema["properties"]
    assert list(props) == [
        "label",
        "count",
        "scale",
        "visible",
        "mode",
        "tags",
        "origin",
        "width",
    ]
    assert props["label"]["type"] == "string"
    assert props["count"]["type"] == "integer"
    assert props["scale"] == {"default": 1.0, "title": "Scale", "type": "number"}
    assert props["visible"]["type"] == "boolean"
    assert props["visible"]["default"] is True
    assert props["mode"]["enum"] == ["line", "bar"]
    assert props["mode"]["default"] == "line"
    assert {"type": "array", "items": {"type": "string"}} in props["tags"]["anyOf"]
    assert props["tags"]["default"] is None
    assert {"$ref": "#/$defs/Point"} in props["origin"]["anyOf"]
    assert schema["$defs"]["Point"]["required"] == ["x", "y"]
    assert props["width"]["description"] == "Pixels."
    assert props["width"]["minimum"] == 1


def test_specs_are_sorted_by_name_and_copies(registry: ToolRegistry) -> None:
    assert [s["function"]["name"] for s in registry.specs()] == ["fail", "plot"]
    assert registry.names() == ["fail", "plot"]
    registry.specs()[0]["function"]["name"] = "changed"
    assert registry.specs()[0]["function"]["name"] == "fail"


def test_a_parameter_named_like_a_model_attribute_works() -> None:
    def lookup(json: str, model_config: int = 2) -> str:
        """Look it up."""
        return f"{json}:{model_config}"

    fresh = ToolRegistry()
    fresh.register(lookup)
    assert list(spec_of(fresh, "lookup")["function"]["parameters"]["properties"]) == [
        "json",
        "model_config",
    ]
    assert fresh.call("lookup", {"json": "a"}) == ToolResult(ok=True, content="a:2")


def test_positional_only_parameters_are_passed_in_order() -> None:
    def minus(a: int, b: int, /) -> int:
        """Subtract b from a."""
        return a - b

    fresh = ToolRegistry()
    fresh.register(minus)
    assert fresh.call("minus", {"b": 1, "a": 10}) == ToolResult(ok=True, content="9")


def no_annotation(x) -> str:  # type: ignore[no-untyped-def]
    """Missing annotation."""
    return str(x)


def var_args(*values: int) -> int:
    """Variadic."""
    return sum(values)


def var_kwargs(**options: int) -> int:
    """Keyword variadic."""
    return len(options)


def no_doc(x: int) -> int:
    return x


async def coroutine(x: int) -> int:
    """Async."""
    return x


def private(_x: int) -> int:
    """Underscore parameter."""
    return _x


def unschematic(x: Any = datetime) -> str:
    """A default that has no JSON form."""
    return str(x)


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (no_annotation, "parameter 'x' has no type annotation"),
        (var_args, "*values"),
        (var_kwargs, "**options"),
        (no_doc, "has no docstring"),
        (coroutine, "coroutine"),
        (private, "must not start with _"),
        (unschematic, "no JSON schema"),
    ],
)
def test_registration_refuses_an_unusable_signature(fn: Any, words: str) -> None:
    fresh = ToolRegistry()
    with pytest.raises(TypeError, match=r"tool \w+") as caught:
        fresh.register(fn)
    assert words in str(caught.value)
    assert fresh.names() == []


def test_registration_refuses_a_duplicate_name(registry: ToolRegistry) -> None:
    def plot(x: int) -> int:
        """Another plot."""
        return x

    with pytest.raises(ValueError, match="'plot' is already registered"):
        registry.register(plot)
    assert registry.call("plot", {"label": "a", "count": 1}).ok


@pytest.mark.parametrize("name", ["<lambda>", "", "a" * 65, "has space", "dot.ted"])
def test_registration_refuses_an_invalid_name(name: str) -> None:
    def fn() -> None:
        """Anything."""

    fn.__name__ = name
    fresh = ToolRegistry()
    with pytest.raises(ValueError, match="expected 1 to 64 characters"):
        fresh.register(fn)
    assert fresh.names() == []


def test_a_64_character_name_with_dash_is_accepted() -> None:
    def fn() -> str:
        """Anything."""
        return "x"

    fn.__name__ = "a-" + "b" * 62
    fresh = ToolRegistry()
    fresh.register(fn)
    assert fresh.names() == [fn.__name__]


# Calls.


@pytest.mark.parametrize(
    "arguments",
    [
        '{"label": "a", "count": 3}',
        '  {"label": "a", "count": 3}\n',
        {"label": "a", "count": 3},
        {"label": "a", "count": "3"},  # pydantic's lax mode: a numeric string is an int
    ],
)
def test_call_with_json_text_or_an_object(registry: ToolRegistry, arguments: Any) -> None:
    result = registry.call("plot", arguments)
    assert result.ok, result.content
    assert json.loads(result.content) == {
        "label": "a",
        "count": 3,
        "scale": 1.0,
        "visible": True,
        "mode": "line",
        "tags": None,
        "origin": None,
        "width": 10,
    }


def test_nested_model_and_list_arguments_are_validated(registry: ToolRegistry) -> None:
    result = registry.call(
        "plot",
        {"label": "a", "count": 1, "tags": ["p", "q"], "origin": {"x": 1, "y": 2}, "mode": "bar"},
    )
    assert result.ok, result.content
    decoded = json.loads(result.content)
    assert decoded["origin"] == {"x": 1, "y": 2}  # a pydantic model result, as JSON
    assert decoded["tags"] == ["p", "q"]
    assert decoded["mode"] == "bar"


@pytest.mark.parametrize("arguments", [None, "", "  ", {}, "{}"])
def test_no_arguments(arguments: Any) -> None:
    assert tools.REGISTRY.call("current_time", arguments).ok


def test_no_arguments_for_a_tool_that_needs_some(registry: ToolRegistry) -> None:
    result = registry.call("plot", None)
    assert not result.ok
    assert result.content.startswith("invalid arguments for plot:")
    assert "label: Field required" in result.content
    assert "count: Field required" in result.content


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ('{"label": "a", "count": ', "arguments are not valid JSON:"),
        ("not json", "arguments are not valid JSON:"),
        ("[1, 2]", "arguments must be a JSON object, not list"),
        ('"text"', "arguments must be a JSON object, not str"),
        ({"label": "a", "count": "three"}, "count: Input should be a valid integer"),
        ({"label": "a"}, "count: Field required"),
        ({"label": "a", "count": 1, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"label": "a", "count": 1, "mode": "pie"}, "mode: Input should be 'line' or 'bar'"),
        ({"label": "a", "count": 1, "tags": [1]}, "tags.0: Input should be a valid string"),
        ({"label": "a", "count": 1, "origin": {"x": 1}}, "origin.y: Field required"),
        ({"label": "a", "count": 1, "width": 0}, "width: Input should be greater than"),
    ],
)
def test_bad_arguments_are_an_error_result(
    registry: ToolRegistry, arguments: Any, reason: str
) -> None:
    result = registry.call("plot", arguments)
    assert not result.ok
    assert reason in result.content
    assert "\n" not in result.content


def test_a_long_validation_reason_is_cut(registry: ToolRegistry) -> None:
    extras = {f"extra_{i}": i for i in range(100)}
    result = registry.call("plot", {"label": "a", "count": 1, **extras})
    assert not result.ok
    assert result.content.startswith("invalid arguments for plot: extra_0:")
    assert len(result.content) < MAX_ERROR_CHARS + 30
    assert result.content.endswith(" chars)")


def test_an_unknown_tool_names_the_known_ones(registry: ToolRegistry) -> None:
    assert registry.call("nope", "{}") == ToolResult(
        ok=False, content="unknown tool 'nope'; known tools: fail, plot"
    )
    assert ToolRegistry().call("nope", None).content.endswith("known tools: none")


def test_a_raising_tool_is_an_error_result(registry: ToolRegistry) -> None:
    result = registry.call("fail", {"message": "disk full\nsecond line"})
    assert result == ToolResult(ok=False, content="RuntimeError: disk full second line")


def test_a_long_exception_message_is_cut(registry: ToolRegistry) -> None:
    result = registry.call("fail", {"message": "x" * 10_000})
    assert not result.ok
    assert result.content.startswith("RuntimeError: xxx")
    assert len(result.content) < MAX_ERROR_CHARS + 30


def test_non_str_results_are_json_encoded() -> None:
    @dataclass
    class Row:
        when: datetime

    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    values: dict[str, Any] = {
        "number": 42,
        "nothing": None,
        "rows": [Row(datetime(2026, 1, 2, tzinfo=UTC))],
        "opaque": Opaque(),
        "text": "ünïcode",
    }

    def report(key: str) -> Any:
        """Return a value of some kind."""
        return values[key]

    fresh = ToolRegistry()
    fresh.register(report)
    assert fresh.call("report", {"key": "number"}) == ToolResult(ok=True, content="42")
    assert fresh.call("report", {"key": "nothing"}) == ToolResult(ok=True, content="null")
    rows = fresh.call("report", {"key": "rows"})
    assert json.loads(rows.content) == [{"when": "2026-01-02T00:00:00Z"}]
    assert fresh.call("report", {"key": "opaque"}) == ToolResult(ok=True, content='"opaque!"')
    assert fresh.call("report", {"key": "text"}) == ToolResult(ok=True, content="ünïcode")


def test_an_unencodable_result_is_an_error_result() -> None:
    loop: list[Any] = []
    loop.append(loop)

    def circular() -> list[Any]:
        """Return a list containing itself."""
        return loop

    fresh = ToolRegistry()
    fresh.register(circular)
    result = fresh.call("circular", None)
    assert not result.ok
    assert result.content.startswith("circular returned a value that cannot be encoded")


def test_a_huge_result_is_cut() -> None:
    def huge() -> str:
        """Return a megabyte."""
        return "y" * 1_048_576

    fresh = ToolRegistry()
    fresh.register(huge)
    result = fresh.call("huge", None)
    assert result.ok
    assert result.content == "y" * MAX_RESULT_CHARS + "...(1048576 chars)"


# Built-ins.


def test_the_builtins_are_in_the_default_registry() -> None:
    names = tools.REGISTRY.names()
    assert "current_time" in names
    assert "calculate" in names
    spec = spec_of(tools.REGISTRY, "current_time")["function"]
    assert spec["description"] == "The current date and time in UTC, ISO 8601."
    assert spec["parameters"]["properties"] == {}


def test_current_time_is_iso_8601_utc_and_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    result = tools.REGISTRY.call("current_time", None)
    after = datetime.now(UTC)
    assert result.ok
    assert len(result.content) == len("2026-11-22T21:15:03Z")
    assert result.content.endswith("Z")
    parsed = datetime.fromisoformat(result.content)
    assert parsed.utcoffset() == timedelta(0)
    assert before <= parsed <= after


def test_current_time_reads_the_runtime_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    moment = datetime(2026, 11, 22, 21, 15, 3, 999_000, tzinfo=UTC)
    monkeypatch.setattr(tools, "now_ms", lambda: int(moment.timestamp() * 1000))
    assert tools.current_time() == "2026-11-22T21:15:03Z"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2", "3"),
        ("(2 + 3) * 4", "20"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("2 ** 10", "1024"),
        ("-2 ** 2", "-4"),
        ("(-2) ** 2", "4"),
        ("+3 - -3", "6"),
        ("1.5e3 + 0.25", "1500.25"),
        ("1_000 * 3", "3000"),
        ("2 ** -1", "0.5"),
        ("10 ** 300", "1" + "0" * 300),
        (" 1 + 1 ", "2"),
    ],
)
def test_calculate(expression: str, expected: str) -> None:
    assert tools.REGISTRY.call("calculate", {"expression": expression}) == ToolResult(
        ok=True, content=expected
    )


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("x + 1", "ValueError: names are not allowed: x"),
        ("__import__('os')", "ValueError: function calls are not allowed"),
        ("abs(-1)", "ValueError: function calls are not allowed"),
        ("(1).real", "ValueError: not allowed in an arithmetic expression: Attribute"),
        ("[1, 2]", "ValueError: not allowed in an arithmetic expression: List"),
        ("1 < 2", "ValueError: not allowed in an arithmetic expression: Compare"),
        ("'a' * 3", "ValueError: only numbers are allowed, not 'a'"),
        ("True + 1", "ValueError: only numbers are allowed, not True"),
        ("1j * 1j", "ValueError: only numbers are allowed, not 1j"),
        ("1 << 2", "ValueError: not allowed in an arithmetic expression: BinOp"),
        ("2 ** 10 ** 10", "ValueError: result too large: 2 ** 10000000000"),
        ("9 ** 9 ** 9", "ValueError: result too large"),
        ("0.5 ** -10000", "ValueError: result too large"),
        ("10 ** 300 * 10", "ValueError: result too large"),
        ("1e308 * 10", "ValueError: result too large"),
        ("(-8) ** 0.5", "ValueError: result is not a real number"),
        ("1 +", "ValueError: not an arithmetic expression: invalid syntax"),
        ("", "ValueError: not an arithmetic expression"),
        ("1" + " + 1" * 200, "ValueError: expression longer than 500 characters"),
        ("1 / 0", "ZeroDivisionError: division by zero"),
        ("1 // 0", "ZeroDivisionError"),
        ("1 % 0", "ZeroDivisionError"),
        ("0 ** -1", "ZeroDivisionError"),
    ],
)
def test_calculate_refuses(expression: str, reason: str) -> None:
    result = tools.REGISTRY.call("calculate", {"expression": expression})
    assert not result.ok
    assert result.content.startswith(reason)


def test_calculate_never_evaluates_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("builtins.eval", None)
    assert tools.calculate("6 * 7") == 42


# TOOLS_MODULES.


def test_load_modules_registers_the_modules_tools(
    default: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "tests.example_tools", raising=False)
    load_modules(["", " tests.example_tools "])
    assert default.names() == ["example_shout"]
    assert default.call("example_shout", '{"text": "hi"}') == ToolResult(ok=True, content="HI")


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("tests.no_such_tools_module", "cannot import tools module 'tests.no_such_tools_module'"),
        ("no_such_package.tools", "cannot import tools module 'no_such_package.tools'"),
        (".relative", "tools module '.relative' failed while importing: TypeError"),
    ],
)
def test_load_modules_refuses_a_bad_path(path: str, words: str) -> None:
    with pytest.raises(ValueError, match="tools module") as caught:
        load_modules([path])
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.__cause__ is not None


def test_load_modules_refuses_a_module_with_a_bad_tool(
    default: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "tests.example_tools", raising=False)

    @tool
    def example_shout() -> str:
        """Taken first."""
        return ""

    with pytest.raises(ValueError, match="'example_shout' is already registered") as caught:
        load_modules(["tests.example_tools"])
    assert "tools module 'tests.example_tools' failed while importing: ValueError" in str(
        caught.value
    )
