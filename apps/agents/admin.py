"""Admin: agents are edited here (the seed's Phase 5 flow); executions are a read-only record."""

from django.contrib import admin

from apps.agents.models import Agent, AgentExecution, Budget, Conversation, McpServer, Message


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("name", "agent_id", "agent_type", "preferred_platform", "model", "is_shared", "is_active")
    list_filter = ("agent_type", "preferred_platform", "is_shared", "is_active")
    search_fields = ("name", "agent_id", "description")
    readonly_fields = ("id", "created_at", "updated_at")
    fieldsets = (
        (
            None,
            {"fields": ("name", "agent_id", "description", "owner", "agent_type", "is_shared", "is_active")},
        ),
        ("Model", {"fields": ("preferred_platform", "model", "temperature", "max_tokens")}),
        ("Behaviour", {"fields": ("system_prompt", "capabilities", "output_schema", "tools")}),
        ("Limits", {"fields": ("timeout_seconds", "max_retries", "history_window", "max_tool_calls")}),
        ("Record", {"fields": ("id", "created_at", "updated_at")}),
    )


@admin.register(AgentExecution)
class AgentExecutionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "agent_slug",
        "user",
        "status",
        "platform_used",
        "model_used",
        "tokens_used",
        "cost",
        "execution_time",
        "created_at",
    )
    list_filter = ("status", "platform_used", "mode", "error_code", "agent")
    search_fields = ("id", "agent_slug", "user__username", "error_message", "idempotency_key")
    date_hierarchy = "created_at"
    list_select_related = ("user",)

    # A record of what happened: nobody edits, adds or deletes it by hand.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ("position", "role", "content", "tokens", "execution", "created_at")
    readonly_fields = ("created_at",)
    ordering = ("position",)


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "owner", "agent", "created_at")
    search_fields = ("id", "title", "owner__username")
    list_filter = ("agent",)
    inlines = [MessageInline]
    readonly_fields = ("id", "summary_upto", "created_at", "updated_at")


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("conversation", "position", "role", "tokens", "created_at")
    search_fields = ("content",)


@admin.register(McpServer)
class McpServerAdmin(admin.ModelAdmin):
    """Staff only (the admin is): the one place a command or URL that the server will use is entered."""

    list_display = ("name", "transport", "enabled", "timeout_seconds", "updated_at")
    list_filter = ("transport", "enabled")
    search_fields = ("name", "description")
    readonly_fields = ("created_at", "updated_at")
    fields = (
        "name",
        "description",
        "enabled",
        "transport",
        "command",
        "url",
        "headers_from_env",
        "env_from_env",
        "allowed_tools",
        "timeout_seconds",
        "created_at",
        "updated_at",
    )


# What a budget applies to and what it allows, in the list and in the form alike.
BUDGET_TERMS = ("scope", "user", "agent", "period", "limit_usd", "limit_tokens", "max_concurrent")


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    """Budgets are edited here (or with `manage.py set_budget` / POST /api/v1/budgets/). Usage is not: it
    is what the runs' reservations and settlements wrote, and an edit would race them."""

    list_display = ("label", *BUDGET_TERMS)
    list_filter = ("scope", "period", "is_active")
    search_fields = ("name", "user__username", "agent__agent_id")
    raw_id_fields = ("user", "agent")
    readonly_fields = ("from_default", "created_at", "updated_at", "current_usage")
    fields = (
        "name",
        *BUDGET_TERMS,
        "is_active",
        "current_usage",
        "from_default",
        "created_at",
        "updated_at",
    )

    @admin.display(description="Current period")
    def current_usage(self, budget: Budget) -> str:
        if budget.pk is None:
            return "-"
        from apps.agents.budget_selectors import budget_statuses

        status = budget_statuses([budget])[0]
        return (
            f"spent {status.spent_usd} USD / {status.spent_tokens} tokens, held {status.reserved_usd} USD / "
            f"{status.reserved_tokens} tokens, {status.active_runs} runs in flight (since {status.period_start:%Y-%m-%d})"
        )
