// Small DOM helpers shared by the console's modules. Text always goes in as text (never as HTML), so
// model output, task text and error messages cannot inject markup.

import { formatInt } from "./format.js";

/** h("td", {class: "num"}, "42") -> <td class="num">42</td>. Attributes that are null/false are left out. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-")) element.setAttribute(key, value);
    else if (key in element) element[key] = value;
    else element.setAttribute(key, value);
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

/** Show `text` in `element`, or hide the element when there is none. */
export function setText(element, text) {
  element.textContent = text ?? "";
  element.hidden = !text;
}

export const shortId = (id) => String(id).slice(0, 8);

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

/** Fill a <dl> with [term, value] pairs; empty values are left out. */
export function fillList(dl, pairs) {
  dl.replaceChildren(
    ...pairs
      .filter(([, value]) => value !== null && value !== undefined && value !== "")
      .map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))),
  );
}

export function tokensText(input, output) {
  return `${formatInt(input)} / ${formatInt(output)}`;
}

export function platformText(platform, model) {
  return [platform, model].filter(Boolean).join(" / ") || "–";
}
