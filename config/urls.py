from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.agents.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("apps.agents.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("v1/", include("apps.agents.openai_compat.urls")),
    path("metrics", metrics_view, name="metrics"),
    path("", include("apps.console.urls")),
]

# Under /api/ even Django's own error pages (no route matched, a crash outside a view) are the JSON envelope.
handler400 = "apps.agents.api.exceptions.json_bad_request"
handler403 = "apps.agents.api.exceptions.json_permission_denied"
handler404 = "apps.agents.api.exceptions.json_page_not_found"
handler500 = "apps.agents.api.exceptions.json_server_error"
