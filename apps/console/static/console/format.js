// Display helpers. Values come from the API as numbers (cost in US dollars, times in seconds).

export function formatCost(value) {
  if (value === null || value === undefined || value === "") return "–";
  const n = Number(value);
  if (!Number.isFinite(n)) return "–";
  if (n === 0) return "$0";
  // Up to 10 decimals (the stored precision), without trailing zeros: $0.0000066, $1.25.
  return "$" + n.toFixed(10).replace(/0+$/, "").replace(/\.$/, "");
}

export function formatSeconds(value) {
  if (value === null || value === undefined) return "–";
  const n = Number(value);
  if (!Number.isFinite(n)) return "–";
  if (n < 1) return `${Math.round(n * 1000)} ms`;
  if (n < 60) return `${n.toFixed(2)} s`;
  const minutes = Math.floor(n / 60);
  return `${minutes} min ${Math.round(n - minutes * 60)} s`;
}

export function formatPercent(value) {
  if (value === null || value === undefined) return "–";
  return `${(Number(value) * 100).toFixed(1).replace(/\.0$/, "")}%`;
}

export function formatInt(value) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en-US");
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

export function formatDateTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : dateTime.format(date);
}

/** Text as it is; structured output (a JSON-schema agent's object) as indented JSON. */
export function formatOutput(output) {
  if (output === null || output === undefined) return "";
  return typeof output === "string" ? output : JSON.stringify(output, null, 2);
}

export const LIVE_STATUSES = new Set(["pending", "running"]);
