from django.urls import path

from apps.console import views

app_name = "console"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.login, name="login"),
    path("logout/", views.logout, name="logout"),
    # A plain file name: no slash can reach the assets lookup, so no path can leave the assets directory.
    path("console/assets/<str:name>", views.asset, name="asset"),
    path("console/api/agents/<str:key>/daily/", views.agent_daily, name="agent-daily"),
]
