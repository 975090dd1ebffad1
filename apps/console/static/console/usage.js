// The caller's budgets (GET /api/v1/usage/): spend and holds of the current period against each limit.

import { apiJSON } from "./api.js";
import { h, setText } from "./dom.js";
import { formatCost, formatDateTime, formatInt } from "./format.js";

function limitText(used, held, limit, format) {
  const spent = format(used);
  const holding = held > 0 ? ` (+${format(held)} held)` : "";
  return limit === null ? `${spent}${holding} · no limit` : `${spent}${holding} of ${format(limit)}`;
}

function share(used, held, limit) {
  if (limit === null || Number(limit) <= 0) return null;
  return Math.min(1, (Number(used) + Number(held)) / Number(limit));
}

export class UsagePanel {
  constructor(api) {
    this.url = `${api}usage/`;
    this.body = document.querySelector("#usage-table tbody");
    this.empty = document.getElementById("usage-empty");
    this.error = document.getElementById("usage-error");
  }

  row(budget) {
    const usd = limitText(budget.spent_usd, budget.reserved_usd, budget.limit_usd, formatCost);
    const tokens = limitText(budget.spent_tokens, budget.reserved_tokens, budget.limit_tokens, formatInt);
    const runs = budget.max_concurrent === null ? "no limit" : `${budget.active_runs} of ${budget.max_concurrent}`;
    const used = share(budget.spent_usd, budget.reserved_usd, budget.limit_usd) ??
      share(budget.spent_tokens, budget.reserved_tokens, budget.limit_tokens);
    const meter = used === null ? "" : h("meter", { min: "0", max: "1", value: String(used), title: `${Math.round(used * 100)} %` });
    const resets = budget.resets_at ? formatDateTime(budget.resets_at) : "never";
    return h("tr", {}, h("td", {}, budget.name), h("td", {}, usd), h("td", {}, tokens), h("td", {}, runs),
      h("td", {}, meter), h("td", {}, resets));
  }

  async load() {
    try {
      const { budgets } = await apiJSON(this.url);
      this.body.replaceChildren(...budgets.map((budget) => this.row(budget)));
      this.empty.hidden = budgets.length > 0;
      setText(this.error, "");
    } catch (error) {
      setText(this.error, `Could not load usage: ${error.message}`);
    }
  }
}
