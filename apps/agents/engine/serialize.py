"""The seed's execute response body, built from an AgentResult. Shared by HTTP, SSE, Celery and the CLI."""

from __future__ import annotations

from typing import Any

from apps.agents.engine.context import AgentResult


def result_body(result: AgentResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "success": result.success,
        "output": result.output,
        "execution_id": result.execution_id,
        "tokens_used": result.tokens_used,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        # The seed contract has cost as a JSON number. Costs are stored as Decimal with 10 places, which a
        # float prints back with the same digits (under 15 significant digits), so nothing is lost on the wire.
        "cost": float(result.cost),
        "execution_time": round(result.execution_time, 4),
        "platform_used": result.platform_used,
        "model_used": result.model_used,
        "metadata": result.metadata,
    }
    if result.error is not None:
        body["error"] = result.error.to_dict()
    return body
