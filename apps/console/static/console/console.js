// The console page: pick an agent and run it with live output (SSE read from a fetch() body, since the
// execute endpoint is a POST), then the execution list, one execution's details, and the agent's stats.
// Everything goes through the REST API with the session cookie and the CSRF token.

import { apiFetch, apiJSON, errorFrom } from "./api.js";
import { fillList, h, platformText, setText, shortId, tokensText } from "./dom.js";
import { ExecutionDialog, ExecutionList, cancelExecution } from "./executions.js";
import { formatCost, formatOutput, formatSeconds } from "./format.js";
import { readEventStream } from "./sse.js";
import { StatsPanel } from "./stats.js";
import { UsagePanel } from "./usage.js";

const root = document.getElementById("console");
const API = root.dataset.apiRoot;
const STORED_AGENT = "console.agent";

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("run-form"),
  agent: $("agent-select"),
  agentDescription: $("agent-description"),
  agentTools: $("agent-tools"),
  task: $("task-input"),
  run: $("run-button"),
  stop: $("stop-button"),
  status: $("run-status"),
  error: $("run-error"),
  notes: $("run-notes"),
  output: $("run-output"),
  summary: $("run-summary"),
  onlyAgent: $("only-agent"),
  refresh: $("refresh-button"),
};

let agents = new Map(); // agent_id -> agent, as the API lists them
let currentRun = null; // {executionId, controller, terminal} while a run streams

const selectedAgent = () => agents.get(ui.agent.value) ?? null;
const dialog = new ExecutionDialog(API, () => list.load());
const list = new ExecutionList(
  API,
  () => (ui.onlyAgent.checked ? (selectedAgent()?.agent_id ?? null) : null),
  (id, opener) => dialog.open(id, opener),
);
const stats = new StatsPanel(API, root.dataset.dailyUrl, Number(root.dataset.chartDays) || 14);
const usage = new UsagePanel(API);

// ------------------------------------------------------------------------------------------ agents
async function loadAgents() {
  const found = [];
  let url = `${API}agents/?page_size=200`;
  while (url) {
    const page = await apiJSON(url);
    found.push(...page.results);
    url = page.next;
  }
  agents = new Map(found.map((agent) => [agent.agent_id, agent]));
  if (found.length === 0) {
    ui.agent.replaceChildren(h("option", { value: "" }, "No agents yet"));
    setText(ui.agentDescription, "Create one with POST /api/v1/agents/ or run manage.py seed_agents.");
    ui.run.disabled = true;
    return;
  }
  ui.agent.replaceChildren(
    ...found.map((agent) =>
      h(
        "option",
        { value: agent.agent_id, disabled: !agent.is_active },
        agent.is_active ? agent.name : `${agent.name} (inactive)`,
      ),
    ),
  );
  const wanted = new URLSearchParams(location.search).get("agent") ?? localStorage.getItem(STORED_AGENT);
  const initial = agents.get(wanted)?.is_active ? wanted : found.find((agent) => agent.is_active)?.agent_id;
  if (initial) ui.agent.value = initial;
  onAgentChange({ remember: false });
}

function onAgentChange({ remember = true } = {}) {
  const agent = selectedAgent();
  setText(ui.agentDescription, agent?.description || "");
  setText(ui.agentTools, agent?.tools?.length ? `Tools: ${agent.tools.join(", ")}` : "");
  if (agent && remember) localStorage.setItem(STORED_AGENT, agent.agent_id);
  stats.load(agent);
  if (ui.onlyAgent.checked) list.load();
}

// ------------------------------------------------------------------------------------------ the run panel
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
  // Follow the text as it grows, unless the reader has scrolled up to read something.
  const atBottom = ui.output.scrollHeight - ui.output.scrollTop - ui.output.clientHeight < 24;
  ui.output.append(text);
  ui.output.dataset.deltas = String(Number(ui.output.dataset.deltas) + 1);
  if (atBottom) ui.output.scrollTop = ui.output.scrollHeight;
}

function showSummary(body) {
  const id = body.execution_id ?? body.id;
  const open = h("button", { type: "button", class: "link-button" }, shortId(id));
  open.addEventListener("click", () => dialog.open(id, open));
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
    // the reason is already on screen; the summary is a bonus
  }
}

function handleEvent(run, message) {
  let data = {};
  try {
    data = JSON.parse(message.data);
  } catch {
    // keep going: one unreadable event must not end the run's display
  }
  switch (message.event) {
    case "execution.created":
      run.executionId = data.execution_id;
      setStatus(`Running… (execution ${shortId(data.execution_id)})`);
      list.load();
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
      // A structured agent's output is parsed JSON: show it indented rather than as streamed.
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
  if (currentRun) return;
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
  currentRun = run;
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
    // A refusal (invalid input, inactive agent, rate limit) is a JSON error before any stream starts.
    if (!response.ok) throw await errorFrom(response);
    await readEventStream(response.body, (message) => handleEvent(run, message));
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
    currentRun = null;
    setRunning(false);
    list.load();
    stats.load(selectedAgent());
    usage.load();
  }
}

async function stopRun() {
  const run = currentRun;
  if (!run) return;
  ui.stop.disabled = true;
  setStatus("Cancelling…");
  if (!run.executionId) {
    // Not created yet: dropping the request is the cancel (the server records the run as cancelled).
    run.controller.abort();
    return;
  }
  try {
    // The stream then ends with execution.cancelled, once the engine has closed the provider request.
    await cancelExecution(API, run.executionId);
  } catch (error) {
    ui.stop.disabled = false;
    setText(ui.error, error.message);
  }
}

// ------------------------------------------------------------------------------------------ wiring
ui.form.addEventListener("submit", runAgent);
ui.task.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) ui.form.requestSubmit();
});
ui.stop.addEventListener("click", stopRun);
ui.agent.addEventListener("change", () => onAgentChange());
ui.onlyAgent.addEventListener("change", () => list.load());
ui.refresh.addEventListener("click", () => {
  list.load();
  stats.load(selectedAgent());
  usage.load();
});

root.dataset.ready = "loading";
try {
  await loadAgents();
} catch (error) {
  setText(ui.error, `Could not load agents: ${error.message}`);
}
await Promise.all([list.load(), usage.load()]);
root.dataset.ready = "true";
