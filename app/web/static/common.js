// batchd console: what every page shares — the API call (cookie + CSRF header), a DOM
// builder that never parses HTML (so no text from the API can inject markup), the
// pager, the status badge, file downloads and sign-out. No build step: plain ES modules.

const CSRF_COOKIE = "batchd_csrf";

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

/** The CSRF token of this session (the non-HttpOnly cookie set by POST /api/v1/session). */
export function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === CSRF_COOKIE) return decodeURIComponent(rest.join("="));
  }
  return "";
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `The server answered ${status}.`);
    this.status = status;
    this.body = body || {};
  }
}

/** Query string of the non-empty values only (an empty filter means "any"). */
export function queryString(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") q.set(key, String(value));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * Call the JSON API as the signed-in user. State-changing calls carry X-CSRF-Token.
 * A 401 (session gone) sends the visitor to sign-in; other errors throw ApiError
 * with the server's sentence.
 */
export async function api(path, { method = "GET", json, form, query, raw = false } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken();
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const response = await fetch(`/api/v1${path}${queryString(query)}`, {
    method, headers, body, credentials: "same-origin",
  });
  if (response.status === 401) {
    window.location.assign(`/sign-in?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiError(401, { detail: "Your session has ended: sign in again." });
  }
  if (!response.ok) {
    let detail = null;
    try { detail = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** Build an element: h("td", {class: "x", dataset: {id: 1}}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A message in the page's live region (read out by screen readers). */
export function flash(message, kind = "info") {
  const box = $("#flash");
  if (!box) return;
  box.replaceChildren(h("p", { class: `flash ${kind}`, role: kind === "error" ? "alert" : null }, message));
  if (kind !== "error") setTimeout(() => { if (box.textContent === message) box.replaceChildren(); }, 6000);
}

/**
 * Show an error next to what caused it: inside `form` (by default the form of the
 * focused control, i.e. the one just used), else in the page-top flash. On a phone the
 * flash can be a whole page away from the button that was pressed.
 */
export function showError(error, form = document.activeElement?.closest?.("form")) {
  const message = error instanceof Error ? error.message : String(error);
  if (!form) { flash(message, "error"); return; }
  let box = form.querySelector(":scope > .form-error");
  if (!box) {
    box = h("div", { class: "form-error" });
    form.append(box);
  }
  box.replaceChildren(h("p", { class: "flash error", role: "alert" }, message));
  box.scrollIntoView({ block: "nearest" });
}

/** Remove a form's error (a new attempt starts). */
export function clearError(form) {
  form?.querySelector(":scope > .form-error")?.remove();
}

// Any button of a form starts a new attempt: its previous error goes away.
document.addEventListener("click", (event) => {
  const button = event.target.closest?.("button");
  if (button?.form) clearError(button.form);
}, true);

/** A duration in words: "less than a second", "1 second", "2 min 5 s", "1 h 4 min". */
export function duration(seconds) {
  if (!Number.isFinite(seconds)) return "—";
  if (seconds < 1) return "less than a second";
  const s = Math.round(seconds);
  const m = Math.floor(s / 60);
  const hrs = Math.floor(m / 60);
  if (hrs) return `${hrs} h ${m % 60} min`;
  if (m) return `${m} min ${s % 60} s`;
  return `${s} second${s === 1 ? "" : "s"}`;
}

/** The ETA as a sentence part: "less than a second left", "about 5 seconds left". */
export function timeLeft(seconds) {
  if (!Number.isFinite(seconds)) return "time left unknown";
  return seconds < 1 ? "less than a second left" : `about ${duration(seconds)} left`;
}

export function fmtDate(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function fmtNumber(n) {
  return Number(n || 0).toLocaleString();
}

/** A list's total as people should read it: "about 1,000,000" when the server
 * estimated it (`total_exact: false`, lists past 10 000 matches on PostgreSQL). */
export function fmtTotal(total, exact = true) {
  return exact === false ? `about ${fmtNumber(total)}` : fmtNumber(total);
}

export function badge(status) {
  return h("span", { class: `badge s-${status}` }, status);
}

export const FINAL = new Set(["completed", "cancelled", "aborted"]);

export function finishedCount(b) {
  return b.success + b.failed + b.ignored + b.cancelled;
}

/** Previous / next and "page X of Y"; calls onPage(n). */
export function renderPager(nav, { page, page_size, total, total_exact }, onPage) {
  const pages = Math.max(1, Math.ceil(total / page_size));
  const of = total_exact === false ? `about ${fmtNumber(pages)}` : String(pages);
  const prev = h("button", { type: "button", class: "secondary outline small", disabled: page <= 1, onclick: () => onPage(page - 1) }, "← Previous");
  const next = h("button", { type: "button", class: "secondary outline small", disabled: page >= pages, onclick: () => onPage(page + 1) }, "Next →");
  nav.replaceChildren(prev, h("span", { class: "pager-text" }, `Page ${page} of ${of}`), next);
}

/** The form's non-empty values as an object. */
export function readForm(form) {
  const out = {};
  for (const [key, value] of new FormData(form).entries()) {
    if (typeof value === "string" && value.trim() !== "") out[key] = value.trim();
  }
  return out;
}

/**
 * A filter form's values as the API takes them, reading the field list from the form
 * (rendered from the server's declaration): integers as numbers, local date-times with
 * the viewer's offset, blanks left out. `batch` keeps only what a filter batch takes.
 */
export function apiFilter(form, values, { batch = false } = {}) {
  const out = {};
  for (const control of form.querySelectorAll("[data-kind]")) {
    const value = values[control.name];
    if (value === undefined || value === "" || (batch && !("batch" in control.dataset))) continue;
    const kind = control.dataset.kind;
    out[control.name] = kind === "integer" ? Number(value)
      : kind === "datetime" ? new Date(value).toISOString() : value;
  }
  return out;
}

/** Put the filters in the address bar (bookmarkable; never a token). */
export function syncUrl(params) {
  history.replaceState(null, "", location.pathname + queryString(params));
}

/** Fill a filter form from the address bar. */
export function fillForm(form, params) {
  for (const [key, value] of params.entries()) {
    const field = form.elements.namedItem(key);
    if (field && "value" in field) field.value = value;
  }
}

/** A JSON scalar when the text looks like one (10, 2.5, true, null, "42"), else the text. */
export function scalar(text) {
  const t = text.trim();
  if (/^(-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null|".*")$/.test(t)) {
    try { return JSON.parse(t); } catch { /* fall through */ }
  }
  return t;
}

/** "key=value" lines (or a JSON object) → object; throws a readable Error. */
export function parseKeyValues(text, { scalars = true } = {}) {
  const t = text.trim();
  if (!t) return {};
  if (t.startsWith("{")) {
    let value;
    try { value = JSON.parse(t); } catch (e) { throw new Error(`Not valid JSON: ${e.message}`); }
    if (typeof value !== "object" || Array.isArray(value) || value === null) throw new Error("Give a JSON object.");
    return value;
  }
  const out = {};
  t.split(/\r?\n/).forEach((line, i) => {
    if (!line.trim()) return;
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`Line ${i + 1}: write key=value.`);
    const key = line.slice(0, at).trim();
    const value = line.slice(at + 1);
    out[key] = scalars ? scalar(value) : value.trim();
  });
  return out;
}

/** Download a file answered by a call (POST templates, the error file) under its own name. */
export async function download(path, options = {}) {
  const response = await api(path, { ...options, raw: true });
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const name = match ? match[1] : "download";
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return response;
}

/** Prediction of a dry run, as a sentence and a table of the first problems. */
export function renderDryRun(box, result) {
  const sentence = `Preview of ${result.type}: ${fmtNumber(result.total)} items — ` +
    `${fmtNumber(result.success)} would succeed, ${fmtNumber(result.failed)} would fail, ` +
    `${fmtNumber(result.ignored)} would be ignored. Nothing was changed.`;
  const parts = [h("p", { class: "dry-run-summary" }, sentence)];
  const counts = h("dl", { class: "counters" },
    ...[["Total", result.total], ["Would succeed", result.success], ["Would fail", result.failed], ["Ignored", result.ignored]]
      .map(([label, n]) => h("div", {}, h("dt", {}, label), h("dd", {}, fmtNumber(n)))));
  parts.push(counts);
  if (result.problems && result.problems.length) {
    parts.push(h("div", { class: "table-wrap" }, h("table", { class: "striped problems" },
      h("caption", {}, `Problems (first ${result.problems.length})`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Item"), h("th", { scope: "col" }, "Outcome"), h("th", { scope: "col" }, "Why"))),
      h("tbody", {}, ...result.problems.map((p) => h("tr", {}, h("td", {}, p.item_id, p.title ? h("small", { class: "muted item-title" }, ` ${p.title}`) : null), h("td", {}, badge(p.status)), h("td", {}, p.error || "")))))));
  }
  box.replaceChildren(h("article", { class: "dry-run" }, ...parts));
  box.focus?.();
}

/** Latest version of each definition the caller can list (for filter dropdowns). */
export async function latestDefinitions() {
  const latest = new Map();
  let page = 1;
  for (;;) {
    const data = await api("/definitions", { query: { page, page_size: 200 } });
    for (const d of data.items) {
      if (!latest.has(d.key) || latest.get(d.key).version < d.version) latest.set(d.key, d);
    }
    if (page * data.page_size >= data.total || page >= 20) break;
    page += 1;
  }
  return Array.from(latest.values()).sort((a, b) => a.key.localeCompare(b.key));
}

function wireSignOut() {
  const button = $("#sign-out");
  if (!button) return;
  button.addEventListener("click", async () => {
    try {
      await api("/session", { method: "DELETE" });
    } finally {
      window.location.assign("/sign-in");
    }
  });
}

wireSignOut();
