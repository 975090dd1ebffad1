"""The web console in a real headless Chromium (Playwright) against the project under uvicorn, with the agents
running on the fake OpenAI server through the real engine. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from apps.agents.models import AgentExecution, ExecutionMode, ExecutionStatus
from tests.console.conftest import artifact, log_in
from tests.factories import AgentFactory, UserFactory
from tests.fakes.server import Fault, Reply

pytestmark = pytest.mark.django_db(transaction=True)

NO_VALUE = "\u2013"  # what the stats show before there is a value
ANSWER = "Shipped: a streaming console, a run_agent command and a chart of runs per day."


@sync_to_async
def make_user_with_agents() -> Any:
    alice = UserFactory(username="alice")
    AgentFactory(
        owner=alice,
        agent_id="release-notes",
        name="Release notes writer",
        description="Turns a list of changes into release notes.",
    )
    AgentFactory(owner=alice, agent_id="triage", name="Support triage")
    return alice


async def start_run(page: Any, agent: str, task: str) -> None:
    await page.get_by_label("Agent", exact=True).select_option(agent)
    await page.get_by_label("Task", exact=True).fill(task)
    await page.get_by_role("button", name="Run", exact=True).click()


async def test_log_in_run_with_live_output_then_find_and_open_the_execution(
    page: Any, fake_registry: Any, fake_openai: Any
) -> None:
    await make_user_with_agents()
    # A pause between words, so that the page can be seen holding part of the answer while the rest is on
    # its way.
    fake_openai.reply(Reply(text=ANSWER, chunk_delay=0.3, input_tokens=42, output_tokens=15))
    await log_in(page, "alice")
    await expect(page.locator("#agent-description")).to_have_text(
        "Turns a list of changes into release notes."
    )

    await start_run(page, "release-notes", "Write release notes for this week")

    output = page.locator("#run-output")
    # Part of the text, and not yet the end of it: the output arrives while the run is still going.
    await page.wait_for_function(
        """() => {
            const text = document.querySelector('#run-output').textContent;
            return text.startsWith('Shipped:') && !text.endsWith('per day.');
        }"""
    )
    await expect(page.locator("#stop-button")).to_be_visible()
    await expect(output).to_have_text(ANSWER)
    await expect(page.locator("#run-status")).to_have_text(re.compile(r"^Completed in "))
    # One output.delta event per streamed word, each appended as it came.
    assert await output.get_attribute("data-deltas") == str(len(ANSWER.split(" ")))
    await expect(page.locator("#stop-button")).to_be_hidden()

    execution = await AgentExecution.objects.aget(agent__agent_id="release-notes")
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.mode == ExecutionMode.STREAM
    assert execution.output == ANSWER
    assert fake_openai.requests[-1].body["stream"] is True

    summary = page.locator("#run-summary")
    await expect(summary).to_contain_text("42 / 15")
    await expect(summary).to_contain_text("openai / gpt-4o-mini")
    cost = f"${execution.cost.normalize():f}"
    await expect(summary).to_contain_text(cost)

    # The execution list shows it with its status, tokens, cost and time.
    row = page.locator(f'#executions-table tbody tr[data-execution-id="{execution.pk}"]')
    await expect(row).to_have_attribute("data-status", "completed")
    await expect(row.locator("td").nth(1)).to_have_text("release-notes")
    await expect(row.locator("td").nth(2)).to_have_text("completed")
    await expect(row.locator("td").nth(3)).to_have_text("42 / 15")
    await expect(row.locator("td").nth(4)).to_have_text(cost)
    await expect(row.locator("td").nth(5)).to_have_text(re.compile(r"^\d+ ms$|^\d+\.\d\d s$"))

    # The agent's stats and the chart of executions per day, today's bar holding this run.
    await expect(page.locator('[data-stat="total"]')).to_have_text("1")
    await expect(page.locator('[data-stat="success_rate"]')).to_have_text("100%")
    await expect(page.locator('[data-stat="p50_execution_time"]')).not_to_have_text(NO_VALUE)
    await expect(page.locator('[data-stat="p95_execution_time"]')).not_to_have_text(NO_VALUE)
    bars = page.locator("#daily-chart svg .day")
    await expect(bars).to_have_count(14)
    await expect(bars.last).to_have_attribute("data-total", "1")
    await expect(bars.last.locator("rect.bar-completed")).to_have_count(1)
    await expect(page.locator("#daily-chart svg desc")).to_contain_text("1 execution in total")

    await page.screenshot(path=artifact("console.png"), full_page=True)

    # Open it: its fields and its attempts.
    await row.get_by_role("button", name=f"Open execution {str(execution.pk)[:8]}").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator("#execution-fields")).to_contain_text(str(execution.pk))
    await expect(dialog.locator("#execution-input")).to_have_text("Write release notes for this week")
    await expect(dialog.locator("#execution-output")).to_have_text(ANSWER)
    attempts = dialog.locator("#attempts-table tbody tr")
    await expect(attempts).to_have_count(1)
    await expect(attempts.first.locator("td").nth(1)).to_have_text("openai")
    await expect(attempts.first.locator("td").nth(3)).to_have_text("ok")
    await expect(dialog.get_by_role("button", name="Cancel execution")).to_be_hidden()
    await page.screenshot(path=artifact("console-execution.png"))

    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()

    assert page.problems.errors == []
    assert page.problems.foreign_requests == []


async def test_cancel_a_running_execution_from_its_details(
    page: Any, fake_registry: Any, fake_openai: Any
) -> None:
    await make_user_with_agents()
    fake_openai.reply(Reply(text=" ".join(["word"] * 400), chunk_delay=0.1))
    await log_in(page, "alice")

    await start_run(page, "triage", "Talk for a long time")
    await expect(page.locator("#run-output")).to_contain_text("word word")

    execution = await AgentExecution.objects.aget(agent__agent_id="triage")
    row = page.locator(f'#executions-table tbody tr[data-execution-id="{execution.pk}"]')
    await expect(row).to_have_attribute("data-status", "running")
    await row.get_by_role("button", name=re.compile("^Open execution")).click()
    dialog = page.get_by_role("dialog")
    await expect(dialog.locator("#execution-fields")).to_contain_text("running")
    await dialog.get_by_role("button", name="Cancel execution").click()

    # The dialog follows the row to its end; the run's own stream ends with execution.cancelled.
    await expect(dialog.locator("#execution-fields .badge")).to_have_text("cancelled")
    await expect(dialog.get_by_role("button", name="Cancel execution")).to_be_hidden()
    await expect(page.locator("#run-status")).to_have_text("Cancelled.")
    await page.keyboard.press("Escape")
    await expect(row).to_have_attribute("data-status", "cancelled")

    await execution.arefresh_from_db()
    assert execution.status == ExecutionStatus.CANCELLED
    assert execution.error_code == "cancelled_by_user"
    # Cancelling closed the request to the provider: the fake saw its client go away mid-stream.
    assert await sync_to_async(fake_openai.wait_for_disconnect)(timeout=10)
    assert page.problems.errors == []


async def test_the_run_panel_cancel_button_stops_its_own_run(
    page: Any, fake_registry: Any, fake_openai: Any
) -> None:
    await make_user_with_agents()
    fake_openai.reply(Reply(text=" ".join(["more"] * 400), chunk_delay=0.1))
    await log_in(page, "alice")

    await start_run(page, "triage", "Talk for a long time")
    await expect(page.locator("#run-output")).to_contain_text("more more")
    await page.get_by_role("button", name="Cancel run").click()

    await expect(page.locator("#run-status")).to_have_text("Cancelled.")
    await expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled()
    # The summary of what the cancelled run used, read back from its record.
    await expect(page.locator("#run-summary")).to_be_visible()
    execution = await AgentExecution.objects.aget(agent__agent_id="triage")
    assert execution.status == ExecutionStatus.CANCELLED
    assert page.problems.errors == []


async def test_a_failed_run_shows_the_providers_error(
    page: Any, fake_registry: Any, fake_openai: Any
) -> None:
    await make_user_with_agents()
    # A 400 is not retried and not sent elsewhere: the run fails with the provider's own message.
    fake_openai.fail(Fault("status", status=400, message="This model does not like the request"))
    await log_in(page, "alice")

    await start_run(page, "triage", "Anything")

    alert = page.locator("#run-error")
    await expect(alert).to_have_attribute("role", "alert")
    await expect(alert).to_contain_text("provider_error")
    await expect(alert).to_contain_text("This model does not like the request")
    await expect(page.locator("#run-status")).to_have_text("Failed.")
    execution = await AgentExecution.objects.aget(agent__agent_id="triage")
    row = page.locator(f'#executions-table tbody tr[data-execution-id="{execution.pk}"]')
    await expect(row).to_have_attribute("data-status", "failed")
    await expect(page.locator('[data-stat="success_rate"]')).to_have_text("0%")
    await expect(page.locator("#daily-chart svg .day").last.locator("rect.bar-failed")).to_have_count(1)


async def test_a_task_is_required_before_anything_is_sent(
    page: Any, fake_registry: Any, fake_openai: Any
) -> None:
    await make_user_with_agents()
    await log_in(page, "alice")

    await page.get_by_role("button", name="Run", exact=True).click()

    await expect(page.locator("#run-error")).to_have_text("Type a task for the agent.")
    await expect(page.get_by_label("Task", exact=True)).to_be_focused()
    assert not await AgentExecution.objects.aexists()
    assert fake_openai.requests == []


async def test_only_the_users_own_executions_are_listed(
    page: Any, fake_registry: Any, fake_openai: Any
) -> None:
    await make_user_with_agents()

    @sync_to_async
    def bobs_run() -> None:
        from tests.factories import ExecutionFactory

        bob = UserFactory(username="bob")
        ExecutionFactory(agent=AgentFactory(owner=bob, agent_id="bobs-agent"), status="completed")

    await bobs_run()
    await log_in(page, "alice")

    await expect(page.locator("#executions-empty")).to_be_visible()
    options = await page.locator("#agent-select option").all_inner_texts()
    assert options == ["Release notes writer", "Support triage"]


async def test_the_sse_reader_handles_any_chunking(page: Any, live_server_url: str) -> None:
    """Events split anywhere (mid-line, between CR and LF, inside a UTF-8 character), comments, multi-line
    data, and an unterminated last event, fed to the console's own parser in the browser."""
    await page.goto("/login/")
    chunks = [
        b"id: 1\r",
        b'\nevent: output.delta\r\ndata: {"te',
        b'xt":"caf\xc3',
        b'\xa9"}\r\n\r',
        b"\n: ping\n\nid: 2\nevent: multi\ndata: line one\ndata: line two\n\n",
        b"data: no event name\n\n",
        b"event: lost\ndata: never terminated",
    ]
    events = await page.evaluate(
        """async (chunks) => {
            const { readEventStream } = await import('/console/assets/sse.js');
            const body = new ReadableStream({
                start(controller) {
                    for (const chunk of chunks) controller.enqueue(new Uint8Array(chunk));
                    controller.close();
                },
            });
            const events = [];
            await readEventStream(body, (event) => events.push(event));
            return events;
        }""",
        [list(chunk) for chunk in chunks],
    )

    assert events == [
        {
            "id": "1",
            "event": "output.delta",
            "data": json.dumps({"text": "café"}, ensure_ascii=False).replace(" ", ""),
        },
        {"id": "2", "event": "multi", "data": "line one\nline two"},
        {"id": "2", "event": "message", "data": "no event name"},
    ]


async def test_an_agents_tools_and_each_tool_call_are_shown(
    page: Any, fake_registry: Any, fake_openai: Any
) -> None:
    alice = await sync_to_async(UserFactory)(username="alice")
    await sync_to_async(AgentFactory)(
        owner=alice, agent_id="maths", name="Maths", tools=["calculator", "current_time"]
    )
    fake_openai.reply(
        Reply(
            text="",
            tool_calls=[
                {"id": "c1", "name": "calculator", "arguments": {"expression": "6 * 7"}},
                {"id": "c2", "name": "current_time", "arguments": {"timezone": "Mars/Olympus"}},
            ],
        )
    )
    fake_openai.reply(text="6 * 7 is 42.")
    await log_in(page, "alice")
    await expect(page.locator("#agent-tools")).to_have_text("Tools: calculator, current_time")

    await start_run(page, "maths", "What is 6 * 7?")
    await expect(page.locator("#run-output")).to_have_text("6 * 7 is 42.")

    execution = await AgentExecution.objects.aget(agent__agent_id="maths")
    row = page.locator(f'#executions-table tbody tr[data-execution-id="{execution.pk}"]')
    await row.get_by_role("button", name=f"Open execution {str(execution.pk)[:8]}").click()
    calls = page.get_by_role("dialog").locator("#tool-calls-table tbody tr")
    await expect(calls).to_have_count(2)
    await expect(calls.nth(0).locator("td").nth(1)).to_have_text("calculator")
    await expect(calls.nth(0).locator("td").nth(2)).to_have_text('{"expression":"6 * 7"}')
    await expect(calls.nth(0).locator("td").nth(3)).to_contain_text('"result": 42')
    await expect(calls.nth(0).locator("td").nth(4)).to_have_text(re.compile(r"^\d+ ms$"))
    await expect(calls.nth(1)).to_have_attribute("data-error", "true")
    await expect(calls.nth(1).locator("td").nth(3)).to_contain_text("error: unknown time zone")
    await page.screenshot(path=artifact("console-tool-calls.png"))
