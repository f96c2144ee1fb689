// My tasks: filter, select (some, a page, or all matching → a filter batch), fill the
// node's form, Preview (dry run) and Approve (create the batch, open its page); Excel
// template download and upload.
import {
  $, $$, api, h, badge, showError, fmtDate, fmtNumber, fmtTotal, renderPager, readForm, syncUrl,
  fillForm, renderDryRun, latestDefinitions, download, apiFilter,
} from "./common.js";

const PAGE_SIZE = 25;
const main = $("#main");
const me = Number(main.dataset.userId);
const filterForm = $("#task-filters");
const table = $("#task-table tbody");
const state = {
  page: 1,
  filters: {},
  total: 0,
  rows: [],
  selected: new Map(), // task id → task (kept across pages)
  allMatching: false, // the whole filter, not the ids
  definitions: [],
  view: null, // node view of the current target
  views: new Map(), // "key/node" → promise of its node view (fetched once)
  columns: [], // fields visible at the filter's node: extra list columns
  viewKey: "",
  idempotencyKey: crypto.randomUUID(),
};

// ------------------------------------------------------------------ filters and list

function currentFilters() {
  const f = readForm(filterForm);
  if (!("status" in f) && filterForm.elements.status.value === "") f.status = "";
  return f;
}

function fillNodes() {
  const select = $("#f-node");
  const chosen = $("#f-definition").value;
  const keep = select.value;
  const ids = new Map();
  for (const d of state.definitions) {
    if (chosen && d.key !== chosen) continue;
    for (const n of d.nodes) if (!ids.has(n.id)) ids.set(n.id, n.name || n.id);
  }
  // The node's name alone (a select cannot wrap: short text is what fits on a phone);
  // its id only to tell apart two nodes of one name.
  const names = Array.from(ids.values());
  const shared = new Set(names.filter((name, i) => names.indexOf(name) !== i));
  select.replaceChildren(h("option", { value: "" }, "any"),
    ...Array.from(ids, ([id, name]) => h("option", { value: id }, shared.has(name) && name !== id ? `${name} (${id})` : name)));
  if (ids.has(keep)) select.value = keep;
}

async function loadTasks() {
  const query = { ...apiFilter(filterForm, state.filters), assignee_id: me, page: state.page, page_size: PAGE_SIZE };
  table.setAttribute("aria-busy", "true");
  try {
    const [data, columns] = await Promise.all([api("/tasks", { query }), visibleColumns()]);
    state.columns = columns;
    renderHeader();
    state.total = data.total;
    state.totalExact = data.total_exact;
    state.rows = data.items;
    renderTasks();
    renderPager($("#task-pager"), data, (n) => { state.page = n; loadTasks(); });
    $("#task-summary").textContent = `${fmtTotal(data.total, data.total_exact)} task${data.total === 1 ? "" : "s"} match.`;
  } catch (e) {
    showError(e);
  } finally {
    table.removeAttribute("aria-busy");
  }
  renderSelection();
}

/** The node's view (fields and their modes), fetched once per definition and node. */
function nodeView(key, node) {
  const id = `${key}/${node}`;
  if (!state.views.has(id)) {
    const request = api(`/nodes/${encodeURIComponent(key)}/${encodeURIComponent(node)}/view`);
    request.catch(() => state.views.delete(id)); // a failure is not remembered
    state.views.set(id, request);
  }
  return state.views.get(id);
}

/** The fields marked visible at the filter's node (what the approver decides on, e.g.
 * Amount at the finance step); none when the filter names no single node. */
async function visibleColumns() {
  const { definition_key: key, node_id: node } = state.filters;
  if (!key || !node) return [];
  try {
    return (await nodeView(key, node)).fields.filter((f) => f.visible);
  } catch {
    return []; // the list itself does not depend on the extra columns
  }
}

function renderHeader() {
  const row = $("#task-table thead tr");
  $$(".field-col", row).forEach((th) => th.remove());
  row.append(...state.columns.map((f) => h("th", { scope: "col", class: "field-col", dataset: { field: f.name } }, f.label)));
}

/** A form value as the list shows it. */
function fieldText(value) {
  if (value === undefined || value === null || value === "") return "—";
  if (Array.isArray(value)) return value.join(", ");
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") return value.toLocaleString();
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function renderTasks() {
  if (!state.rows.length) {
    table.replaceChildren(h("tr", {}, h("td", { colspan: 8 + state.columns.length, class: "muted" }, "No tasks match these filters.")));
    return;
  }
  table.replaceChildren(...state.rows.map((t) => {
    const box = h("input", {
      type: "checkbox", class: "select-task", "aria-label": `Select task ${t.id}: ${t.title}`,
      checked: state.allMatching || state.selected.has(t.id), disabled: state.allMatching,
      dataset: { id: t.id },
    });
    box.addEventListener("change", () => {
      if (box.checked) state.selected.set(t.id, t); else state.selected.delete(t.id);
      renderSelection();
    });
    return h("tr", {},
      h("td", {}, box),
      h("td", {}, t.id),
      h("td", {}, t.title, t.locked_by_batch_id ? h("small", { class: "muted" }, ` (in batch ${t.locked_by_batch_id})`) : null),
      h("td", {}, t.definition_key),
      h("td", {}, t.node_id),
      h("td", {}, t.department_id ?? "—"),
      h("td", {}, badge(t.status)),
      h("td", {}, fmtDate(t.created_at)),
      ...state.columns.map((f) => h("td", { class: "field-value", dataset: { field: f.name } }, fieldText((t.form_data || {})[f.name]))));
  }));
}

// ------------------------------------------------------------------ selection

function pendingFilter() {
  return (state.filters.status || "") === "pending";
}

function selectionCount() {
  return state.allMatching ? state.total : state.selected.size;
}

/** The (definition, node) the form is for: from the filter, else from the selection. */
function target() {
  const { definition_key: key, node_id: node } = state.filters;
  if (key && node) return { key, node };
  if (state.allMatching) return null;
  const pairs = new Set(Array.from(state.selected.values(), (t) => `${t.definition_key}\u0000${t.node_id}`));
  if (pairs.size !== 1) return null;
  const [k, n] = pairs.values().next().value.split("\u0000");
  return { key: k, node: n };
}

function renderSelection() {
  const n = selectionCount();
  const text = state.allMatching
    ? `All ${fmtTotal(state.total, state.totalExact)} matching tasks are selected.`
    : n ? `${fmtNumber(n)} task${n === 1 ? "" : "s"} selected.` : "Nothing selected.";
  $("#selection-text").textContent = text;
  const all = $("#select-all-matching");
  all.hidden = state.allMatching || !pendingFilter() || state.total === 0;
  all.textContent = `Select all ${fmtTotal(state.total, state.totalExact)} matching`;
  $("#clear-selection").hidden = n === 0;
  const pageBox = $("#select-page");
  const onPage = state.rows.filter((t) => state.selected.has(t.id)).length;
  pageBox.checked = state.allMatching || (state.rows.length > 0 && onPage === state.rows.length);
  pageBox.indeterminate = !state.allMatching && onPage > 0 && onPage < state.rows.length;
  pageBox.disabled = state.allMatching;
  renderTarget();
}

async function renderTarget() {
  const n = selectionCount();
  const t = target();
  const info = $("#approve-target");
  const approve = $("#approve-button");
  const decision = new FormData($("#approve-form")).get("decision");
  const verb = decision === "reject" ? "Reject" : "Approve";
  approve.textContent = n ? `${verb} ${fmtNumber(n)} task${n === 1 ? "" : "s"}` : verb;
  approve.disabled = n === 0;
  $("#preview-button").disabled = n === 0;
  if (!n) info.textContent = "Select tasks (or all matching) first.";
  else if (!t) info.textContent = "These tasks are at different steps: choose one definition and node (filters) to fill in fields; decision and comment apply to all.";
  else info.textContent = `${fmtNumber(n)} task${n === 1 ? "" : "s"} at ${t.key} / ${t.node}.`;
  await loadView(t);
}

async function loadView(t) {
  const key = t ? `${t.key}/${t.node}` : "";
  if (key === state.viewKey) return;
  state.viewKey = key;
  state.view = null;
  const box = $("#node-fields");
  if (!t) { box.hidden = true; return; }
  try {
    const view = await nodeView(t.key, t.node);
    if (state.viewKey !== key) return;
    state.view = view;
    renderFields(view);
  } catch (e) {
    box.hidden = true;
    showError(e);
  }
}

function fieldInput(f) {
  const id = `field-${f.name}`;
  const common = { id, name: f.name, "aria-describedby": f.required ? `${id}-req` : null };
  if (f.type === "select" || f.type === "bool") {
    const options = f.type === "bool" ? [["true", "yes"], ["false", "no"]] : f.options.map((o) => [o, o]);
    return h("select", common, h("option", { value: "" }, "— keep each task's value —"),
      ...options.map(([v, label]) => h("option", { value: v }, label)));
  }
  if (f.type === "multiselect") {
    return h("select", { ...common, multiple: true, size: Math.min(4, f.options.length) },
      ...f.options.map((o) => h("option", { value: o }, o)));
  }
  const type = { number: "number", date: "date" }[f.type] || "text";
  return h("input", { ...common, type, step: f.type === "number" ? "any" : null, maxlength: type === "text" ? 10000 : null });
}

function renderFields(view) {
  const writable = view.fields.filter((f) => f.writable);
  const box = $("#node-fields");
  $("#node-legend").textContent = `Fields at ${view.node_name} (${view.definition_key} v${view.version})`;
  const list = $("#node-field-list");
  if (!writable.length) {
    list.replaceChildren(h("p", { class: "muted" }, "No field can be changed at this step."));
  } else {
    list.replaceChildren(...writable.map((f) => h("label", { for: `field-${f.name}`, dataset: { field: f.name, type: f.type } },
      f.label, f.required ? h("span", { class: "required", "aria-hidden": "true" }, " *") : null,
      f.required ? h("span", { id: `field-${f.name}-req`, class: "visually-hidden" }, " (required at this step)") : null,
      fieldInput(f))));
  }
  box.hidden = false;
}

function formData() {
  const out = {};
  if (!state.view) return out;
  for (const f of state.view.fields.filter((x) => x.writable)) {
    const input = document.getElementById(`field-${f.name}`);
    if (!input) continue;
    if (f.type === "multiselect") {
      const values = Array.from(input.selectedOptions, (o) => o.value);
      if (values.length) out[f.name] = values;
      continue;
    }
    const v = input.value.trim();
    if (v === "") continue;
    if (f.type === "number") out[f.name] = Number(v);
    else if (f.type === "bool") out[f.name] = v === "true";
    else out[f.name] = v;
  }
  return out;
}

function batchRequest(dryRun) {
  const form = new FormData($("#approve-form"));
  const params = { decision: form.get("decision") || "approve" };
  const comment = String(form.get("comment") || "").trim();
  if (comment) params.comment = comment;
  const values = formData();
  if (Object.keys(values).length) params.form_data = values;
  const body = { type: "task.approve", params };
  if (state.allMatching) {
    body.filter = apiFilter(filterForm, state.filters, { batch: true });
  } else {
    body.ids = Array.from(state.selected.keys());
  }
  if (dryRun) body.dry_run = true;
  return body;
}

async function preview() {
  const button = $("#preview-button");
  button.setAttribute("aria-busy", "true");
  try {
    const result = await api("/batches", { method: "POST", json: batchRequest(true) });
    renderDryRun($("#preview"), result);
  } catch (e) {
    showError(e);
  } finally {
    button.removeAttribute("aria-busy");
  }
}

async function approve(event) {
  event.preventDefault();
  const button = $("#approve-button");
  if (button.disabled) return;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const response = await fetchCreate(batchRequest(false));
    window.location.assign(`/batches/${response.id}`);
  } catch (e) {
    showError(e, $("#approve-form"));
    button.disabled = false;
  } finally {
    button.removeAttribute("aria-busy");
  }
}

/** POST /batches with an Idempotency-Key: a double click cannot make two batches. */
async function fetchCreate(body) {
  return api("/batches", { method: "POST", json: { ...body, idempotency_key: state.idempotencyKey } });
}

// ------------------------------------------------------------------ Excel

async function template(format) {
  const t = target();
  const status = $("#template-status");
  if (!t) {
    status.textContent = "Choose a definition and a node (filters), or select tasks of one node, first.";
    return;
  }
  const body = { definition_key: t.key, node_id: t.node, format };
  if (!state.allMatching && state.selected.size) {
    body.task_ids = Array.from(state.selected.keys());
  } else {
    const filter = apiFilter(filterForm, state.filters, { batch: true });
    if (Object.keys(filter).length) body.filter = filter;
  }
  status.textContent = "Preparing the file…";
  try {
    const response = await download("/approval-templates", { method: "POST", json: body });
    const n = response.headers.get("X-Batchd-Tasks");
    status.textContent = `Downloaded${n ? ` (${n} tasks)` : ""}.`;
  } catch (e) {
    status.textContent = "";
    showError(e);
  }
}

async function upload(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const file = $("#import-file").files[0];
  if (!file) { showError("Choose a workbook first.", form); return; }
  const data = new FormData();
  data.append("file", file);
  data.append("priority", $("#import-priority").value);
  const button = form.querySelector("button[type=submit]");
  button.setAttribute("aria-busy", "true");
  try {
    const batch = await api("/batches/import", { method: "POST", form: data });
    window.location.assign(`/batches/${batch.id}`);
  } catch (e) {
    showError(e, form);
  } finally {
    button.removeAttribute("aria-busy");
  }
}

// ------------------------------------------------------------------ wiring

function applyFilters() {
  state.filters = currentFilters();
  state.page = 1;
  state.allMatching = false;
  state.selected.clear();
  syncUrl(state.filters.status === "pending" ? { ...state.filters, status: undefined } : state.filters);
  $("#preview").replaceChildren();
  loadTasks();
}

filterForm.addEventListener("submit", (e) => { e.preventDefault(); applyFilters(); });
filterForm.addEventListener("reset", () => setTimeout(() => { fillNodes(); applyFilters(); }));
$("#f-definition").addEventListener("change", fillNodes);
$("#select-page").addEventListener("change", (e) => {
  for (const t of state.rows) {
    if (e.target.checked) state.selected.set(t.id, t); else state.selected.delete(t.id);
  }
  $$(".select-task").forEach((b) => { b.checked = e.target.checked; });
  renderSelection();
});
$("#select-all-matching").addEventListener("click", () => {
  state.allMatching = true;
  renderTasks();
  renderSelection();
  $("#selection-text").focus?.();
});
$("#clear-selection").addEventListener("click", () => {
  state.allMatching = false;
  state.selected.clear();
  renderTasks();
  renderSelection();
});
$("#approve-form").addEventListener("submit", approve);
$("#approve-form").addEventListener("change", (e) => { if (e.target.name === "decision") renderTarget(); });
$("#preview-button").addEventListener("click", preview);
$("#template-xlsx").addEventListener("click", () => template("xlsx"));
$("#template-zip").addEventListener("click", () => template("zip"));
$("#import-form").addEventListener("submit", upload);

async function start() {
  const params = new URLSearchParams(location.search);
  try {
    state.definitions = await latestDefinitions();
  } catch (e) {
    showError(e);
  }
  $("#f-definition").replaceChildren(h("option", { value: "" }, "any"),
    ...state.definitions.map((d) => h("option", { value: d.key }, d.key)));
  if (params.get("definition_key")) $("#f-definition").value = params.get("definition_key");
  fillNodes();
  fillForm(filterForm, params);
  state.filters = currentFilters();
  await loadTasks();
}

start();
