// The selected agent's numbers (GET /api/v1/agents/{id}/stats/) and its chart of executions per day (the
// console's own endpoint, since the stats endpoint has no per-day counts).

import { apiJSON } from "./api.js";
import { renderDailyChart } from "./chart.js";
import { setText } from "./dom.js";
import { formatCost, formatInt, formatPercent, formatSeconds } from "./format.js";

export class StatsPanel {
  constructor(api, dailyUrl, days) {
    this.api = api;
    this.dailyUrl = dailyUrl; // contains the placeholder "__agent__"
    this.days = days;
    this.title = document.getElementById("stats-agent");
    this.numbers = document.getElementById("stats-numbers");
    this.chart = document.getElementById("daily-chart");
    this.error = document.getElementById("stats-error");
    this.token = 0;
  }

  set(name, text) {
    const cell = this.numbers.querySelector(`[data-stat="${name}"]`);
    if (cell) cell.textContent = text;
  }

  async load(agent) {
    const token = ++this.token;
    if (!agent) return;
    this.title.textContent = `· ${agent.name}`;
    const key = encodeURIComponent(agent.agent_id);
    try {
      const [stats, daily] = await Promise.all([
        apiJSON(`${this.api}agents/${key}/stats/`),
        apiJSON(`${this.dailyUrl.replace("__agent__", key)}?days=${this.days}`),
      ]);
      if (token !== this.token) return; // the selection changed while this was loading
      this.set("total", formatInt(stats.total));
      this.set("success_rate", formatPercent(stats.success_rate));
      this.set("p50_execution_time", formatSeconds(stats.p50_execution_time));
      this.set("p95_execution_time", formatSeconds(stats.p95_execution_time));
      this.set("tokens_used", formatInt(stats.tokens_used));
      this.set("cost", formatCost(stats.cost));
      renderDailyChart(this.chart, daily.days);
      setText(this.error, "");
    } catch (error) {
      if (token === this.token) setText(this.error, `Could not load stats: ${error.message}`);
    }
  }
}
