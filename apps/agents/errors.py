"""The application's one error type. The API's exception handler renders it as
`{"error": {"code", "message", "fields"?}}` with `status`."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    status = 400

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid",
        status: int | None = None,
        fields: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        if status is not None:
            self.status = status
        self.fields = fields
        #: Extra response headers, e.g. Retry-After of a budget refusal.
        self.headers = dict(headers or {})


class BudgetExceeded(ApplicationError):
    """A budget (or its concurrency limit) refuses the run: 429 with Retry-After when the budget resets."""

    status = 429

    def __init__(self, message: str, *, retry_after: int | None = None, budget: str = "") -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(message, code="budget_exceeded", headers=headers)
        self.retry_after = retry_after
        self.budget = budget


class IllegalTransition(ApplicationError):
    """An execution was asked to move to a state its current state does not allow. Nothing was changed."""

    status = 409

    def __init__(self, execution_id: object, current: str | None, target: str) -> None:
        super().__init__(
            f"execution {execution_id} cannot go from {current or 'missing'} to {target}",
            code="illegal_transition",
        )
        self.current = current
        self.target = target
