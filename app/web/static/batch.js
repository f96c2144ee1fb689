// One batch: counters, live progress (EventSource), rate and time left, the actions its
// state allows, its failures in groups (97 alike failures are one line, with "Retry
// these" and "Show items"), and the per-item results with their error sentences.
import {
  $, $$, api, h, badge, flash, showError, fmtDate, fmtNumber, renderPager, download,
  FINAL, finishedCount, duration, timeLeft,
} from "./common.js";

const id = Number($("#main").dataset.batchId);
const PAGE_SIZE = 50;
const RATE_WINDOW_MS = 15000;
let batch = null;
let source = null;
let samples = []; // [time ms, finished]
let detailPage = 1;
let cancelArmed = null;
let group = null; // the failure group the item table shows: {error_code, message, count}
let creatorName = null; // progress events name the creator by id only: kept from the GET

// ------------------------------------------------------------------ progress

function rate() {
  if (samples.length < 2) return null;
  const [t0, f0] = samples[0];
  const [t1, f1] = samples[samples.length - 1];
  if (t1 - t0 < 500 || f1 <= f0) return null;
  return ((f1 - f0) * 1000) / (t1 - t0);
}

function render(b) {
  batch = b;
  const done = finishedCount(b);
  const now = Date.now();
  samples.push([now, done]);
  samples = samples.filter(([t]) => now - t <= RATE_WINDOW_MS);
  $("#batch-type").textContent = b.type;
  $("#batch-status").replaceWith(Object.assign(badge(b.status), { id: "batch-status" }));
  $("#batch-progress").value = b.progress;
  const pct = Math.round(b.progress * 100);
  let text = `${pct}% — ${fmtNumber(done)} of ${fmtNumber(b.total)} items done.`;
  const r = rate();
  if (!FINAL.has(b.status) && b.status !== "suspended") {
    text += r ? ` ${r.toFixed(r < 10 ? 1 : 0)} items/s, ${timeLeft(b.pending / r)}.` : " Measuring the rate…";
  } else if (b.started_at && b.finished_at) {
    const secs = (new Date(b.finished_at) - new Date(b.started_at)) / 1000;
    text += ` Took ${duration(secs)}.`;
  }
  if (b.status === "scheduled" && b.start_at) text += ` Starts ${fmtDate(b.start_at)}.`;
  $("#progress-text").textContent = text;
  $("#counters").replaceChildren(...[
    ["Total", b.total], ["Pending", b.pending], ["Success", b.success], ["Failed", b.failed],
    ["Ignored", b.ignored], ["Cancelled", b.cancelled],
    ...(b.skipped_rows ? [["Skipped", b.skipped_rows]] : []),
  ].map(([label, n]) => h("div", { class: `counter c-${label.toLowerCase()}` }, h("dt", {}, label), h("dd", {}, fmtNumber(n)))));
  renderActions(b);
  renderFacts(b);
}

function renderActions(b) {
  const show = {
    suspend: ["scheduled", "created", "seeding", "running"].includes(b.status),
    activate: b.status === "suspended",
    retry: b.failed > 0 && b.status !== "cancelled",
    cancel: !FINAL.has(b.status),
    "error-file": b.failed > 0,
  };
  for (const button of $$("#batch-actions button")) button.hidden = !show[button.dataset.action];
}

function renderFacts(b) {
  if (b.creator_name) creatorName = b.creator_name;
  const facts = [
    ["Priority", b.priority], ["Source", b.source],
    ...(b.source === "excel" || b.skipped_rows
      ? [["Skipped rows", `${fmtNumber(b.skipped_rows || 0)} (no Decision: not imported)`]] : []),
    ["Creator", creatorName ?? `user ${b.creator_id}`],
    ["Created", fmtDate(b.created_at)], ["Started", fmtDate(b.started_at)],
    ["Finished", fmtDate(b.finished_at)], ["Chunk size", b.chunk_size],
    ["Max retries", b.max_retries], ["Failure threshold", b.failure_threshold ?? "none"],
    ["Rate limit", b.max_items_per_second ? `${b.max_items_per_second} items/s` : "none"],
  ];
  const json = (value) => h("pre", {}, JSON.stringify(value, null, 2));
  $("#facts").replaceChildren(
    ...facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, String(v)))),
    h("div", { class: "wide" }, h("dt", {}, "Parameters"), h("dd", {}, json(b.params))),
    b.filter ? h("div", { class: "wide" }, h("dt", {}, "Filter"), h("dd", {}, json(b.filter))) : null);
}

function follow() {
  if (source) source.close();
  source = null;
  if (!batch || FINAL.has(batch.status)) return;
  source = new EventSource(`/api/v1/batches/${id}/events`);
  source.addEventListener("progress", (e) => render(JSON.parse(e.data)));
  source.addEventListener("end", (e) => {
    render(JSON.parse(e.data));
    source.close();
    source = null;
    loadDetails();
    loadFailures().catch(showError);
    loadDeliveries().catch(showError);
  });
}

async function refresh() {
  render(await api(`/batches/${id}`));
  follow();
  await loadFailures();
  loadDeliveries().catch(showError);
}

// ------------------------------------------------------------------ webhook deliveries

/** The batch's webhook deliveries the viewer may see (their own subscriptions'). */
async function loadDeliveries() {
  const data = await api(`/batches/${id}/deliveries`, { query: { page_size: 20 } });
  const section = $("#webhook-deliveries");
  section.hidden = data.total === 0;
  $("#delivery-table tbody").replaceChildren(...data.items.map((d) => h("tr", {},
    h("td", {}, d.event),
    h("td", {}, badge(d.status)),
    h("td", {}, fmtNumber(d.attempts)),
    h("td", {}, d.last_status_code ?? "—"),
    h("td", {}, d.last_error ?? ""))));
}

// ------------------------------------------------------------------ failure groups

async function loadFailures() {
  const section = $("#failure-groups");
  if (!batch || !batch.failed) {
    section.hidden = true;
    return;
  }
  const data = await api(`/batches/${id}/failures`);
  section.hidden = data.groups.length === 0;
  const n = data.groups.length;
  $("#failures-summary").textContent = `${fmtNumber(data.total_failed)} failed item${data.total_failed === 1 ? "" : "s"} ` +
    `in ${n}${data.groups_truncated ? "+" : ""} group${n === 1 ? "" : "s"}` +
    (data.groups_truncated ? " (the largest 50 shown)." : ".");
  $("#failure-group-list").replaceChildren(...data.groups.map(groupItem));
}

function groupItem(g) {
  const retry = h("button", {
    type: "button", class: g.retryable ? "small" : "small secondary",
    dataset: { groupAction: "retry" }, hidden: batch.status === "cancelled",
    title: g.retryable ? "Run these items again" : "Not retryable by itself: run them again once the cause is fixed",
    onclick: (e) => retryGroup(g, e.currentTarget),
  }, g.retryable ? "Retry these" : "Retry these anyway");
  const show = h("button", {
    type: "button", class: "small secondary outline", dataset: { groupAction: "show" },
    onclick: () => showGroup(g),
  }, "Show items");
  return h("li", { class: "failure-group", dataset: { errorCode: g.error_code } },
    h("p", { class: "group-head" },
      h("strong", { class: "group-count" }, `${fmtNumber(g.count)} ×`), " ",
      h("span", { class: "group-message" }, g.message || "(no message)")),
    h("p", { class: "group-meta muted small-text" },
      h("code", { class: "group-code" }, g.error_code), " · ",
      h("span", { class: "group-retryable" }, g.retryable ? "retryable" : "not retryable: fix the cause first"),
      g.sample_item_ids.length ? ` · items ${g.sample_item_ids.join(", ")}${g.count > g.sample_item_ids.length ? ", …" : ""}` : ""),
    h("div", { class: "row-actions" }, retry, show));
}

async function retryGroup(g, button) {
  button.setAttribute("aria-busy", "true");
  try {
    const out = await api(`/batches/${id}/retry`, { method: "POST", json: { error_code: g.error_code, message: g.message } });
    flash(`${fmtNumber(out.requeued)} failed item${out.requeued === 1 ? "" : "s"} queued again` +
      (out.exhausted ? ` (${fmtNumber(out.exhausted)} have no retries left).` : "."));
    samples = [];
    if (group && group.error_code === g.error_code && group.message === g.message) group = null;
    await refresh();
    await loadDetails();
  } catch (e) {
    showError(e);
  } finally {
    button.removeAttribute("aria-busy");
  }
}

function showGroup(g) {
  group = g;
  detailPage = 1;
  $("#detail-status").value = "failed";
  loadDetails();
  $("#details-heading").scrollIntoView({ block: "start" });
}

// ------------------------------------------------------------------ details

async function loadDetails() {
  const status = $("#detail-status").value;
  const tbody = $("#detail-table tbody");
  const query = { status, page: detailPage, page_size: PAGE_SIZE };
  if (group) Object.assign(query, { error_code: group.error_code, message: group.message });
  $("#detail-group").hidden = !group;
  $("#detail-group-text").textContent = group ? `Failure group: ${group.error_code} — ${group.message}` : "";
  try {
    const data = await api(`/batches/${id}/details`, { query });
    // data-label: the column name each cell shows when the table is cards (narrow screens).
    const cell = (label, attrs, ...children) => h("td", { ...attrs, dataset: { label } }, ...children);
    tbody.replaceChildren(...(data.items.length ? data.items.map((d) => h("tr", { dataset: { status: d.status } },
      cell("Item", {}, d.item_id, d.title ? h("small", { class: "muted item-title" }, ` ${d.title}`) : null), cell("Row", {}, d.row ?? "—"), cell("Status", {}, badge(d.status)),
      cell("Code", { class: "code-text" }, d.error_code || ""),
      cell("Error", { class: "error-text" }, d.error || ""), cell("Retries", {}, d.retry_count),
      cell("Finished", {}, fmtDate(d.finished_at))))
      : [h("tr", {}, h("td", { colspan: 7, class: "muted" }, status ? `No ${status} items.` : "No items yet."))]));
    $("#detail-summary").textContent = `${fmtNumber(data.total)} item${data.total === 1 ? "" : "s"}${status ? ` ${status}` : ""}` +
      `${group ? " in this group" : ""}.`;
    renderPager($("#detail-pager"), data, (n) => { detailPage = n; loadDetails(); });
  } catch (e) {
    showError(e);
  }
}

// ------------------------------------------------------------------ actions

const ACTIONS = {
  async suspend() {
    await api(`/batches/${id}/suspend`, { method: "POST" });
    flash("Batch suspended.");
  },
  async activate() {
    await api(`/batches/${id}/activate`, { method: "POST" });
    flash("Batch activated.");
  },
  async retry() {
    const out = await api(`/batches/${id}/retry`, { method: "POST", json: {} });
    flash(`${fmtNumber(out.requeued)} failed item${out.requeued === 1 ? "" : "s"} queued again` +
      (out.exhausted ? ` (${fmtNumber(out.exhausted)} have no retries left).` : "."));
    samples = [];
  },
  async cancel(button) {
    if (cancelArmed !== button) {
      cancelArmed = button;
      button.textContent = "Really cancel? Click again";
      setTimeout(() => { if (cancelArmed === button) { cancelArmed = null; button.textContent = "Cancel batch"; } }, 5000);
      return false;
    }
    cancelArmed = null;
    button.textContent = "Cancel batch";
    await api(`/batches/${id}`, { method: "DELETE" });
    flash("Batch cancelled; its pending items will not run.");
  },
  async "error-file"() {
    try {
      await download(`/batches/${id}/error-file`);
    } catch (e) {
      if (e.status === 404) { flash("There is no error file: no item failed.", "error"); return false; }
      throw e;
    }
    return false;
  },
};

for (const button of $$("#batch-actions button")) {
  button.addEventListener("click", async () => {
    button.setAttribute("aria-busy", "true");
    try {
      const changed = await ACTIONS[button.dataset.action](button);
      if (changed !== false) {
        await refresh();
        await loadDetails();
      }
    } catch (e) {
      showError(e);
    } finally {
      button.removeAttribute("aria-busy");
    }
  });
}

$("#detail-status").addEventListener("change", () => { detailPage = 1; loadDetails(); });
$("#detail-group-clear").addEventListener("click", () => { group = null; detailPage = 1; loadDetails(); });
window.addEventListener("pagehide", () => source && source.close());

const initial = new URLSearchParams(location.search).get("status");
if (initial) $("#detail-status").value = initial;
refresh().catch(showError);
loadDetails();
