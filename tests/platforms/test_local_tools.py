"""tool_choice on the local model (no model needed): which tools the grammar offers, and whether it still
admits a final answer."""

from __future__ import annotations

from apps.platforms.base import ToolChoice, ToolDefinition
from apps.platforms.local_tools import offered_tools, tools_schema

A = ToolDefinition(name="a", description="A.", parameters={"type": "object", "properties": {}})
B = ToolDefinition(name="b", description="B.", parameters={"type": "object", "properties": {}})


def test_tool_choice_narrows_the_offered_tools() -> None:
    assert offered_tools((A, B), None) == ((A, B), False)
    assert offered_tools((A, B), ToolChoice("auto")) == ((A, B), False)
    assert offered_tools((A, B), ToolChoice("none")) == ((), False)
    assert offered_tools((A, B), ToolChoice("required")) == ((A, B), True)
    assert offered_tools((A, B), ToolChoice("function", "b")) == ((B,), True)


def test_a_required_call_leaves_the_final_answer_out_of_the_grammar() -> None:
    shapes = tools_schema((A, B), None, answer=False)["anyOf"]
    assert [s["properties"]["tool"]["const"] for s in shapes] == ["a", "b"]
    assert "answer" in tools_schema((A,), None)["anyOf"][-1]["properties"]
