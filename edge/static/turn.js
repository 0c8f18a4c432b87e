// An assistant's turn-taking (its `turn` settings): when a pause ends the user's turn, how
// long speech over the assistant must last to pause it, and whether its own voice coming back
// through a speaker is discounted. Each left empty is the server's configuration; the API
// changes only the turn settings sent, and null sets one back to the server's.

// [field, label, what it means, kind, choices ([value, label]) or the number's limits]
const FIELDS = [
  ["detector", "End of turn", "What ends the user's turn: the turn model judging each pause, or a fixed silence",
    "select", [["smart_turn", "Turn model"], ["silence", "Silence only"]]],
  ["complete_hold_ms", "Hold if complete (ms)", "Silence that ends a sentence judged complete",
    "number", { min: 0, max: 60000, step: 10 }],
  ["incomplete_max_ms", "Wait if unfinished (ms)", "Silence that ends a sentence judged unfinished anyway",
    "number", { min: 0, max: 60000, step: 10 }],
  ["barge_in_min_ms", "Interrupt after (ms)", "Speech over the assistant this long pauses it",
    "number", { min: 0, max: 60000, step: 10 }],
  ["echo", "Echo from a speaker", "Ignore its own voice coming back through a speaker: Auto unless " +
    "the device cancels echo itself", "select", [["auto", "Auto"], ["on", "Ignore (speaker)"], ["off", "Don't check"]]],
];
const SERVER = "server default";

/** One field per turn setting, each named by its setting (`data-turn`), ids under `prefix`. */
export function turnFields(prefix, turn) {
  const grid = document.createElement("div");
  grid.className = "turn-grid";
  for (const [name, text, meaning, kind, spec] of FIELDS) {
    const field = document.createElement("div");
    field.className = "field";
    const label = document.createElement("label");
    label.htmlFor = `${prefix}-${name}`;
    label.textContent = text;
    let input;
    if (kind === "select") {
      input = document.createElement("select");
      input.append(new Option("Server default", ""), ...spec.map(([value, words]) => new Option(words, value)));
    } else {
      input = document.createElement("input");
      input.type = "number";
      input.inputMode = "numeric";
      Object.assign(input, spec);
      input.placeholder = SERVER;
    }
    input.id = label.htmlFor;
    input.title = meaning;
    input.dataset.turn = name;
    field.append(label, input);
    grid.append(field);
  }
  show(grid, turn);
  return grid;
}

/** Put an assistant's turn settings in the fields (empty: the server's). */
export function show(grid, turn) {
  for (const input of grid.querySelectorAll("[data-turn]")) {
    const value = turn ? turn[input.dataset.turn] : null;
    input.value = value === null || value === undefined ? "" : String(value);
  }
}

/** A field's value as the API takes it: null (the server's) when empty, a number as typed
 * (the API says what is out of range); undefined for what is not a number at all. */
export function valueOf(input) {
  if (input.validity.badInput) return undefined;
  const text = input.value.trim();
  if (!text) return null;
  return input.type === "number" ? Number(text) : text;
}

/** Every field's setting that is not the server's, for a new assistant's `turn`. */
export function chosen(grid) {
  const turn = {};
  for (const input of grid.querySelectorAll("[data-turn]")) {
    const value = valueOf(input);
    if (value !== null) turn[input.dataset.turn] = value === undefined ? input.value : value;
  }
  return turn;
}

/** A row's "Turn-taking" disclosure: each field is saved when it changes (`save(changes,
 * what)`, `what` the change in words, resolves once the server has it, or rejects and the
 * field shows the saved value again). */
export function turnEditor(a, save) {
  const details = document.createElement("details");
  details.className = "turn";
  const summary = document.createElement("summary");
  summary.textContent = "Turn-taking";
  summary.setAttribute("aria-label", `Turn-taking of ${a.name}`);
  const grid = turnFields(`t-${a.assistant_id}`, a.turn);
  details.append(summary, grid);
  grid.addEventListener("change", async (event) => {
    const input = event.target;
    if (!input.dataset || !input.dataset.turn) return;
    const value = valueOf(input);
    if (value === undefined) { // the browser holds no number to send
      show(grid, a.turn);
      return;
    }
    input.disabled = true;
    const label = grid.querySelector(`label[for="${input.id}"]`).textContent;
    const shown = value === null ? SERVER : input.type === "number" ? String(value)
      : input.selectedOptions[0].textContent;
    try {
      await save({ [input.dataset.turn]: value }, `${label}: ${shown}`);
    } catch {
      show(grid, a.turn);
    } finally {
      input.disabled = false;
    }
  });
  return details;
}
