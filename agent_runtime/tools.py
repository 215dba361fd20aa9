"""Tools: Python functions a model may call during a job, with pydantic-checked arguments.

A tool is a plain function registered with the bare decorator `@tool`: its name is the
function's name, the first paragraph of its docstring is the description the model sees,
and the JSON schema of its arguments comes from its annotations (a default makes an
argument optional; `Annotated[int, Field(description=...)]` describes one). Registration
refuses, at import time, anything the model could not call reliably.

`ToolRegistry.call` never raises: an unknown tool, malformed or invalid arguments, the
tool's own exception and an unencodable result all come back as an error `ToolResult`,
which the job hands to the model as the tool's answer, so a bad call never crashes the
agent's actor.

The registry `@tool` writes to (`REGISTRY`) holds the built-ins (`current_time`,
`calculate`) and the operator's tools, imported from TOOLS_MODULES by `load_modules`
at startup. It is filled while modules are imported and only read afterwards, so the
agents' threads share it without a message.
"""

import ast
import copy
import importlib
import inspect
import json
import logging
import math
import operator
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pydantic
import pydantic_core

from agent_runtime.clock import now_ms
from messages.text import cut, escape_controls, shown

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""What a tool's name must be: the function-name rule of the OpenAI-style APIs."""

MAX_RESULT_CHARS = 16 * 1024
"""A longer tool result is cut (`...(N chars)` marks it): it goes into the model's
context on every later turn of the job, where a 1 MB answer would crowd out the rest."""

MAX_ERROR_CHARS = 300
"""An error result (bad arguments, the tool's exception) is one line of at most about
this many characters: enough for the model to correct its call."""

CALC_MAX_EXPRESSION_CHARS = 500
"""`calculate` refuses a longer expression (deep nesting could exhaust the parser)."""

CALC_MAX_ABS = 10**300
"""`calculate` refuses any intermediate or final value larger in magnitude: every
operation then stays cheap, and a power is refused before it is computed."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The answer to one tool call, as the model sees it: `content` is the tool's result
    as text when `ok`, else a one-line reason the call failed."""

    ok: bool
    content: str


@dataclass(frozen=True, slots=True)
class _Tool:
    name: str
    fn: Callable[..., Any]
    arguments: type[pydantic.BaseModel]
    positional: tuple[str, ...]  # positional-only parameters, passed in order
    keyword: tuple[str, ...]
    spec: dict[str, Any]


class ToolRegistry:
    """Tools by name: their specs for the model, and `call` to run one safely.

    Registration takes a lock, so modules may be imported from several threads; calls
    only read.
    """

    def __init__(self) -> None:
        self._tools: dict[str, _Tool] = {}
        self._lock = threading.Lock()

    def register(self, fn: F) -> F:
        """Register `fn` under its `__name__` and return it unchanged.

        Raises ValueError if the name is not 1 to 64 of `a-zA-Z0-9_-` or is already
        registered here; TypeError if `fn` is a coroutine function, has no docstring, a
        parameter without annotation, `*args`/`**kwargs`, a parameter name starting with
        `_`, or annotations or defaults pydantic cannot turn into a JSON schema.
        """
        built = _build_tool(fn)
        with self._lock:
            if built.name in self._tools:
                raise ValueError(f"tool {built.name!r} is already registered; rename {fn!r}")
            self._tools[built.name] = built
        return fn

    def names(self) -> list[str]:
        """The registered tool names, sorted."""
        return sorted(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        """The OpenAI-style function specs of every tool, sorted by name:
        `{"type": "function", "function": {"name", "description", "parameters"}}`, where
        `parameters` is a JSON schema with `"additionalProperties": false`. Each call
        returns fresh copies, which the caller may change."""
        return [copy.deepcopy(self._tools[name].spec) for name in self.names()]

    def call(self, name: str, arguments: str | dict[str, Any] | None) -> ToolResult:
        """Run tool `name` with `arguments` and return its result; never raises
        (except BaseExceptions such as KeyboardInterrupt, which are not the tool's).

        `arguments` is a JSON object as text (as models send it), an already-parsed
        object, or None / empty text for none. An unknown tool (the reason names the
        known ones), malformed JSON, arguments the schema refuses (a wrong type, a missing
        required one, an extra one), the tool's exception (`"<Type>: <message>"`) and an
        unencodable result give `ok=False` with a one-line reason of about
        MAX_ERROR_CHARS. A str result is the content as is; any other is JSON-encoded
        (pydantic models, dataclasses and dates as JSON, anything else by `str`). The
        content is cut to MAX_RESULT_CHARS.
        """
        found = self._tools.get(name)
        if found is None:
            known = ", ".join(self.names()) or "none"
            return _error(f"unknown tool {shown(name)}; known tools: {known}")
        parsed = _parse_arguments(arguments)
        if isinstance(parsed, ToolResult):
            return parsed
        try:
            checked = found.arguments.model_validate(parsed)
        except pydantic.ValidationError as exc:
            return _error(f"invalid arguments for {name}: {_validation_reason(exc)}")
        values = {alias: getattr(checked, field) for field, alias in _fields(found)}
        try:
            value = found.fn(
                *(values[p] for p in found.positional), **{k: values[k] for k in found.keyword}
            )
        except Exception as exc:
            # The model sees the one-line reason; the operator's log keeps the traceback.
            logger.info("tool %s raised", name, exc_info=True)
            return _error(f"{type(exc).__name__}: {exc}")
        try:
            content = value if isinstance(value, str) else _to_json(value)
        except Exception as exc:
            return _error(f"{name} returned a value that cannot be encoded as JSON: {exc}")
        return ToolResult(ok=True, content=cut(content, MAX_RESULT_CHARS))


REGISTRY = ToolRegistry()
"""The registry `@tool` writes to: the built-ins and the TOOLS_MODULES tools."""


def default_registry() -> ToolRegistry:
    """The registry `@tool` writes to (`REGISTRY`)."""
    return REGISTRY


def tool(fn: F) -> F:
    """Decorator: register `fn` in the default registry and return it unchanged.

    Used bare (`@tool`). Raises at decoration, so at import, what
    `ToolRegistry.register` raises.
    """
    return REGISTRY.register(fn)


def load_modules(paths: Iterable[str]) -> None:
    """Import each dotted module path in `paths`, in order, so that its `@tool`s register
    in the default registry; blank entries are skipped and an already-imported module is
    not imported again.

    Raises ValueError with a one-line message naming the path if a module cannot be
    imported or fails while importing (a bad tool in it, say); the original exception is
    its `__cause__`.
    """
    for raw in paths:
        path = raw.strip()
        if not path:
            continue
        try:
            importlib.import_module(path)
        except ImportError as exc:
            raise ValueError(
                f"cannot import tools module {shown(path)}: {_one_line(str(exc))};"
                " expected a dotted module path on the Python path, like `mypackage.tools`"
            ) from exc
        except Exception as exc:
            raise ValueError(
                f"tools module {shown(path)} failed while importing:"
                f" {type(exc).__name__}: {_one_line(str(exc))}"
            ) from exc


def _build_tool(fn: Callable[..., Any]) -> _Tool:
    name = getattr(fn, "__name__", "")
    if not TOOL_NAME.match(name):
        raise ValueError(
            f"tool name {shown(name)} of {fn!r} is invalid: expected 1 to 64 characters"
            " of a-z, A-Z, 0-9, _ and -"
        )
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"tool {name}: a coroutine function cannot be a tool; make it sync")
    description = _description(fn)
    if not description:
        raise TypeError(f"tool {name} has no docstring: its first paragraph is the description")
    fields: dict[str, Any] = {}
    positional: list[str] = []
    keyword: list[str] = []
    try:
        signature = inspect.signature(fn)
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception as exc:
        raise TypeError(f"tool {name}: cannot read its signature: {exc}") from exc
    for index, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name}: *{param.name} / **{param.name} is not allowed")
        if param.name.startswith("_"):
            raise TypeError(f"tool {name}: parameter {param.name!r} must not start with _")
        if param.name not in hints:
            raise TypeError(f"tool {name}: parameter {param.name!r} has no type annotation")
        default = ... if param.default is param.empty else param.default
        if default is not ...:
            try:
                pydantic_core.to_jsonable_python(default)
            except pydantic_core.PydanticSerializationError as exc:
                raise TypeError(
                    f"tool {name}: the default of {param.name!r} has no JSON schema: {exc}"
                ) from exc
        # Internal field names, the parameter as alias: a parameter may be called `json`
        # or `model_config` without clashing with BaseModel's own attributes.
        fields[f"p{index}"] = (hints[param.name], pydantic.Field(default, alias=param.name))
        (positional if param.kind == param.POSITIONAL_ONLY else keyword).append(param.name)
    try:
        model: type[pydantic.BaseModel] = pydantic.create_model(
            f"{name}_arguments",
            __config__=pydantic.ConfigDict(extra="forbid"),
            **fields,
        )
        parameters = model.model_json_schema()
    except Exception as exc:
        raise TypeError(f"tool {name}: its arguments have no JSON schema: {exc}") from exc
    parameters.pop("title", None)
    parameters["additionalProperties"] = False
    spec = {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }
    return _Tool(name, fn, model, tuple(positional), tuple(keyword), spec)


def _description(fn: Callable[..., Any]) -> str:
    """The first paragraph of `fn`'s docstring, on one line."""
    doc = inspect.cleandoc(fn.__doc__ or "")
    return " ".join(doc.split("\n\n", maxsplit=1)[0].split())


def _fields(found: _Tool) -> Iterable[tuple[str, str]]:
    for field, info in found.arguments.model_fields.items():
        yield field, info.alias or field


def _parse_arguments(arguments: object) -> dict[str, Any] | ToolResult:
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            return _error(f"arguments are not valid JSON: {exc}")
    if not isinstance(arguments, dict):
        return _error(f"arguments must be a JSON object, not {type(arguments).__name__}")
    return arguments


def _validation_reason(exc: pydantic.ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def _to_json(value: object) -> str:
    return json.dumps(pydantic_core.to_jsonable_python(value, fallback=str), ensure_ascii=False)


def _one_line(text: str) -> str:
    return escape_controls(" ".join(text.split()))


def _error(reason: str) -> ToolResult:
    return ToolResult(ok=False, content=cut(_one_line(reason), MAX_ERROR_CHARS))


# Built-in tools.


@tool
def current_time() -> str:
    """The current date and time in UTC, ISO 8601."""
    moment = datetime.fromtimestamp(now_ms() / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


@tool
def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression of numbers, + - * / // % ** (power), unary
    minus and parentheses, as Python does, e.g. `(2 + 3) * 4 / 7`.

    No names, functions or other syntax. Raises ValueError for anything else, for a value
    beyond CALC_MAX_ABS and for a complex result; ZeroDivisionError as Python does.
    """
    if len(expression) > CALC_MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {CALC_MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None
    return _evaluate(tree.body)


def _evaluate(node: ast.expr) -> int | float:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"only numbers are allowed, not {value!r}")
        return _bounded(value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Name):
        raise ValueError(f"names are not allowed: {node.id}")
    if isinstance(node, ast.Call):
        raise ValueError("function calls are not allowed")
    raise ValueError(f"not allowed in an arithmetic expression: {type(node).__name__}")


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuse `base ** exponent` before computing it if it would exceed CALC_MAX_ABS."""
    if base == 0 or abs(base) == 1:
        return
    if exponent * math.log10(abs(base)) > math.log10(CALC_MAX_ABS):
        raise ValueError(f"result too large: {base} ** {exponent}")


def _bounded(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"result is not a real number: {value!r}")
    if math.isnan(value) or abs(value) > CALC_MAX_ABS:
        raise ValueError(f"result too large (limit 1e{round(math.log10(CALC_MAX_ABS))})")
    return value
