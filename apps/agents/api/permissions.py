"""Object permissions. Visibility (can you see it at all?) is decided by the selectors, which answer 404 for
someone else's object; these classes only decide what a user who *can* see an object may do with it."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from apps.agents.selectors import agent_can_write

# Actions that read an agent or run it; everything else on an agent is a write.
AGENT_READ_ACTIONS = frozenset({"retrieve", "list", "execute", "stats"})


class AgentWriteOwnerOrStaff(BasePermission):
    """A shared agent is visible to everyone and may be run by anyone who sees it, but only its owner or
    staff may change or delete it (403: the user can see it, so pretending it does not exist would be a
    lie)."""

    message = "Only the agent's owner or staff may change it."

    def has_object_permission(self, request: Request, view: APIView, obj: Any) -> bool:
        if request.method in SAFE_METHODS or getattr(view, "action", None) in AGENT_READ_ACTIONS:
            return True
        return agent_can_write(user=request.user, agent=obj)
