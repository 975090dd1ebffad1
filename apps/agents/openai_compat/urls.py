"""/v1/ routes (included from config/urls.py). Anything else under /v1/ is an OpenAI-shaped 404, not Django's
HTML page, so an OpenAI client pointed at a wrong path is told so in words it can show."""

from django.urls import path, re_path

from apps.agents.openai_compat import responses_views, views

app_name = "openai_compat"

urlpatterns = [
    path("chat/completions", views.chat_completions, name="chat-completions"),
    path("responses", responses_views.responses, name="responses"),
    path("responses/<str:response_id>", responses_views.response_detail, name="response-detail"),
    path("models", views.models, name="models"),
    path("models/<str:model>", views.model_detail, name="model-detail"),
    re_path(r"^(?P<path>.*)$", views.unknown_url, name="unknown"),
]
