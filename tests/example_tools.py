"""A tools module as an operator would list it in TOOLS_MODULES, for tests/test_tools.py."""

from agent_runtime.tools import tool


@tool
def example_shout(text: str) -> str:
    """Repeat the text in capitals."""
    return text.upper()
