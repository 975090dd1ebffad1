"""Token auth, and the one error envelope for every kind of error (404, 405, 401, 415, 429, 500, Django-level)."""

from __future__ import annotations

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from tests.agents.api.conftest import throttle_rates
from tests.factories import AgentFactory, UserFactory

pytestmark = pytest.mark.django_db


def assert_envelope(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_a_token_is_issued_for_a_valid_password_and_authenticates_requests(anon_client):
    UserFactory(username="carol", password="a-long-password-1")

    response = anon_client.post(
        "/api/v1/auth/token/", {"username": "carol", "password": "a-long-password-1"}, format="json"
    )

    assert response.status_code == 200
    token = response.json()["token"]
    assert len(token) == 40
    again = anon_client.post(
        "/api/v1/auth/token/", {"username": "carol", "password": "a-long-password-1"}, format="json"
    )
    assert again.json()["token"] == token
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/agents/").status_code == 200


@pytest.mark.parametrize(
    "body",
    [{"username": "carol", "password": "wrong"}, {"username": "nobody", "password": "a-long-password-1"}],
)
def test_wrong_credentials_get_one_indistinguishable_401(anon_client, body):
    UserFactory(username="carol", password="a-long-password-1")

    response = anon_client.post("/api/v1/auth/token/", body, format="json")

    error = assert_envelope(response, 401, "invalid_credentials")
    assert response["WWW-Authenticate"] == "Token"
    assert error["message"] == "Unable to log in with the provided credentials."


def test_token_request_fields_are_validated(anon_client):
    error = assert_envelope(
        anon_client.post("/api/v1/auth/token/", {"username": 5}, format="json"), 400, "invalid"
    )
    assert set(error["fields"]) == {"username", "password"}


def test_session_auth_works_for_a_logged_in_browser(alice):
    client = APIClient()
    client.force_login(alice)
    assert client.get("/api/v1/agents/").status_code == 200


def test_no_credentials_is_401_with_the_scheme_to_use(anon_client):
    response = anon_client.get("/api/v1/agents/")
    assert_envelope(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"


def test_a_bad_token_is_401(anon_client):
    anon_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert_envelope(anon_client.get("/api/v1/agents/"), 401, "authentication_failed")


def test_unknown_api_path_is_a_json_404(alice_client):
    assert_envelope(alice_client.get("/api/v1/nothing-here/"), 404, "not_found")


def test_a_non_api_path_keeps_django_html_404(alice_client):
    response = alice_client.get("/no-such-page/")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_wrong_method_is_a_json_405(alice_client):
    response = alice_client.put("/api/v1/agents/", {}, format="json")
    assert_envelope(response, 405, "method_not_allowed")
    assert "GET" in response["Allow"]


def test_a_form_body_is_415(alice_client):
    response = alice_client.post("/api/v1/agents/", {"name": "x"})  # multipart
    assert_envelope(response, 415, "unsupported_media_type")


def test_malformed_json_is_400(alice_client):
    response = alice_client.generic("POST", "/api/v1/agents/", b'{"name": ', content_type="application/json")
    assert_envelope(response, 400, "parse_error")


def test_invalid_utf8_in_the_body_is_400(alice_client):
    response = alice_client.generic(
        "POST", "/api/v1/agents/", b'{"name": "\xff\xfe"}', content_type="application/json"
    )
    assert_envelope(response, 400, "parse_error")


def test_a_body_over_the_size_limit_is_400_not_500(alice_client, alice):
    from tests.factories import AgentFactory

    agent = AgentFactory(owner=alice)
    huge = b'{"input_data": {"task": "' + b"x" * 2_000_000 + b'"}}'
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1_000_000):
        response = alice_client.generic(
            "POST", f"/api/v1/agents/{agent.agent_id}/execute/", huge, content_type="application/json"
        )
        assert_envelope(response, 400, "request_too_large")
        response = alice_client.generic("POST", "/api/v1/agents/", huge, content_type="application/json")
        assert_envelope(response, 400, "request_too_large")


@throttle_rates(user="3/min")
def test_too_many_requests_is_429_with_retry_after(alice_client, bob_client):
    for _ in range(3):
        assert alice_client.get("/api/v1/agents/").status_code == 200

    response = alice_client.get("/api/v1/agents/")

    assert_envelope(response, 429, "throttled")
    assert 1 <= int(response["Retry-After"]) <= 60
    # Per user: bob has his own budget.
    assert bob_client.get("/api/v1/agents/").status_code == 200


@throttle_rates(anon="2/min")
def test_the_token_endpoint_is_rate_limited_per_client_address(anon_client):
    for _ in range(2):
        anon_client.post("/api/v1/auth/token/", {"username": "x", "password": "y"}, format="json")
    response = anon_client.post("/api/v1/auth/token/", {"username": "x", "password": "y"}, format="json")
    assert_envelope(response, 429, "throttled")
    assert "Retry-After" in response


def test_an_unexpected_error_is_a_500_envelope_without_details(alice_client, monkeypatch, caplog):
    from apps.agents.api import views

    def explode(*args, **kwargs):
        raise RuntimeError("secret internals sk-test-SECRET-1234567890 at /srv/app.py line 3")

    monkeypatch.setattr(views, "agents_visible_to", explode)

    response = alice_client.get("/api/v1/agents/")

    error = assert_envelope(response, 500, "server_error")
    assert error["message"] == "Internal server error."
    assert b"SECRET" not in response.content and b"Traceback" not in response.content
    assert "unhandled error" in caplog.text  # the details go to the log


def test_django_level_500_for_api_paths_is_json(rf):
    from apps.agents.api.exceptions import json_server_error

    response = json_server_error(rf.get("/api/v1/agents/"))
    assert response.status_code == 500
    assert b'"server_error"' in response.content


def test_schema_and_docs_are_served_with_the_execute_examples(anon_client):
    schema = anon_client.get("/api/schema/?format=json")
    docs = anon_client.get("/api/docs/")

    assert schema.status_code == 200 and docs.status_code == 200
    assert b"swagger-ui" in docs.content
    execute = schema.json()["paths"]["/api/v1/agents/{id}/execute/"]["post"]
    assert {"200", "202", "400", "401", "404", "429", "502", "504"} <= set(execute["responses"])
    assert "text/event-stream" in execute["responses"]["200"]["content"]
    for event in ("execution.created", "output.delta", "platform.fallback", "execution.completed"):
        assert event in execute["description"]
    assert execute["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorEnvelope"
    )
    assert "SynchronousRun" in execute["requestBody"]["content"]["application/json"]["examples"]


def test_the_schema_states_what_the_server_refuses(anon_client, alice_client, alice):
    """Found by the full schemathesis run: a request the schema called valid was refused (400), or the
    reverse. Each constraint below is what the server checks, written into the schema."""
    import re

    from apps.agents.api.schema import NON_BLANK_TEXT_PATTERN
    from apps.agents.catalog.slugs import catalog_slugs

    schema = anon_client.get("/api/schema/?format=json").json()
    execute = schema["paths"]["/api/v1/agents/{id}/execute/"]["post"]
    [key] = [p for p in execute["parameters"] if p["name"] == "Idempotency-Key"]
    assert key["schema"] == {"type": "string", "maxLength": 255, "pattern": "^[ -~]*$"}
    agent_id = schema["components"]["schemas"]["AgentInputRequest"]["properties"]["agent_id"]
    assert agent_id["not"] == {"enum": sorted(catalog_slugs())}
    listing = schema["paths"]["/api/v1/executions/"]["get"]["parameters"]
    [cursor] = [p for p in listing if p["name"] == "cursor"]
    assert cursor["schema"]["pattern"] == "^[^\\u0000]*$"
    # "Blank" is Python's whitespace (str.strip) in both regex dialects: no \s, whose sets differ.
    assert "\\s" not in NON_BLANK_TEXT_PATTERN
    for char in map(chr, range(0x3100)):
        if 0xD800 <= ord(char) < 0xE000 or char == "\0":
            continue
        assert bool(re.search(NON_BLANK_TEXT_PATTERN, char)) == (not char.isspace()), hex(ord(char))
    agent = AgentFactory(owner=alice)
    blank = alice_client.post(
        f"/api/v1/agents/{agent.agent_id}/execute/", {"input_data": {"task": "\u0085"}}, format="json"
    )
    assert blank.status_code == 400 and "input_data.task" in blank.json()["error"]["fields"]


@pytest.fixture
def runnable(alice):  # type: ignore[no-untyped-def]
    return AgentFactory(owner=alice, agent_id="helper", preferred_platform="openai", max_retries=0)


def run(client):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/agents/helper/execute/", {"input_data": {"task": "hi"}}, format="json")


@throttle_rates(execute="2/min")
def test_runs_are_limited_by_the_rate_of_runs(fake_registry, alice_client, runnable):
    assert [run(alice_client).status_code for _ in range(2)] == [200, 200]
    response = run(alice_client)
    assert_envelope(response, 429, "throttled")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert alice_client.get("/api/v1/agents/").status_code == 200  # other requests: the user's rate only


@throttle_rates(user="3/min")
def test_a_run_counts_against_the_users_rate_too(fake_registry, alice_client, runnable):
    assert [run(alice_client).status_code for _ in range(2)] == [200, 200]
    assert alice_client.get("/api/v1/agents/").status_code == 200
    assert_envelope(alice_client.get("/api/v1/agents/"), 429, "throttled")
    assert_envelope(run(alice_client), 429, "throttled")
