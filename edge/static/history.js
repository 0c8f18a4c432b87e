// Past conversations, newest first, from the read model (GET /api/v1/sessions?order=newest);
// a conversation opens to its transcript (GET /api/v1/sessions/{id}/messages).

import { API, all, describe, request } from "./api.js";
import { line, toolWords } from "./lines.js";

const $ = (id) => document.getElementById(id);
const el = { list: $("history-list"), empty: $("history-empty"), more: $("history-more"),
             refresh: $("history-refresh"), error: $("history-error") };
const PAGE = 10;
let cursor = null;
let names = () => new Map(); // assistant id -> name
let loading = null;

/** Where assistants' names come from (they may be renamed between loads). */
export function namesFrom(lookup) { names = lookup; }

const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function item(s) {
  const li = document.createElement("li");
  const details = document.createElement("details");
  details.dataset.session = s.session_id;
  const summary = document.createElement("summary");
  const head = document.createElement("span");
  head.className = "title";
  const at = s.started_at || s.last_event_at;
  const name = names().get(s.assistant_id) || "Assistant";
  head.textContent = `${name} · ${at ? when.format(new Date(at)) : ""}`;
  const about = document.createElement("span");
  about.className = "about";
  const parts = [s.transport === "webrtc" || s.transport === "xiaozhi" ? "voice" : "text",
                 `${s.turns} ${s.turns === 1 ? "turn" : "turns"}`];
  if (!s.ended_at) parts.push("ongoing");
  about.textContent = parts.join(" · ");
  summary.append(head, about);
  if (s.last_answer) {
    const preview = document.createElement("span");
    preview.className = "preview";
    preview.textContent = s.last_answer;
    summary.append(preview);
  }
  const log = document.createElement("ol");
  log.className = "log past";
  log.setAttribute("aria-label", "Transcript");
  details.append(summary, log);
  details.addEventListener("toggle", () => {
    if (details.open && !details.dataset.loaded) transcript(details, log, name);
  });
  li.append(details);
  return li;
}

async function transcript(details, log, name) {
  details.dataset.loaded = "loading";
  log.setAttribute("aria-busy", "true");
  try {
    const messages = await all(`${API}/sessions/${encodeURIComponent(details.dataset.session)}/messages`, 1000);
    log.replaceChildren();
    for (const m of messages) {
      if (m.role === "user") line(log, "user", m.text, "You");
      else if (m.role === "assistant" && m.tool_name) line(log, "note tool", toolWords(m.tool_name, 1));
      else if (m.role === "assistant") line(log, "assistant", m.text, name);
      // role "tool" (a tool's raw result) is for the assistant, not for reading here
    }
    if (!log.childElementCount) line(log, "note", "Nothing was said.");
    details.dataset.loaded = "yes";
  } catch (err) {
    delete details.dataset.loaded;
    log.replaceChildren();
    line(log, "note", "Could not load this conversation: " + describe(err));
  } finally {
    log.setAttribute("aria-busy", "false");
  }
}

async function load(more) {
  const query = `?order=newest&limit=${PAGE}` + (more && cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
  el.error.hidden = true;
  try {
    const page = await request("GET", `${API}/sessions${query}`);
    const items = page.items.map(item);
    if (more) {
      el.list.append(...items);
    } else {
      // what the reader had open stays open
      const open = new Set([...el.list.querySelectorAll("details[open]")].map((d) => d.dataset.session));
      el.list.replaceChildren(...items);
      for (const d of el.list.querySelectorAll("details")) if (open.has(d.dataset.session)) d.open = true;
    }
    cursor = page.next_cursor;
  } catch (err) {
    el.error.textContent = "Could not load your conversations: " + describe(err);
    el.error.hidden = false;
  }
  el.more.hidden = !cursor;
  el.empty.hidden = el.list.childElementCount > 0;
}

/** The first page again (or the next one with `more`); one load at a time. */
export function refresh(more = false) {
  loading = (loading || Promise.resolve()).then(() => load(more));
  return loading;
}

export function clear() {
  el.list.replaceChildren();
  cursor = null;
  el.more.hidden = true;
  el.empty.hidden = true;
}

el.refresh.addEventListener("click", () => refresh());
el.more.addEventListener("click", () => refresh(true));
