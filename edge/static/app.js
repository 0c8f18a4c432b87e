// vagent's page: sign in, pick or add an assistant, talk to it by text (no call or microphone
// needed), send it a photo, or call it by voice, read past conversations, and bind xiaozhi
// devices. Plain JavaScript modules, no build step: api.js (REST and tokens), talk.js (the conversation),
// links.js (its /ws and WebRTC connections), media.js (microphones, speakers, the voice's
// bars), history.js (past conversations), lines.js (a conversation's lines), devices.js
// (xiaozhi devices bound by their code), turn.js (an assistant's turn-taking), dashboard.js and
// charts.js (usage and its charts, at #usage).

import { API, all, describe, forgetTokens, idempotencyKey, keepTokens, request, tokens, whenExpired } from "./api.js";
import * as dashboard from "./dashboard.js";
import * as devices from "./devices.js";
import * as history from "./history.js";
import * as talk from "./talk.js";
import { chosen, turnEditor, turnFields } from "./turn.js";

const STORE = window.sessionStorage;
const $ = (id) => document.getElementById(id);
const el = {
  body: document.body, notice: $("notice"), who: $("who"), signOut: $("sign-out"),
  authTitle: $("auth-title"), authForm: $("auth-form"), authSubmit: $("auth-submit"),
  authError: $("auth-error"), authSwitch: $("auth-switch"), switchText: $("switch-text"),
  nameField: $("name-field"), displayName: $("display-name"), email: $("email"),
  password: $("password"), passwordHint: $("password-hint"),
  addToggle: $("add-toggle"), addForm: $("add-form"), addSubmit: $("add-submit"),
  addCancel: $("add-cancel"), addError: $("add-error"), aName: $("a-name"),
  aPersona: $("a-persona"), aVoice: $("a-voice"), aLanguage: $("a-language"), aTurn: $("a-turn"),
  list: $("assistant-list"), empty: $("assistants-empty"),
  callButton: $("call-button"), hangup: $("hangup-button"), stopAnswer: $("stop-answer"),
  mute: $("mute-button"), micSelect: $("mic-select"), speakerSelect: $("speaker-select"),
  chatForm: $("chat-form"), chatInput: $("chat-input"), photoButton: $("photo-button"),
  photoInput: $("photo-input"), layout: document.querySelector(".layout"), dashboard: $("dashboard"),
  viewTalk: $("view-talk"), viewUsage: $("view-usage"), dashTitle: $("dash-title"),
};

let me = null;
let assistants = [];
let selectedId = STORE.getItem("vagent.assistant");
let registering = false;

function notice(text, kind = "error") {
  el.notice.textContent = text || "";
  el.notice.className = "notice" + (kind === "info" ? " info" : "");
  el.notice.hidden = !text;
}

function showError(target, err) {
  target.textContent = describe(err);
  target.hidden = false;
}

// ---------------------------------------------------------------- signing in

function showSignedOut() {
  talk.leave();
  el.body.dataset.state = "signed-out";
  el.who.textContent = "";
  assistants = [];
  me = null;
  el.list.replaceChildren();
  talk.useAssistant(null);
  history.clear();
  devices.clear();
  dashboard.clear();
  el.addForm.hidden = true;
  el.addToggle.setAttribute("aria-expanded", "false");
}

whenExpired((err) => {
  // the login is over (expired, revoked, refreshed elsewhere): back to the sign-in form
  forgetTokens();
  showSignedOut();
  notice("Your sign-in has ended: " + describe(err) + " Please sign in again.");
});

function setMode(register) {
  registering = register;
  el.authTitle.textContent = register ? "Create an account" : "Sign in";
  el.authSubmit.textContent = register ? "Create account" : "Sign in";
  el.switchText.textContent = register ? "Have an account?" : "New here?";
  el.authSwitch.textContent = register ? "Sign in" : "Create an account";
  el.nameField.hidden = !register;
  el.passwordHint.hidden = !register;
  el.password.autocomplete = register ? "new-password" : "current-password";
  el.authError.hidden = true;
}

async function onAuthSubmit(event) {
  event.preventDefault();
  el.authError.hidden = true;
  notice("");
  const email = el.email.value.trim();
  const password = el.password.value;
  if (!email || !password) {
    showError(el.authError, new Error("Enter your email and password."));
    (email ? el.password : el.email).focus();
    return;
  }
  el.authSubmit.disabled = true;
  const label = el.authSubmit.textContent;
  el.authSubmit.textContent = registering ? "Creating…" : "Signing in…";
  try {
    if (registering) {
      const body = { email, password };
      const name = el.displayName.value.trim();
      if (name) body.display_name = name;
      await request("POST", API + "/auth/register", body);
    }
    keepTokens(await request("POST", API + "/auth/login", { email, password }));
    el.password.value = "";
    await enter();
  } catch (err) {
    showError(el.authError, err);
  } finally {
    el.authSubmit.disabled = false;
    el.authSubmit.textContent = label;
  }
}

async function enter() {
  me = await request("GET", API + "/me");
  el.who.textContent = me.display_name || me.email;
  el.body.dataset.state = "idle";
  talk.refreshDevices();
  await loadAssistants();
  history.refresh();
  devices.refresh();
  if (!showView()) $("main").focus();
}

// ---------------------------------------------------------------- views

// #usage shows the dashboard, #talk (or no hash) the conversation; other fragments (the skip
// link's) leave the view as it is. A call goes on while its view is hidden. Whether the
// dashboard is shown.
function showView(focus = false) {
  const hash = window.location.hash;
  if (hash && hash !== "#usage" && hash !== "#talk") return !el.dashboard.hidden;
  const usage = hash === "#usage";
  el.layout.hidden = usage;
  el.dashboard.hidden = !usage;
  for (const [link, on] of [[el.viewTalk, !usage], [el.viewUsage, usage]]) {
    if (on) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (usage && me) {
    dashboard.refresh();
    if (focus) el.dashTitle.focus();
  }
  return usage;
}

async function signOut() {
  talk.leave();
  const refresh = tokens.refresh;
  if (tokens.access) {
    try { await request("POST", API + "/auth/logout", refresh ? { refresh_token: refresh } : undefined); } catch { /* gone anyway */ }
  }
  forgetTokens();
  showSignedOut();
  notice("You are signed out.", "info");
  el.email.focus();
}

// ---------------------------------------------------------------- assistants

const selected = () => assistants.find((a) => a.assistant_id === selectedId) || null;

// An assistant's `language`: what its sessions are heard and answered in. [code, the
// picker's short label, how a sentence names it]
const LANGUAGES = [
  ["en", "English", "English"],
  ["zh", "中文", "Mandarin (中文)"],
  ["auto", "Auto", "the language it is spoken to in"],
];

function languageSelect(select, value) {
  select.replaceChildren(...LANGUAGES.map(([code, label]) => new Option(label, code)));
  select.value = value || "en";
  return select;
}

// The list's language picker: saved at once, put back if the server refuses.
function languagePicker(a) {
  const select = languageSelect(document.createElement("select"), a.language);
  select.className = "language";
  select.setAttribute("aria-label", `Language of ${a.name}`);
  select.addEventListener("change", async () => {
    const wanted = select.value;
    select.disabled = true;
    try {
      await request("PATCH", `${API}/assistants/${encodeURIComponent(a.assistant_id)}`, { language: wanted });
      a.language = wanted;
      notice(`${a.name} now answers in ${LANGUAGES.find(([code]) => code === a.language)[2]}.`, "info");
    } catch (err) {
      select.value = a.language || "en";
      notice(`Could not change ${a.name}'s language: ${describe(err)}`);
    } finally {
      select.disabled = false;
    }
  });
  return select;
}

// The list's turn-taking: each setting saved when it changes (only it: the API keeps the others).
function turnPicker(a) {
  return turnEditor(a, async (changes, what) => {
    try {
      const saved = await request("PATCH", `${API}/assistants/${encodeURIComponent(a.assistant_id)}`, { turn: changes });
      a.turn = saved.turn;
      notice(`Saved ${a.name}'s turn-taking. ${what}.`, "info");
    } catch (err) {
      notice(`Could not change ${a.name}'s turn-taking: ${describe(err)}`);
      throw err;
    }
  });
}

async function loadAssistants() {
  el.list.setAttribute("aria-busy", "true");
  try {
    assistants = await all(API + "/assistants");
  } catch (err) {
    notice("Could not load your assistants: " + describe(err));
    return;
  } finally {
    el.list.setAttribute("aria-busy", "false");
  }
  if (!selected()) selectedId = (me && me.default_assistant_id) || (assistants[0] && assistants[0].assistant_id) || null;
  renderAssistants();
}

function renderAssistants() {
  const items = assistants.map((a) => {
    const li = document.createElement("li");
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "assistant";
    input.value = a.assistant_id;
    input.checked = a.assistant_id === selectedId;
    input.addEventListener("change", () => choose(a.assistant_id));
    const text = document.createElement("span");
    const name = document.createElement("span");
    name.className = "name";
    name.id = "an-" + a.assistant_id;
    name.textContent = a.name;
    input.setAttribute("aria-labelledby", name.id); // the name alone; the rest describes it
    const title = document.createElement("span");
    title.className = "title";
    title.append(name);
    if (me && a.assistant_id === me.default_assistant_id) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "default";
      title.append(" ", tag);
    }
    text.append(title);
    const about = [];
    if (title.childElementCount > 1) about.push("your default assistant");
    if (a.persona) {
      const persona = document.createElement("span");
      persona.className = "persona";
      persona.textContent = a.persona;
      text.append(persona);
      about.push(a.persona);
    }
    if (about.length) {
      const hidden = document.createElement("span");
      hidden.id = "ad-" + a.assistant_id;
      hidden.hidden = true;
      hidden.textContent = about.join(": ");
      text.append(hidden);
      input.setAttribute("aria-describedby", hidden.id);
    }
    label.append(input, text);
    li.append(label, languagePicker(a), turnPicker(a));
    return li;
  });
  el.list.replaceChildren(...items);
  el.empty.hidden = assistants.length > 0;
  choose(selectedId);
  devices.assistantsChanged();
}

function choose(id) {
  selectedId = id;
  if (id) STORE.setItem("vagent.assistant", id);
  talk.useAssistant(selected());
}

function toggleAdd(open) {
  el.addForm.hidden = !open;
  el.addToggle.setAttribute("aria-expanded", String(open));
  el.addError.hidden = true;
  if (open) {
    el.addForm.dataset.key = idempotencyKey(); // a double submit creates one assistant
    el.aName.focus();
  } else {
    el.addForm.reset();
    el.aLanguage.value = "en";
    el.aTurn.open = false;
    el.addToggle.focus();
  }
}

async function onAddSubmit(event) {
  event.preventDefault();
  el.addError.hidden = true;
  const name = el.aName.value.trim();
  if (!name) {
    showError(el.addError, new Error("Give the assistant a name."));
    el.aName.focus();
    return;
  }
  const body = { name, persona: el.aPersona.value.trim(), language: el.aLanguage.value };
  const voice = el.aVoice.value.trim();
  if (voice) body.voice = voice;
  const turn = chosen(el.aTurn);
  if (Object.keys(turn).length) body.turn = turn;
  el.addSubmit.disabled = true;
  try {
    const created = await request("POST", API + "/assistants", body, { "Idempotency-Key": el.addForm.dataset.key });
    selectedId = created.assistant_id;
    toggleAdd(false);
    await loadAssistants();
    notice(`Added ${created.name}.`, "info");
  } catch (err) {
    showError(el.addError, err);
  } finally {
    el.addSubmit.disabled = false;
  }
}

// ---------------------------------------------------------------- wiring

function onChat(event) {
  event.preventDefault();
  const text = el.chatInput.value.trim();
  if (!text) return;
  el.chatInput.value = "";
  talk.send(text);
}

// A photo takes what is typed as its question.
function onPhoto() {
  const file = el.photoInput.files && el.photoInput.files[0];
  el.photoInput.value = ""; // the same photo may be picked again
  if (!file) return;
  const question = el.chatInput.value.trim();
  el.chatInput.value = "";
  talk.sendPhoto(file, question);
}

history.namesFrom(() => new Map(assistants.map((a) => [a.assistant_id, a.name])));
devices.assistantsFrom(() => ({ list: assistants, preferred: selectedId }));
devices.infoTo((text) => notice(text, "info"));
talk.whenSessionsChange(() => { if (tokens.access) history.refresh(); });

el.authForm.addEventListener("submit", onAuthSubmit);
el.authSwitch.addEventListener("click", () => { setMode(!registering); el.email.focus(); });
el.signOut.addEventListener("click", signOut);
el.addToggle.addEventListener("click", () => toggleAdd(el.addForm.hidden));
el.addCancel.addEventListener("click", () => toggleAdd(false));
el.addForm.addEventListener("submit", onAddSubmit);
el.callButton.addEventListener("click", () => talk.startCall());
el.hangup.addEventListener("click", () => talk.hangUp());
el.stopAnswer.addEventListener("click", () => talk.stopAnswer());
el.mute.addEventListener("click", () => talk.mute());
el.micSelect.addEventListener("change", () => talk.switchMic(el.micSelect.value));
el.speakerSelect.addEventListener("change", () => talk.switchSpeaker(el.speakerSelect.value));
el.chatForm.addEventListener("submit", onChat);
el.photoButton.addEventListener("click", () => el.photoInput.click());
el.photoInput.addEventListener("change", onPhoto);
window.addEventListener("hashchange", () => showView(true));
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !el.addForm.hidden) toggleAdd(false);
});
if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
  navigator.mediaDevices.addEventListener("devicechange", () => talk.refreshDevices());
}
window.addEventListener("pagehide", () => talk.leave());

// for people debugging in the console, and for the page's tests
window.vagent = talk.inspect;
Object.defineProperty(window.vagent, "state", { value: () => el.body.dataset.state });

languageSelect(el.aLanguage, "en");
el.aTurn.append(turnFields("a-turn", null));
setMode(false);
if (tokens.access) {
  enter().catch((err) => {
    if (tokens.access) { forgetTokens(); showSignedOut(); notice(describe(err)); }
  });
} else {
  showSignedOut();
}
