// Batches, newest first: filters, pages, and progress bars that move live (one
// EventSource per unfinished batch on the page, the cookie authenticates it).
import {
  $, api, h, badge, showError, fmtDate, fmtNumber, renderPager, readForm, syncUrl, fillForm,
  FINAL, finishedCount,
} from "./common.js";

const PAGE_SIZE = 20;
/** Browsers allow ~6 HTTP/1.1 connections per host; leave room for fetches. */
const MAX_STREAMS = 4;
const POLL_MS = 3000;
const admin = $("#main").dataset.admin === "true";
const form = $("#batch-filters");
const body = $("#batch-table tbody");
const streams = new Map(); // batch id → EventSource
let page = 1;
let poll = null;

function progressCell(b) {
  const done = finishedCount(b);
  const pct = Math.round(b.progress * 100);
  return h("td", { class: "progress-col" },
    h("progress", { max: 1, value: b.progress, "aria-label": `Batch ${b.id} progress` }),
    h("small", { class: "progress-label" }, `${pct}% · ${fmtNumber(done)} / ${fmtNumber(b.total)}`));
}

/** Creator id → name, from the listed page: progress events carry the id only. */
const names = new Map();

function creatorOf(b) {
  if (b.creator_name) names.set(b.creator_id, b.creator_name);
  return names.get(b.creator_id) ?? `#${b.creator_id}`;
}

function row(b) {
  return h("tr", { dataset: { batchId: b.id, status: b.status } },
    h("td", {}, h("a", { href: `/batches/${b.id}` }, `#${b.id}`)),
    h("td", {}, b.type, b.source === "excel" ? h("small", { class: "muted" }, " (Excel)") : null),
    h("td", {}, badge(b.status)),
    progressCell(b),
    h("td", { class: b.failed ? "failed-count" : "" }, fmtNumber(b.failed)),
    admin ? h("td", {}, creatorOf(b)) : null,
    h("td", {}, fmtDate(b.created_at)));
}

function update(b) {
  const old = body.querySelector(`tr[data-batch-id="${b.id}"]`);
  if (old) old.replaceWith(row(b));
}

function closeStreams() {
  for (const s of streams.values()) s.close();
  streams.clear();
  if (poll) { clearTimeout(poll); poll = null; }
}

function follow(items) {
  const active = items.filter((b) => !FINAL.has(b.status) && b.status !== "suspended" && b.status !== "scheduled");
  for (const b of active.slice(0, MAX_STREAMS)) {
    const source = new EventSource(`/api/v1/batches/${b.id}/events`);
    source.addEventListener("progress", (e) => update(JSON.parse(e.data)));
    source.addEventListener("end", (e) => {
      update(JSON.parse(e.data));
      source.close();
      streams.delete(b.id);
    });
    streams.set(b.id, source);
  }
  // The rest (and batches waiting to start) are refreshed by polling the page.
  if (active.length > MAX_STREAMS || items.some((b) => b.status === "scheduled")) {
    poll = setTimeout(() => load(false), POLL_MS);
  }
}

async function load(resetStreams = true) {
  const filters = readForm(form);
  syncUrl(page > 1 ? { ...filters, page } : filters);
  try {
    const data = await api("/batches", { query: { ...filters, page, page_size: PAGE_SIZE } });
    if (resetStreams) closeStreams();
    else if (poll) { clearTimeout(poll); poll = null; }
    const cols = admin ? 7 : 6;
    body.replaceChildren(...(data.items.length ? data.items.map(row)
      : [h("tr", {}, h("td", { colspan: cols, class: "muted" }, "No batches yet."))]));
    $("#batch-summary").textContent = `${fmtNumber(data.total)} batch${data.total === 1 ? "" : "es"}.`;
    renderPager($("#batch-pager"), data, (n) => { page = n; load(); });
    if (resetStreams) follow(data.items);
    else {
      for (const b of data.items) if (!streams.has(b.id)) update(b);
      if (data.items.some((b) => !FINAL.has(b.status) && !streams.has(b.id))) poll = setTimeout(() => load(false), POLL_MS);
    }
  } catch (e) {
    showError(e);
  }
}

form.addEventListener("submit", (e) => { e.preventDefault(); page = 1; load(); });
form.addEventListener("change", () => { page = 1; load(); });
window.addEventListener("pagehide", closeStreams);

const params = new URLSearchParams(location.search);
fillForm(form, params);
page = Math.max(1, Number(params.get("page")) || 1);
load();
