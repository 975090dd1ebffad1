"""/api/v1/ routes. SimpleRouter: no browsable "API root" view, whose defaults would bypass our mixins."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.agents.api import budget_views, tools, views

router = SimpleRouter()
router.register("agents", views.AgentViewSet, basename="agent")
router.register("executions", views.ExecutionViewSet, basename="execution")
router.register("conversations", views.ConversationViewSet, basename="conversation")

urlpatterns = [
    path("auth/token/", views.AuthTokenView.as_view(), name="auth-token"),
    path("health/", views.HealthView.as_view(), name="health"),
    path("tools/", tools.ToolListView.as_view(), name="tool-list"),
    path("usage/", budget_views.UsageView.as_view(), name="usage"),
    path("budgets/", budget_views.BudgetListView.as_view(), name="budget-list"),
    *router.urls,
]
