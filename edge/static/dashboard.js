// Usage: totals, latency percentiles per day, turns per day and cost per assistant over the
// last 24 hours, 7 or 30 days, from GET /api/v1/analytics (a user's own; an operator's: all
// users'). Shown at #usage instead of the conversation.

import { API, ApiError, describe, request } from "./api.js";
import { barChart, lineChart, rowChart } from "./charts.js";

const $ = (id) => document.getElementById(id);
const el = {
  section: $("dashboard"), scope: $("dash-scope"), error: $("dash-error"), empty: $("dash-empty"),
  body: $("dash-body"), totals: $("dash-totals"), latency: $("dash-latency"), stage: $("dash-stage"),
  turns: $("dash-turns"), cost: $("dash-cost"), costNote: $("dash-cost-note"),
  refresh: $("dash-refresh"), ranges: document.querySelectorAll("input[name='dash-range']"),
};

// The API's latency stages, in the order a voice turn passes them, and how a person reads them.
const STAGES = [
  ["first_delta", "Typed message → first words"],
  ["transcript", "End of speech → transcript"],
  ["first_token", "End of speech → first token"],
  ["first_sentence", "End of speech → first sentence"],
  ["first_audio", "End of speech → first audio"],
];
const PERCENTILES = ["p50", "p90", "p99"];
const SPANS = { "24h": "the last 24 hours", "7d": "the last 7 days", "30d": "the last 30 days" };

let shown = null; // what was last loaded: {days, assistants}
let loads = 0; // a slower earlier answer never replaces a later one
let drawnAt = 0; // the width the charts were drawn for

const count = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const minutes = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const day = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: "UTC" });

function money(currency) {
  const cents = new Intl.NumberFormat(undefined, { style: "currency", currency });
  // costs of a few tokens are fractions of a cent: say them to four places
  const small = new Intl.NumberFormat(undefined, { style: "currency", currency, maximumFractionDigits: 4 });
  return (v) => (v > 0 && v < 1 ? small : cents).format(v);
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  return v < 1000 ? `${Math.round(v)} ms` : `${+(v / 1000).toFixed(v < 10_000 ? 2 : 1)} s`;
}

function dayLabel(row) {
  return /^\d{4}-\d{2}-\d{2}$/.test(row.key) ? day.format(new Date(row.key + "T00:00:00Z")) : row.label;
}

const DAY_MS = 86_400_000;

// Every day of the period, a day without sessions (the API leaves it out) as a row of nothing,
// so the time axis is even and a quiet day shows as one.
function everyDay(answer) {
  const rows = new Map(answer.rows.map((row) => [row.key, row]));
  const first = Date.parse(answer.since);
  const last = Date.parse(answer.until);
  if (Number.isFinite(first) && Number.isFinite(last) && last - first <= 400 * DAY_MS) {
    for (let t = first - (first % DAY_MS); t <= last; t += DAY_MS) {
      const key = new Date(t).toISOString().slice(0, 10);
      if (!rows.has(key)) rows.set(key, { key, label: key, turns: 0, latency_ms: {} });
    }
  }
  return [...rows.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

const range = () => [...el.ranges].find((r) => r.checked)?.value || "7d";

function card(name, value, about) {
  const item = document.createElement("div");
  item.className = "stat";
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  item.dataset.stat = name.toLowerCase();
  item.append(dt, dd);
  if (about) {
    const small = document.createElement("dd");
    small.className = "about";
    small.textContent = about;
    item.append(small);
  }
  return item;
}

function renderTotals(t, cost) {
  el.totals.replaceChildren(
    card("Sessions", count.format(t.sessions)),
    card("Turns", count.format(t.turns)),
    card("Tokens", count.format(t.prompt_tokens + t.completion_tokens),
         `${count.format(t.prompt_tokens)} in · ${count.format(t.completion_tokens)} out`),
    card("Cost", cost(t.cost)),
    card("Audio", `${minutes.format(t.audio_in_minutes + t.audio_out_minutes)} min`,
         `${minutes.format(t.audio_in_minutes)} heard · ${minutes.format(t.audio_out_minutes)} spoken`),
    card("Tool calls", count.format(t.tool_calls)),
    card("Interruptions", count.format(t.interruptions)),
    card("Errors", count.format(t.errors)),
  );
}

// The stages measured in this period; the chosen one stays chosen while it has turns.
function renderStages(totals) {
  const measured = STAGES.filter(([key]) => (totals.latency_ms?.[key]?.count || 0) > 0);
  const wanted = el.stage.value;
  el.stage.replaceChildren(...measured.map(([key, words]) => new Option(words, key)));
  if (measured.some(([key]) => key === wanted)) el.stage.value = wanted;
  el.stage.disabled = measured.length < 2;
  return measured.length > 0;
}

function renderLatency() {
  const { days } = shown;
  const stage = el.stage.value;
  const words = STAGES.find(([key]) => key === stage)?.[1] || "";
  if (!stage) {
    el.latency.replaceChildren(note("No latency was measured in this period."));
    return;
  }
  const of = (row, p) => row.latency_ms?.[stage]?.[p] ?? null;
  el.latency.replaceChildren(lineChart({
    title: `${words}: p50, p90 and p99 per day`,
    labels: days.rows.map(dayLabel),
    series: PERCENTILES.map((p) => ({ name: p, values: days.rows.map((row) => of(row, p)) })),
    format: ms, width: widthOf(el.latency),
  }));
}

// Charts are drawn for their box's width (see charts.js).
const widthOf = (box) => Math.max(240, Math.floor(box.clientWidth) || 640);

function note(text) {
  const p = document.createElement("p");
  p.className = "hint";
  p.textContent = text;
  return p;
}

function render(days, assistants) {
  shown = { days: { ...days, rows: everyDay(days) }, assistants };
  const t = days.totals;
  const cost = money(days.currency || "USD");
  el.scope.textContent = `${days.scope === "all" ? "All users" : "Your usage"} · ${SPANS[range()]}`;
  el.section.dataset.scope = days.scope;
  const empty = !t || !t.turns;
  el.empty.hidden = !empty;
  el.empty.textContent = `No turns yet in ${SPANS[range()]}: talk to an assistant and they show here.`;
  el.body.hidden = empty;
  if (empty) return;
  renderTotals(t, cost);
  renderStages(t);
  el.costNote.hidden = t.cost > 0;
  draw();
}

function draw() {
  const { days, assistants } = shown;
  const cost = money(days.currency || "USD");
  renderLatency();
  el.turns.replaceChildren(barChart({
    title: "Turns per day", labels: days.rows.map(dayLabel), values: days.rows.map((r) => r.turns),
    format: (v) => count.format(v), width: widthOf(el.turns),
  }));
  const rows = [...assistants.rows].sort((a, b) => b.cost - a.cost || b.turns - a.turns);
  el.cost.replaceChildren(rowChart({
    title: "Cost per assistant", labels: rows.map((r) => r.label || r.key), values: rows.map((r) => r.cost),
    format: cost, width: widthOf(el.cost),
  }));
  drawnAt = el.body.clientWidth;
}

/** Load and draw the chosen period. */
export async function refresh() {
  const mine = ++loads;
  const since = range();
  el.error.hidden = true;
  el.section.setAttribute("aria-busy", "true");
  try {
    const get = (by) => request("GET", `${API}/analytics?since=${since}&by=${by}`);
    const [days, assistants] = await Promise.all([get("day"), get("assistant")]);
    if (mine === loads) render(days, assistants);
  } catch (err) {
    if (mine !== loads) return;
    el.body.hidden = true;
    el.empty.hidden = true;
    el.scope.textContent = "";
    const denied = err instanceof ApiError && err.status === 403;
    el.error.textContent = (denied ? "This account may not read usage: " : "Could not load usage: ") + describe(err);
    el.error.hidden = false;
  } finally {
    if (mine === loads) el.section.setAttribute("aria-busy", "false");
  }
}

export function clear() {
  loads++;
  shown = null;
  el.body.hidden = true;
  el.empty.hidden = true;
  el.error.hidden = true;
  el.scope.textContent = "";
  for (const box of [el.totals, el.latency, el.turns, el.cost]) box.replaceChildren();
}

for (const r of el.ranges) r.addEventListener("change", () => refresh());
el.refresh.addEventListener("click", () => refresh());
el.stage.addEventListener("change", () => { if (shown) renderLatency(); });
// A turned phone or a resized window: the charts again for their new width.
new ResizeObserver(() => {
  if (shown && !el.body.hidden && Math.abs(el.body.clientWidth - drawnAt) > 16) draw();
}).observe(el.body);
