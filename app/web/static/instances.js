// Instances (operators and admins): filter, select (some, a page, or all matching → a
// filter batch), choose an operation and its parameters, Preview (dry run), Run.
import {
  $, $$, api, h, badge, showError, fmtDate, fmtNumber, fmtTotal, renderPager, readForm, syncUrl,
  fillForm, renderDryRun, latestDefinitions, parseKeyValues, apiFilter,
} from "./common.js";

const PAGE_SIZE = 25;
const filterForm = $("#instance-filters");
const tbody = $("#instance-table tbody");
const state = {
  page: 1, filters: {}, rows: [], total: 0, selected: new Map(), allMatching: false,
  idempotencyKey: crypto.randomUUID(),
};
/** Which parameter group each operation takes (suspend, resume, complete take none). */
const PARAMS = {
  "instance.terminate": "reason",
  "instance.delete": "reason",
  "instance.set_variables": "variables",
  "instance.migrate": "migrate",
};

async function load() {
  try {
    const data = await api("/instances", { query: { ...apiFilter(filterForm, state.filters), page: state.page, page_size: PAGE_SIZE } });
    state.rows = data.items;
    state.total = data.total;
    state.totalExact = data.total_exact;
    renderRows();
    renderPager($("#instance-pager"), data, (n) => { state.page = n; load(); });
    $("#instance-summary").textContent = `${fmtTotal(data.total, data.total_exact)} instance${data.total === 1 ? "" : "s"} match.`;
  } catch (e) {
    showError(e);
  }
  renderSelection();
}

function renderRows() {
  if (!state.rows.length) {
    tbody.replaceChildren(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No instances match these filters.")));
    return;
  }
  tbody.replaceChildren(...state.rows.map((i) => {
    const box = h("input", {
      type: "checkbox", class: "select-instance", "aria-label": `Select instance ${i.id}: ${i.title}`,
      checked: state.allMatching || state.selected.has(i.id), disabled: state.allMatching,
      dataset: { id: i.id },
    });
    box.addEventListener("change", () => {
      if (box.checked) state.selected.set(i.id, i); else state.selected.delete(i.id);
      renderSelection();
    });
    return h("tr", { dataset: { instanceId: i.id } },
      h("td", {}, box), h("td", {}, i.id), h("td", {}, i.title), h("td", {}, i.definition_key),
      h("td", {}, i.business_key ?? "—"), h("td", {}, i.department_id ?? "—"),
      h("td", { class: "instance-status" }, badge(i.status)), h("td", {}, i.current_node_id ?? "—"),
      h("td", {}, fmtDate(i.created_at)));
  }));
}

function count() {
  return state.allMatching ? state.total : state.selected.size;
}

function renderSelection() {
  const n = count();
  $("#selection-text").textContent = state.allMatching
    ? `All ${fmtTotal(state.total, state.totalExact)} matching instances are selected.`
    : n ? `${fmtNumber(n)} instance${n === 1 ? "" : "s"} selected.` : "Nothing selected.";
  const all = $("#select-all-matching");
  all.hidden = state.allMatching || state.total === 0;
  all.textContent = `Select all ${fmtTotal(state.total, state.totalExact)} matching`;
  $("#clear-selection").hidden = n === 0;
  const page = $("#select-page");
  const onPage = state.rows.filter((i) => state.selected.has(i.id)).length;
  page.checked = state.allMatching || (state.rows.length > 0 && onPage === state.rows.length);
  page.indeterminate = !state.allMatching && onPage > 0 && onPage < state.rows.length;
  page.disabled = state.allMatching;
  const phrase = n ? runPhrase($("#op-type").selectedOptions[0], n) : "";
  $("#op-target").textContent = n ? `${phrase}.` : "Select instances (or all matching) first.";
  $("#op-run").textContent = n ? phrase : "Run";
  $("#op-run").disabled = n === 0;
  $("#op-preview").disabled = n === 0;
}

/** "Suspend 3 instances", "Migrate 100 instances to another version": the option's verb
 * (data-verb, else its text before any "(…)") and what follows the count (data-tail). */
function runPhrase(option, n) {
  const verb = option.dataset.verb || option.textContent.split(" (")[0];
  const tail = option.dataset.tail ? ` ${option.dataset.tail}` : "";
  return `${verb} ${fmtNumber(n)} instance${n === 1 ? "" : "s"}${tail}`;
}

function showParams() {
  const type = $("#op-type").value;
  for (const box of $$("[data-params]")) box.hidden = box.dataset.params !== PARAMS[type];
  renderSelection();
}

function params(type) {
  if (type === "instance.set_variables") {
    const variables = parseKeyValues($("#op-variables").value);
    if (!Object.keys(variables).length) throw new Error("Give at least one variable (key=value).");
    return { variables };
  }
  if (type === "instance.migrate") {
    const out = {
      definition_key: $("#op-mig-key").value.trim(),
      target_version: Number($("#op-mig-version").value),
    };
    const mapping = parseKeyValues($("#op-mig-map").value, { scalars: false });
    if (Object.keys(mapping).length) out.node_mapping = mapping;
    return out;
  }
  if (PARAMS[type] !== "reason") return {};
  const reason = $("#op-reason").value.trim();
  return reason ? { reason } : {};
}

function request(dryRun) {
  const type = $("#op-type").value;
  const body = { type, params: params(type) };
  if (state.allMatching) {
    body.filter = apiFilter(filterForm, state.filters, { batch: true });
  } else {
    body.ids = Array.from(state.selected.keys());
  }
  if (dryRun) body.dry_run = true;
  else body.idempotency_key = state.idempotencyKey;
  return body;
}

async function preview() {
  const button = $("#op-preview");
  button.setAttribute("aria-busy", "true");
  try {
    renderDryRun($("#preview"), await api("/batches", { method: "POST", json: request(true) }));
  } catch (e) {
    showError(e, $("#op-form"));
  } finally {
    button.removeAttribute("aria-busy");
  }
}

async function run(event) {
  event.preventDefault();
  const button = $("#op-run");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const batch = await api("/batches", { method: "POST", json: request(false) });
    window.location.assign(`/batches/${batch.id}`);
  } catch (e) {
    showError(e, $("#op-form"));
    button.disabled = false;
  } finally {
    button.removeAttribute("aria-busy");
  }
}

function applyFilters() {
  state.filters = readForm(filterForm);
  state.page = 1;
  state.allMatching = false;
  state.selected.clear();
  syncUrl(state.filters);
  $("#preview").replaceChildren();
  load();
}

filterForm.addEventListener("submit", (e) => { e.preventDefault(); applyFilters(); });
filterForm.addEventListener("reset", () => setTimeout(applyFilters));
$("#select-page").addEventListener("change", (e) => {
  for (const i of state.rows) {
    if (e.target.checked) state.selected.set(i.id, i); else state.selected.delete(i.id);
  }
  $$(".select-instance").forEach((b) => { b.checked = e.target.checked; });
  renderSelection();
});
$("#select-all-matching").addEventListener("click", () => { state.allMatching = true; renderRows(); renderSelection(); });
$("#clear-selection").addEventListener("click", () => {
  state.allMatching = false;
  state.selected.clear();
  renderRows();
  renderSelection();
});
$("#op-type").addEventListener("change", showParams);
$("#op-preview").addEventListener("click", preview);
$("#op-form").addEventListener("submit", run);

async function start() {
  const params = new URLSearchParams(location.search);
  try {
    const definitions = await latestDefinitions();
    $("#f-definition").replaceChildren(h("option", { value: "" }, "any"),
      ...definitions.map((d) => h("option", { value: d.key }, d.key)));
  } catch (e) {
    showError(e);
  }
  fillForm(filterForm, params);
  state.filters = readForm(filterForm);
  showParams();
  await load();
}

start();
