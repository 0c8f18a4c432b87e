// The xiaozhi devices bound to this account (not the microphones and speakers: media.js).
// A device shows or says a 6-digit code; its owner binds the code to an assistant here
// (POST /api/v1/devices), sees the bound ones (GET /api/v1/devices) and unbinds one
// (DELETE /api/v1/devices/{id}), which revokes the device's token.

import { API, all, describe, request } from "./api.js";

const $ = (id) => document.getElementById(id);
const el = {
  toggle: $("device-toggle"), form: $("device-form"), code: $("d-code"), assistant: $("d-assistant"),
  name: $("d-name"), submit: $("device-submit"), cancel: $("device-cancel"), formError: $("device-error"),
  list: $("device-list"), empty: $("devices-empty"), error: $("devices-error"),
};
const CODE = /^\d{6}$/;
const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
let devices = [];
let assistants = () => ({ list: [], preferred: null });
let onInfo = () => {};

/** Where the account's assistants (and the one picked on the page) come from. */
export function assistantsFrom(lookup) { assistants = lookup; }
/** Where a sentence about a finished change goes (the page's notice). */
export function infoTo(say) { onInfo = say; }

/** A refused code in words that say what to do next; other errors as the API says them. */
function codeError(err) {
  if (err.code === "activation_code_invalid") {
    return describe(err) + " Check the 6 digits your device shows or says.";
  }
  if (err.code === "device_bound") return describe(err) + " Its owner must unbind it first.";
  return describe(err); // activation_expired already says the device shows a new code
}

const deviceName = (d) => d.name || "Device " + d.device_id.toUpperCase();

function assistantName(id) {
  const a = assistants().list.find((x) => x.assistant_id === id);
  return a ? a.name : "an assistant you no longer have";
}

function item(d) {
  const li = document.createElement("li");
  li.dataset.device = d.device_id;
  const text = document.createElement("div");
  text.className = "what";
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = deviceName(d);
  const about = document.createElement("span");
  about.className = "about";
  about.textContent = `Talks to ${assistantName(d.assistant_id)} · bound ${when.format(new Date(d.bound_at))}`;
  const id = document.createElement("span");
  id.className = "about";
  id.textContent = d.device_id.toUpperCase();
  text.append(title, about, id);
  const unbind = document.createElement("button");
  unbind.type = "button";
  unbind.className = "quiet small-btn";
  unbind.textContent = "Unbind";
  unbind.setAttribute("aria-label", "Unbind " + deviceName(d));
  unbind.addEventListener("click", () => confirmUnbind(li, d));
  li.append(text, unbind);
  return li;
}

function confirmUnbind(li, d) {
  const ask = document.createElement("div");
  ask.className = "confirm";
  ask.setAttribute("role", "group");
  const question = document.createElement("p");
  question.id = "du-" + d.device_id.replace(/[^a-z0-9]/gi, "");
  question.textContent = `Unbind ${deviceName(d)}? It stops talking to ${assistantName(d.assistant_id)} `
    + "and needs a new code to be bound again.";
  ask.setAttribute("aria-labelledby", question.id);
  const error = document.createElement("p");
  error.className = "error";
  error.setAttribute("role", "alert");
  error.hidden = true;
  const yes = document.createElement("button");
  yes.type = "button";
  yes.className = "primary small-btn danger";
  yes.textContent = "Yes, unbind";
  const keep = document.createElement("button");
  keep.type = "button";
  keep.className = "quiet small-btn";
  keep.textContent = "Keep";
  const row = document.createElement("div");
  row.className = "row";
  row.append(yes, keep);
  ask.append(question, error, row);
  const shown = [...li.children];
  shown.forEach((c) => { c.hidden = true; });
  li.append(ask);
  keep.focus();
  keep.addEventListener("click", () => {
    ask.remove();
    shown.forEach((c) => { c.hidden = false; });
    shown[shown.length - 1].focus();
  });
  yes.addEventListener("click", async () => {
    yes.disabled = keep.disabled = true;
    error.hidden = true;
    try {
      await request("DELETE", `${API}/devices/${encodeURIComponent(d.device_id)}`);
      onInfo(`Unbound ${deviceName(d)}.`);
      await refresh();
      el.toggle.focus();
    } catch (err) {
      error.textContent = describe(err);
      error.hidden = false;
      yes.disabled = keep.disabled = false;
    }
  });
}

function render() {
  el.list.replaceChildren(...devices.map(item));
  el.empty.hidden = devices.length > 0;
}

/** The assistants to bind to, the page's chosen one first picked. */
function fillAssistants() {
  const { list, preferred } = assistants();
  const keep = el.assistant.value || preferred;
  el.assistant.replaceChildren(...list.map((a) => new Option(a.name, a.assistant_id)));
  if (list.some((a) => a.assistant_id === keep)) el.assistant.value = keep;
}

/** The assistants changed (added, renamed, reloaded): their names and choices follow. */
export function assistantsChanged() {
  fillAssistants();
  if (devices.length) render();
}

export async function refresh() {
  el.error.hidden = true;
  el.list.setAttribute("aria-busy", "true");
  try {
    devices = await all(API + "/devices");
    render();
  } catch (err) {
    el.error.textContent = "Could not load your devices: " + describe(err);
    el.error.hidden = false;
  } finally {
    el.list.setAttribute("aria-busy", "false");
  }
}

export function clear() {
  devices = [];
  el.list.replaceChildren();
  el.empty.hidden = true;
  el.error.hidden = true;
  toggleForm(false, false);
}

function toggleForm(open, focus = true) {
  el.form.hidden = !open;
  el.toggle.setAttribute("aria-expanded", String(open));
  el.formError.hidden = true;
  if (open) {
    el.form.reset();
    el.assistant.value = "";
    fillAssistants();
    if (focus) el.code.focus();
  } else if (focus) {
    el.toggle.focus();
  }
}

function showFormError(text, field) {
  el.formError.textContent = text;
  el.formError.hidden = false;
  if (field) field.focus();
}

async function onSubmit(event) {
  event.preventDefault();
  el.formError.hidden = true;
  const code = el.code.value.replace(/[\s-]/g, ""); // "482 913" as read aloud is the same code
  if (!CODE.test(code)) {
    showFormError("Enter the 6-digit code your device shows or says.", el.code);
    return;
  }
  if (!el.assistant.value) {
    showFormError("Add an assistant first: the device talks to one of yours.", el.assistant);
    return;
  }
  const body = { code, assistant_id: el.assistant.value };
  const name = el.name.value.trim();
  if (name) body.name = name;
  el.submit.disabled = true;
  try {
    const bound = await request("POST", API + "/devices", body);
    toggleForm(false);
    await refresh();
    onInfo(`Bound ${deviceName(bound.device)} to ${assistantName(bound.device.assistant_id)}: `
      + "it connects by itself in a few seconds.");
  } catch (err) {
    const aboutCode = ["activation_code_invalid", "activation_expired", "device_bound"].includes(err.code);
    showFormError(codeError(err), aboutCode ? el.code : null);
  } finally {
    el.submit.disabled = false;
  }
}

el.toggle.addEventListener("click", () => toggleForm(el.form.hidden));
el.cancel.addEventListener("click", () => toggleForm(false));
el.form.addEventListener("submit", onSubmit);
el.form.addEventListener("keydown", (e) => { if (e.key === "Escape") toggleForm(false); });
