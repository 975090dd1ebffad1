// The console page: pick an agent, run it with live output (SSE over fetch), list executions, open one with
// its attempts, cancel a running one, and show the selected agent's stats with a chart of runs per day.
// Everything goes through the REST API with the session cookie; the only other endpoint is the per-day counts.

import { apiFetch, apiJSON, errorFrom } from "./api.js";
import { renderDailyChart } from "./chart.js";
import {
  LIVE_STATUSES,
  formatCost,
  formatDateTime,
  formatInt,
  formatOutput,
  formatPercent,
  formatSeconds,
} from "./format.js";
import { readEventStream } from "./sse.js";

const root = document.getElementById("console");
const API = root.dataset.apiRoot;
const DAILY_URL = root.dataset.dailyUrl;
const CHART_DAYS = Number(root.dataset.chartDays) || 14;
const PAGE_SIZE = 20;
const LIST_POLL_MS = 2000;
const DIALOG_POLL_MS = 1000;
const STORED_AGENT = "console.agent";

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("run-form"),
  agent: $("agent-select"),
  agentDescription: $("agent-description"),
  task: $("task-input"),
  run: $("run-button"),
  stop: $("stop-button"),
  status: $("run-status"),
  error: $("run-error"),
  notes: $("run-notes"),
  output: $("run-output"),
  summary: $("run-summary"),
  statsAgent: $("stats-agent"),
  statsNumbers: $("stats-numbers"),
  statsError: $("stats-error"),
  chart: $("daily-chart"),
  onlyAgent: $("only-agent"),
  refresh: $("refresh-button"),
  rows: document.querySelector("#executions-table tbody"),
  empty: $("executions-empty"),
  listError: $("executions-error"),
  more: $("more-button"),
  dialog: $("execution-dialog"),
  dialogTitle: $("execution-title"),
  dialogClose: $("dialog-close"),
  dialogError: $("dialog-error"),
  dialogFields: $("execution-fields"),
  dialogCancel: $("dialog-cancel"),
  dialogInput: $("execution-input"),
  dialogOutput: $("execution-output"),
  attempts: document.querySelector("#attempts-table tbody"),
  attemptsEmpty: $("attempts-empty"),
};

const state = {
  agents: new Map(), // agent_id -> agent
  run: null, // {executionId, controller, terminal}
  nextPage: null,
  pagesLoaded: 0,
  listTimer: null,
  statsToken: 0,
  dialogId: null,
  dialogTimer: null,
  dialogOpener: null,
};

// ------------------------------------------------------------------------------------------ small helpers
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key.startsWith("data-")) element.setAttribute(key, value);
    else if (key in element) element[key] = value;
    else element.setAttribute(key, value);
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

function setText(element, text) {
  element.textContent = text ?? "";
  element.hidden = !text;
}

const shortId = (id) => String(id).slice(0, 8);

function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

function fillList(dl, pairs) {
  dl.replaceChildren(
    ...pairs
      .filter(([, value]) => value !== null && value !== undefined && value !== "")
      .map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))),
  );
}

function tokensText(input, output) {
  return `${formatInt(input)} / ${formatInt(output)}`;
}

function platformText(platform, model) {
  return [platform, model].filter(Boolean).join(" / ") || "–";
}

// ------------------------------------------------------------------------------------------ agents
async function loadAgents() {
  const agents = [];
  let url = `${API}agents/?page_size=200`;
  while (url) {
    const page = await apiJSON(url);
    agents.push(...page.results);
    url = page.next;
  }
  state.agents = new Map(agents.map((agent) => [agent.agent_id, agent]));
  if (agents.length === 0) {
    ui.agent.replaceChildren(h("option", { value: "" }, "No agents yet"));
    setText(ui.agentDescription, "Create one with the API (POST /api/v1/agents/) or run manage.py seed_agents.");
    ui.run.disabled = true;
    return;
  }
  ui.agent.replaceChildren(
    ...agents.map((agent) =>
      h(
        "option",
        { value: agent.agent_id, disabled: !agent.is_active },
        agent.is_active ? agent.name : `${agent.name} (inactive)`,
      ),
    ),
  );
  const wanted = new URLSearchParams(location.search).get("agent") ?? localStorage.getItem(STORED_AGENT);
  const initial = state.agents.get(wanted)?.is_active ? wanted : agents.find((a) => a.is_active)?.agent_id;
  if (initial) ui.agent.value = initial;
  onAgentChange({ remember: false });
}

function selectedAgent() {
  return state.agents.get(ui.agent.value) ?? null;
}

function onAgentChange({ remember = true } = {}) {
  const agent = selectedAgent();
  setText(ui.agentDescription, agent?.description || "");
  if (agent && remember) localStorage.setItem(STORED_AGENT, agent.agent_id);
  loadStats();
  if (ui.onlyAgent.checked) loadExecutions();
}

// ------------------------------------------------------------------------------------------ running
function resetRunView() {
  ui.output.replaceChildren();
  ui.output.dataset.deltas = "0";
  ui.notes.replaceChildren();
  ui.summary.replaceChildren();
  ui.summary.hidden = true;
  setText(ui.error, "");
}

function setRunning(running) {
  ui.run.disabled = running;
  ui.agent.disabled = running;
  ui.stop.hidden = !running;
  ui.stop.disabled = false;
  ui.form.setAttribute("aria-busy", String(running));
}

function setStatus(text) {
  ui.status.textContent = text;
}

function addNote(text) {
  ui.notes.append(h("li", {}, text));
}

function appendOutput(text) {
  const atBottom = ui.output.scrollHeight - ui.output.scrollTop - ui.output.clientHeight < 24;
  ui.output.append(text);
  ui.output.dataset.deltas = String(Number(ui.output.dataset.deltas) + 1);
  if (atBottom) ui.output.scrollTop = ui.output.scrollHeight;
}

function showSummary(body) {
  const id = body.execution_id ?? body.id;
  const open = h("button", { type: "button", class: "link-button" }, shortId(id));
  open.addEventListener("click", () => openExecution(id, open));
  fillList(ui.summary, [
    ["Tokens in / out", tokensText(body.input_tokens, body.output_tokens)],
    ["Cost", formatCost(body.cost)],
    ["Time", formatSeconds(body.execution_time)],
    ["Platform", platformText(body.platform_used, body.model_used)],
    ["Execution", open],
  ]);
  ui.summary.hidden = false;
}

async function summariseFromRecord(executionId) {
  // A failed or cancelled event carries only the reason; the recorded row has the tokens, cost and time.
  try {
    showSummary(await apiJSON(`${API}executions/${executionId}/`));
  } catch {
    // the error is already on screen; the summary is a bonus
  }
}

function parseData(message) {
  try {
    return JSON.parse(message.data);
  } catch {
    return {};
  }
}

function handleEvent(message) {
  const run = state.run;
  const data = parseData(message);
  switch (message.event) {
    case "execution.created":
      run.executionId = data.execution_id;
      setStatus(`Running… (execution ${shortId(data.execution_id)})`);
      loadExecutions();
      break;
    case "output.delta":
      appendOutput(data.text ?? "");
      break;
    case "platform.fallback":
      addNote(`Switched from ${data.from} to ${data.to}: ${data.reason}`);
      break;
    case "tool.call":
      addNote(`Tool call: ${data.tool}(${JSON.stringify(data.arguments ?? {})})`);
      break;
    case "tool.result":
      addNote(`Tool ${data.tool} ${data.is_error ? "failed" : "answered"}.`);
      break;
    case "execution.completed":
      run.terminal = true;
      if (typeof data.output !== "string") ui.output.textContent = formatOutput(data.output);
      showSummary(data);
      setStatus(`Completed in ${formatSeconds(data.execution_time)}.`);
      break;
    case "execution.failed":
      run.terminal = true;
      setStatus("Failed.");
      setText(ui.error, `${data.error?.code ?? "error"}: ${data.error?.message ?? "the run failed"}`);
      if (run.executionId) summariseFromRecord(run.executionId);
      break;
    case "execution.cancelled":
      run.terminal = true;
      setStatus("Cancelled.");
      if (run.executionId) summariseFromRecord(run.executionId);
      break;
    default:
      break; // an event this page does not know yet
  }
}

async function runAgent(event) {
  event.preventDefault();
  if (state.run) return;
  const agent = selectedAgent();
  const task = ui.task.value;
  setText(ui.error, "");
  if (!agent) {
    setText(ui.error, "Pick an agent first.");
    ui.agent.focus();
    return;
  }
  if (!task.trim()) {
    setText(ui.error, "Type a task for the agent.");
    ui.task.focus();
    return;
  }
  const run = { executionId: null, controller: new AbortController(), terminal: false };
  state.run = run;
  resetRunView();
  setRunning(true);
  setStatus(`Starting ${agent.name}…`);
  try {
    const response = await apiFetch(`${API}agents/${encodeURIComponent(agent.agent_id)}/execute/`, {
      method: "POST",
      json: { input_data: { task }, stream: true },
      headers: { Accept: "text/event-stream" },
      signal: run.controller.signal,
    });
    if (!response.ok) throw await errorFrom(response);
    await readEventStream(response.body, handleEvent);
    if (!run.terminal) {
      setStatus("Disconnected.");
      setText(ui.error, "The stream ended before the run finished; its outcome is in the list below.");
    }
  } catch (error) {
    if (error.name === "AbortError") {
      setStatus("Cancelled.");
    } else {
      setStatus(run.executionId ? "Disconnected." : "Not started.");
      setText(ui.error, error.message);
    }
  } finally {
    state.run = null;
    setRunning(false);
    loadExecutions();
    loadStats();
  }
}

async function stopRun() {
  const run = state.run;
  if (!run) return;
  ui.stop.disabled = true;
  setStatus("Cancelling…");
  if (!run.executionId) {
    // Not created yet: dropping the request is the cancel (the server records the run as cancelled).
    run.controller.abort();
    return;
  }
  try {
    await cancelExecution(run.executionId);
    // The stream ends with execution.cancelled once the engine has stopped the provider call.
  } catch (error) {
    ui.stop.disabled = false;
    setText(ui.error, error.message);
  }
}

function cancelExecution(executionId) {
  return apiJSON(`${API}executions/${executionId}/cancel/`, { method: "POST" });
}

// ------------------------------------------------------------------------------------------ executions
function executionRow(execution) {
  const open = h(
    "button",
    { type: "button", class: "link-button", "aria-label": `Open execution ${shortId(execution.id)}` },
    "Open",
  );
  open.addEventListener("click", () => openExecution(execution.id, open));
  const created = h("time", { dateTime: execution.created_at }, formatDateTime(execution.created_at));
  return h(
    "tr",
    { "data-execution-id": execution.id, "data-status": execution.status },
    h("td", {}, created),
    h("td", {}, execution.agent || "–"),
    h("td", {}, statusBadge(execution.status)),
    h("td", { class: "num" }, tokensText(execution.input_tokens, execution.output_tokens)),
    h("td", { class: "num" }, formatCost(execution.cost)),
    h("td", { class: "num" }, formatSeconds(execution.execution_time)),
    h("td", {}, platformText(execution.platform_used, execution.model_used)),
    h("td", {}, open),
  );
}

async function loadExecutions({ more = false } = {}) {
  clearTimeout(state.listTimer);
  let url = state.nextPage;
  if (!more) {
    const params = new URLSearchParams({ page_size: String(PAGE_SIZE) });
    const agent = selectedAgent();
    if (ui.onlyAgent.checked && agent) params.set("agent", agent.agent_id);
    url = `${API}executions/?${params}`;
  }
  try {
    const page = await apiJSON(url);
    const rows = page.results.map(executionRow);
    if (more) ui.rows.append(...rows);
    else ui.rows.replaceChildren(...rows);
    state.pagesLoaded = more ? state.pagesLoaded + 1 : 1;
    state.nextPage = page.next;
    ui.more.hidden = !page.next;
    ui.empty.hidden = ui.rows.children.length > 0;
    setText(ui.listError, "");
  } catch (error) {
    setText(ui.listError, `Could not load executions: ${error.message}`);
  }
  // While something is still running, keep the first page fresh (not once more pages are open: the user is
  // reading them).
  const live = [...ui.rows.children].some((row) => LIVE_STATUSES.has(row.dataset.status));
  if (live && state.pagesLoaded === 1) state.listTimer = setTimeout(loadExecutions, LIST_POLL_MS);
}

// ------------------------------------------------------------------------------------------ one execution
async function openExecution(executionId, opener) {
  state.dialogId = executionId;
  state.dialogOpener = opener ?? document.activeElement;
  ui.dialogTitle.textContent = `Execution ${shortId(executionId)}`;
  ui.dialogFields.replaceChildren();
  ui.attempts.replaceChildren();
  ui.dialogInput.textContent = "";
  ui.dialogOutput.textContent = "";
  setText(ui.dialogError, "");
  ui.dialogCancel.hidden = true;
  if (!ui.dialog.open) ui.dialog.showModal();
  await refreshDialog();
}

function attemptRow(attempt, index) {
  return h(
    "tr",
    {},
    h("td", {}, String(index + 1)),
    h("td", {}, attempt.platform),
    h("td", {}, attempt.model || "–"),
    h("td", {}, attempt.status === "ok" ? statusBadge("ok") : h("span", { class: "badge status-failed" }, attempt.status)),
    h("td", { class: "num" }, formatSeconds(attempt.latency_ms / 1000)),
    h("td", { class: "num" }, tokensText(attempt.input_tokens ?? 0, attempt.output_tokens ?? 0)),
    h("td", {}, [attempt.http_status, attempt.error].filter(Boolean).join(" ") || "–"),
  );
}

async function refreshDialog() {
  clearTimeout(state.dialogTimer);
  const executionId = state.dialogId;
  if (!executionId || !ui.dialog.open) return;
  let execution;
  try {
    execution = await apiJSON(`${API}executions/${executionId}/`);
  } catch (error) {
    setText(ui.dialogError, error.message);
    return;
  }
  if (state.dialogId !== executionId) return; // another one was opened meanwhile
  const live = LIVE_STATUSES.has(execution.status);
  fillList(ui.dialogFields, [
    ["Status", statusBadge(execution.status)],
    ["Agent", execution.agent],
    ["Mode", execution.mode],
    ["Platform", platformText(execution.platform_used, execution.model_used)],
    ["Tokens in / out", tokensText(execution.input_tokens, execution.output_tokens)],
    ["Cost", formatCost(execution.cost)],
    ["Time", formatSeconds(execution.execution_time)],
    ["Created", formatDateTime(execution.created_at)],
    ["Started", execution.started_at ? formatDateTime(execution.started_at) : null],
    ["Finished", execution.finished_at ? formatDateTime(execution.finished_at) : null],
    ["Error", execution.error ? `${execution.error.code}: ${execution.error.message}` : null],
    ["Conversation", execution.conversation],
    ["Execution id", h("code", {}, execution.id)],
  ]);
  const input = execution.input_data ?? {};
  ui.dialogInput.textContent = input.task ?? input.message ?? JSON.stringify(input, null, 2);
  ui.dialogOutput.textContent = formatOutput(execution.output) || (live ? "(still running)" : "(no output)");
  ui.attempts.replaceChildren(...(execution.attempts ?? []).map(attemptRow));
  ui.attemptsEmpty.hidden = (execution.attempts ?? []).length > 0;
  ui.dialogCancel.hidden = !live;
  ui.dialogCancel.disabled = Boolean(execution.cancel_requested_at);
  if (live) state.dialogTimer = setTimeout(refreshDialog, DIALOG_POLL_MS);
}

async function cancelFromDialog() {
  const executionId = state.dialogId;
  ui.dialogCancel.disabled = true;
  try {
    await cancelExecution(executionId);
  } catch (error) {
    setText(ui.dialogError, error.message);
  }
  await refreshDialog();
  loadExecutions();
}

function closeDialog() {
  ui.dialog.close();
}

function onDialogClosed() {
  clearTimeout(state.dialogTimer);
  state.dialogId = null;
  const opener = state.dialogOpener;
  state.dialogOpener = null;
  if (opener?.isConnected) opener.focus();
}

// ------------------------------------------------------------------------------------------ stats
function setStat(name, text) {
  const cell = ui.statsNumbers.querySelector(`[data-stat="${name}"]`);
  if (cell) cell.textContent = text;
}

async function loadStats() {
  const agent = selectedAgent();
  const token = ++state.statsToken;
  if (!agent) return;
  ui.statsAgent.textContent = `· ${agent.name}`;
  const key = encodeURIComponent(agent.agent_id);
  try {
    const [stats, daily] = await Promise.all([
      apiJSON(`${API}agents/${key}/stats/`),
      apiJSON(`${DAILY_URL.replace("__agent__", key)}?days=${CHART_DAYS}`),
    ]);
    if (token !== state.statsToken) return; // the selection changed while this was loading
    setStat("total", formatInt(stats.total));
    setStat("success_rate", formatPercent(stats.success_rate));
    setStat("p50_execution_time", formatSeconds(stats.p50_execution_time));
    setStat("p95_execution_time", formatSeconds(stats.p95_execution_time));
    setStat("tokens_used", formatInt(stats.tokens_used));
    setStat("cost", formatCost(stats.cost));
    renderDailyChart(ui.chart, daily.days);
    setText(ui.statsError, "");
  } catch (error) {
    if (token === state.statsToken) setText(ui.statsError, `Could not load stats: ${error.message}`);
  }
}

// ------------------------------------------------------------------------------------------ wiring
ui.form.addEventListener("submit", runAgent);
ui.task.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) ui.form.requestSubmit();
});
ui.stop.addEventListener("click", stopRun);
ui.agent.addEventListener("change", () => onAgentChange());
ui.onlyAgent.addEventListener("change", () => loadExecutions());
ui.refresh.addEventListener("click", () => {
  loadExecutions();
  loadStats();
});
ui.more.addEventListener("click", () => loadExecutions({ more: true }));
ui.dialogClose.addEventListener("click", closeDialog);
ui.dialogCancel.addEventListener("click", cancelFromDialog);
ui.dialog.addEventListener("close", onDialogClosed);

root.dataset.ready = "loading";
try {
  await loadAgents();
} catch (error) {
  setText(ui.error, `Could not load agents: ${error.message}`);
}
await loadExecutions();
root.dataset.ready = "true";
