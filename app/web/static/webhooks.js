// Webhooks: add (the secret is shown once), ping, disable, re-enable, delete, and each
// subscription's recent deliveries.
import { $, api, h, badge, flash, showError, fmtDate, fmtNumber } from "./common.js";

const form = $("#webhook-form");
const list = $("#webhook-list");

function deliveryRows(items) {
  if (!items.length) return h("p", { class: "muted" }, "No deliveries yet.");
  return h("div", { class: "table-wrap" }, h("table", { class: "striped" },
    h("thead", {}, h("tr", {},
      ...["Event", "Batch", "Status", "Attempts", "Last code", "Last error", "Created"].map(
        (t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, ...items.map((d) => h("tr", { dataset: { deliveryId: d.id } },
      h("td", {}, d.event),
      h("td", {}, d.batch_id ? h("a", { href: `/batches/${d.batch_id}` }, `#${d.batch_id}`) : "—"),
      h("td", {}, badge(d.status)),
      h("td", {}, fmtNumber(d.attempts)),
      h("td", {}, d.last_status_code ?? "—"),
      h("td", {}, d.last_error ?? ""),
      h("td", {}, fmtDate(d.created_at)))))));
}

async function act(w, path, options, message) {
  try {
    await api(`/webhooks/${w.id}${path}`, options);
    flash(message);
  } catch (error) {
    showError(error, null);
  }
  await load();
}

function card(w, deliveries) {
  const active = w.status === "active";
  const buttons = [
    h("button", { type: "button", class: "secondary small", disabled: !active ? "" : null,
      dataset: { action: "ping" } }, "Send test"),
    active
      ? h("button", { type: "button", class: "secondary outline small", dataset: { action: "disable" } }, "Disable")
      : h("button", { type: "button", class: "small", dataset: { action: "enable" } }, "Re-enable"),
    h("button", { type: "button", class: "secondary outline small", dataset: { action: "delete" } }, "Delete"),
  ];
  buttons[0].addEventListener("click", () => act(w, "/ping", { method: "POST" }, "Test event queued."));
  buttons[1].addEventListener("click", () => act(w, "", {
    method: "PATCH", json: { status: active ? "disabled" : "active" },
  }, active ? "Webhook disabled." : "Webhook re-enabled."));
  buttons[2].addEventListener("click", () => {
    if (confirm(`Delete the webhook to ${w.url} and its delivery log?`)) {
      act(w, "", { method: "DELETE" }, "Webhook deleted.");
    }
  });
  return h("article", { class: "webhook", dataset: { webhookId: w.id, status: w.status } },
    h("header", {},
      h("strong", {}, w.url), " ", badge(w.status),
      h("p", {}, h("small", { class: "muted" },
        `${(w.events || ["all events"]).join(", ")} · ${w.all_batches ? "every batch" : "my batches"}`)),
      w.disabled_reason ? h("p", { class: "flash error" }, w.disabled_reason) : null),
    h("div", { class: "row-actions" }, ...buttons),
    h("details", { open: deliveries.length ? "" : null },
      h("summary", {}, "Recent deliveries"), deliveryRows(deliveries)));
}

async function load() {
  try {
    const data = await api("/webhooks", { query: { page_size: 100 } });
    $("#webhook-summary").textContent = data.total
      ? `${data.total} webhook${data.total === 1 ? "" : "s"}.` : "No webhooks yet.";
    const cards = await Promise.all(data.items.map(async (w) => {
      const log = await api(`/webhooks/${w.id}/deliveries`, { query: { page_size: 10 } });
      return card(w, log.items);
    }));
    list.replaceChildren(...cards);
  } catch (error) {
    showError(error, null);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = new FormData(form);
  const events = data.getAll("events");
  const body = { url: data.get("url"), all_batches: data.get("all_batches") === "on" };
  if (events.length) body.events = events;
  try {
    const created = await api("/webhooks", { method: "POST", json: body });
    $("#new-secret-value").textContent = created.secret;
    $("#new-secret").hidden = false;
    form.reset();
    await load();
  } catch (error) {
    showError(error, form);
  }
});

$("#secret-done").addEventListener("click", () => {
  $("#new-secret-value").textContent = "";
  $("#new-secret").hidden = true;
});

load();
