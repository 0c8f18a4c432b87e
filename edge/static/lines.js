// Lines of a conversation (the live one and past ones): bubbles for what was said, one-liners
// for tool steps in words people use, never the tools' internal names.

const TOOL_WORDS = {
  knowledge_search: ["Searching your documents…", "Searched your documents", "Could not search your documents"],
  get_time: ["Checking the time…", "Checked the time", "Could not check the time"],
  calculator: ["Calculating…", "Calculated", "Could not calculate"],
};
// device tools, webhooks, MCP tools and anything new: said the same general way
const OTHER_TOOL = ["Using a tool…", "Used a tool", "A tool did not work"];

/** What a tool step shows: phase 0 while it runs, 1 done, 2 failed. */
export function toolWords(name, phase) {
  return (TOOL_WORDS[name] || OTHER_TOOL)[phase];
}

/** Append a line to `log` (an <ol>): `kind` is user, assistant or note (plus modifiers). */
export function line(log, kind, text, who) {
  const li = document.createElement("li");
  li.className = "msg " + kind;
  if (who) {
    const label = document.createElement("span");
    label.className = "who-label";
    label.textContent = who;
    li.append(label);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  li.append(span);
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(li);
  if (atBottom) log.scrollTop = log.scrollHeight;
  return li;
}

export const setText = (li, text) => { li.querySelector(".text").textContent = text; };
export const follow = (log) => { log.scrollTop = log.scrollHeight; };
