// Executions per day as an inline SVG bar chart (stacked: completed, failed, other), drawn without a library.
// Each bar has a <title> (a tooltip, and read by screen readers); the chart's own title and description
// summarise it for anyone who cannot see it.

const SVG_NS = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 180;
const MARGIN = { top: 14, right: 6, bottom: 28, left: 30 };
const dayLabel = new Intl.DateTimeFormat("en-US", { month: "short", day: "numeric", timeZone: "UTC" });

function svg(name, attributes = {}, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function utcDate(isoDay) {
  const [year, month, day] = isoDay.split("-").map(Number);
  return new Date(Date.UTC(year, month - 1, day));
}

/** Round numbers for the y axis: at most 4 gridlines, integers only. */
function ticks(max) {
  if (max <= 4) return Array.from({ length: max + 1 }, (_, i) => i);
  const step = Math.ceil(max / 4);
  const top = step * Math.ceil(max / step);
  return Array.from({ length: top / step + 1 }, (_, i) => i * step);
}

/**
 * Replace container's content with the chart of `days` ([{date, total, completed, failed, cancelled}]).
 * @param {HTMLElement} container
 * @param {Array<{date: string, total: number, completed: number, failed: number, cancelled: number}>} days
 * @param {string} idPrefix unique prefix for the title/description ids
 */
export function renderDailyChart(container, days, idPrefix = "daily-chart") {
  const totals = days.map((d) => d.total);
  const sum = totals.reduce((a, b) => a + b, 0);
  const yTicks = ticks(Math.max(1, ...totals));
  const yMax = yTicks[yTicks.length - 1];
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const slot = plotWidth / Math.max(1, days.length);
  const barWidth = Math.max(2, slot * 0.68);
  const y = (value) => MARGIN.top + plotHeight - (value / yMax) * plotHeight;

  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-labelledby": `${idPrefix}-title ${idPrefix}-desc`,
    class: "bar-chart",
    preserveAspectRatio: "xMidYMid meet",
  });
  root.append(svg("title", { id: `${idPrefix}-title` }, `Executions per day, last ${days.length} days`));
  const busiest = days.reduce((best, d) => (d.total > (best?.total ?? 0) ? d : best), null);
  const summary =
    sum === 0
      ? "No executions in this period."
      : `${sum} execution${sum === 1 ? "" : "s"} in total; the busiest day was ` +
        `${dayLabel.format(utcDate(busiest.date))} with ${busiest.total}.`;
  root.append(svg("desc", { id: `${idPrefix}-desc` }, summary));

  const grid = svg("g", { class: "grid", "aria-hidden": "true" });
  for (const tick of yTicks) {
    const lineY = y(tick);
    grid.append(svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: lineY, y2: lineY }));
    grid.append(svg("text", { x: MARGIN.left - 6, y: lineY + 4, "text-anchor": "end" }, String(tick)));
  }
  root.append(grid);

  const bars = svg("g", { class: "bars" });
  const labelEvery = Math.ceil(days.length / 7);
  days.forEach((day, index) => {
    const other = Math.max(0, day.total - day.completed - day.failed);
    const x = MARGIN.left + index * slot + (slot - barWidth) / 2;
    const group = svg("g", { class: "day", "data-date": day.date, "data-total": day.total });
    const label = dayLabel.format(utcDate(day.date));
    group.append(
      svg(
        "title",
        {},
        `${label}: ${day.total} execution${day.total === 1 ? "" : "s"}` +
          (day.total ? ` (${day.completed} completed, ${day.failed} failed, ${other} other)` : ""),
      ),
    );
    let base = 0;
    for (const [value, kind] of [
      [day.completed, "completed"],
      [day.failed, "failed"],
      [other, "other"],
    ]) {
      if (value <= 0) continue;
      const top = y(base + value);
      group.append(
        svg("rect", { class: `bar bar-${kind}`, x, y: top, width: barWidth, height: y(base) - top, rx: 2 }),
      );
      base += value;
    }
    // A transparent full-height target, so that the tooltip also works for short or empty bars.
    group.append(svg("rect", { class: "hit", x: MARGIN.left + index * slot, y: MARGIN.top, width: slot, height: plotHeight }));
    bars.append(group);
    // Counted back from the last day, so that today is always labelled and the spacing stays even.
    if ((days.length - 1 - index) % labelEvery === 0) {
      root.append(
        svg(
          "text",
          { class: "x-label", x: x + barWidth / 2, y: HEIGHT - 10, "text-anchor": "middle", "aria-hidden": "true" },
          label,
        ),
      );
    }
  });
  root.append(bars);
  root.append(
    svg("line", {
      class: "axis",
      x1: MARGIN.left,
      x2: WIDTH - MARGIN.right,
      y1: y(0),
      y2: y(0),
      "aria-hidden": "true",
    }),
  );
  container.replaceChildren(root);
  return root;
}
