// The execution list (newest first, "Load more" by cursor) and the details dialog of one execution with its
// attempts, its tool calls and a cancel button while it runs. Both keep polling only while something is still running.

import { apiJSON } from "./api.js";
import { fillList, h, platformText, setText, shortId, statusBadge, tokensText } from "./dom.js";
import { LIVE_STATUSES, formatCost, formatDateTime, formatOutput, formatSeconds } from "./format.js";

const PAGE_SIZE = 20;
const LIST_POLL_MS = 2000;
const DIALOG_POLL_MS = 1000;

export function cancelExecution(api, executionId) {
  return apiJSON(`${api}executions/${executionId}/cancel/`, { method: "POST" });
}

export class ExecutionList {
  /**
   * @param {string} api the API root, "/api/v1/"
   * @param {() => string|null} agentFilter the agent slug to filter by, or null for all
   * @param {(id: string, opener: HTMLElement) => void} onOpen
   */
  constructor(api, agentFilter, onOpen) {
    this.api = api;
    this.agentFilter = agentFilter;
    this.onOpen = onOpen;
    this.rows = document.querySelector("#executions-table tbody");
    this.empty = document.getElementById("executions-empty");
    this.error = document.getElementById("executions-error");
    this.more = document.getElementById("more-button");
    this.nextPage = null;
    this.pagesLoaded = 0;
    this.timer = null;
    this.more.addEventListener("click", () => this.load({ more: true }));
  }

  row(execution) {
    const open = h(
      "button",
      { type: "button", class: "link-button", "aria-label": `Open execution ${shortId(execution.id)}` },
      "Open",
    );
    open.addEventListener("click", () => this.onOpen(execution.id, open));
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

  async load({ more = false } = {}) {
    clearTimeout(this.timer);
    let url = this.nextPage;
    if (!more) {
      const params = new URLSearchParams({ page_size: String(PAGE_SIZE) });
      const agent = this.agentFilter();
      if (agent) params.set("agent", agent);
      url = `${this.api}executions/?${params}`;
    }
    try {
      const page = await apiJSON(url);
      const rows = page.results.map((execution) => this.row(execution));
      if (more) this.rows.append(...rows);
      else this.rows.replaceChildren(...rows);
      this.pagesLoaded = more ? this.pagesLoaded + 1 : 1;
      this.nextPage = page.next;
      this.more.hidden = !page.next;
      this.empty.hidden = this.rows.children.length > 0;
      setText(this.error, "");
    } catch (error) {
      setText(this.error, `Could not load executions: ${error.message}`);
    }
    // While something still runs, keep the first page fresh; not once more pages are open (the user is
    // reading them and a refresh would take them away).
    const live = [...this.rows.children].some((row) => LIVE_STATUSES.has(row.dataset.status));
    if (live && this.pagesLoaded === 1) this.timer = setTimeout(() => this.load(), LIST_POLL_MS);
  }
}

function attemptRow(attempt, index) {
  const result =
    attempt.status === "ok" ? statusBadge("ok") : h("span", { class: "badge status-failed" }, attempt.status);
  return h(
    "tr",
    {},
    h("td", {}, String(index + 1)),
    h("td", {}, attempt.platform),
    h("td", {}, attempt.model || "–"),
    h("td", {}, result),
    h("td", { class: "num" }, formatSeconds(attempt.latency_ms / 1000)),
    h("td", { class: "num" }, tokensText(attempt.input_tokens ?? 0, attempt.output_tokens ?? 0)),
    h("td", {}, [attempt.http_status, attempt.error].filter(Boolean).join(" ") || "–"),
  );
}

function toolCallRow(call, index) {
  const result = call.is_error
    ? h("span", { class: "error-text" }, `error: ${formatOutput(call.result)}`)
    : formatOutput(call.result);
  return h(
    "tr",
    { "data-error": call.is_error ? "true" : null },
    h("td", {}, String(index + 1)),
    h("td", {}, h("code", {}, call.tool)),
    h("td", { class: "wrap" }, h("code", {}, JSON.stringify(call.arguments ?? {}))),
    h("td", { class: "wrap" }, result),
    h("td", { class: "num" }, call.latency_ms === undefined ? "–" : formatSeconds(call.latency_ms / 1000)),
  );
}

export class ExecutionDialog {
  /**
   * @param {string} api the API root
   * @param {() => void} onChange called after a cancel, so the list can refresh
   */
  constructor(api, onChange) {
    this.api = api;
    this.onChange = onChange;
    this.dialog = document.getElementById("execution-dialog");
    this.title = document.getElementById("execution-title");
    this.error = document.getElementById("dialog-error");
    this.fields = document.getElementById("execution-fields");
    this.cancelButton = document.getElementById("dialog-cancel");
    this.input = document.getElementById("execution-input");
    this.output = document.getElementById("execution-output");
    this.attempts = document.querySelector("#attempts-table tbody");
    this.attemptsEmpty = document.getElementById("attempts-empty");
    this.toolCalls = document.querySelector("#tool-calls-table tbody");
    this.toolCallsEmpty = document.getElementById("tool-calls-empty");
    this.executionId = null;
    this.opener = null;
    this.timer = null;
    document.getElementById("dialog-close").addEventListener("click", () => this.dialog.close());
    this.cancelButton.addEventListener("click", () => this.cancel());
    this.dialog.addEventListener("close", () => this.closed());
  }

  async open(executionId, opener) {
    this.executionId = executionId;
    this.opener = opener ?? document.activeElement;
    this.title.textContent = `Execution ${shortId(executionId)}`;
    this.fields.replaceChildren();
    this.attempts.replaceChildren();
    this.toolCalls.replaceChildren();
    this.input.textContent = "";
    this.output.textContent = "";
    setText(this.error, "");
    this.cancelButton.hidden = true;
    if (!this.dialog.open) this.dialog.showModal();
    await this.refresh();
  }

  async refresh() {
    clearTimeout(this.timer);
    const executionId = this.executionId;
    if (!executionId || !this.dialog.open) return;
    let execution;
    try {
      execution = await apiJSON(`${this.api}executions/${executionId}/`);
    } catch (error) {
      setText(this.error, error.message);
      return;
    }
    if (this.executionId !== executionId) return; // another one was opened meanwhile
    this.render(execution);
    if (LIVE_STATUSES.has(execution.status)) this.timer = setTimeout(() => this.refresh(), DIALOG_POLL_MS);
  }

  render(execution) {
    const live = LIVE_STATUSES.has(execution.status);
    fillList(this.fields, [
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
    this.input.textContent = input.task ?? input.message ?? JSON.stringify(input, null, 2);
    this.output.textContent = formatOutput(execution.output) || (live ? "(still running)" : "(no output)");
    const attempts = execution.attempts ?? [];
    this.attempts.replaceChildren(...attempts.map(attemptRow));
    this.attemptsEmpty.hidden = attempts.length > 0;
    const toolCalls = execution.metadata?.tool_calls ?? [];
    this.toolCalls.replaceChildren(...toolCalls.map(toolCallRow));
    this.toolCallsEmpty.hidden = toolCalls.length > 0;
    this.cancelButton.hidden = !live;
    this.cancelButton.disabled = Boolean(execution.cancel_requested_at);
  }

  async cancel() {
    this.cancelButton.disabled = true;
    try {
      await cancelExecution(this.api, this.executionId);
    } catch (error) {
      setText(this.error, error.message);
    }
    await this.refresh();
    this.onChange();
  }

  closed() {
    clearTimeout(this.timer);
    this.executionId = null;
    const opener = this.opener;
    this.opener = null;
    if (opener?.isConnected) opener.focus();
  }
}
