// Small SVG charts for the dashboard: a line chart of several series over the same labels
// (gaps where a value is null) and a bar chart, upright or lying. Drawn as SVG elements with
// classes, so app.css colours them for light and dark alike, a test can count their points
// and bars, and every point and bar carries its value as a tooltip (<title>). A chart is drawn
// for the width it is given, one unit a pixel, so its text keeps its size on any screen.

const NS = "http://www.w3.org/2000/svg";
const PAD = { top: 14, right: 16, bottom: 28, left: 56 };

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A round maximum for an axis that starts at 0, and its step (1, 2 or 5 × 10ⁿ), for 4 or so lines. */
export function niceScale(max, lines = 4) {
  if (!(max > 0)) return { max: 1, step: 0.25 };
  const rough = max / lines;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= rough);
  return { max: Math.ceil(max / step - 1e-9) * step, step };
}

function frame(title, W, height) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${height}`, width: W, height, role: "img", class: "chart-svg" });
  root.append(svg("title", {}, title));
  return root;
}

function yAxis(root, scale, W, height, format) {
  const grid = svg("g", { class: "grid" });
  const inner = height - PAD.top - PAD.bottom;
  for (let v = 0; v <= scale.max + 1e-9; v += scale.step) {
    const y = PAD.top + inner - (v / scale.max) * inner;
    grid.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }));
    grid.append(svg("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, format(v)));
  }
  root.append(grid);
}

// At most `room` labels along the x axis, the last always among them.
function xLabels(root, labels, xOf, height, room = 8) {
  const every = Math.max(1, Math.ceil(labels.length / room));
  const g = svg("g", { class: "x-labels" });
  labels.forEach((label, i) => {
    if ((labels.length - 1 - i) % every) return;
    g.append(svg("text", { x: xOf(i), y: height - 8, "text-anchor": "middle", class: "tick" }, label));
  });
  root.append(g);
}

function legend(series) {
  const list = document.createElement("ul");
  list.className = "legend";
  series.forEach((s, i) => {
    const item = document.createElement("li");
    item.className = "s" + i;
    item.textContent = s.name;
    list.append(item);
  });
  return list;
}

/**
 * Lines over `labels`, one per series ({name, values: [number|null]}); a null breaks its line.
 * `format` writes a value for the axis and the tooltips.
 */
export function lineChart({ title, labels, series, format = String, width: W = 640, height = 240 }) {
  const root = frame(title, W, height);
  const values = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  const scale = niceScale(Math.max(0, ...values));
  const inner = { w: W - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
  const xOf = (i) => PAD.left + (labels.length > 1 ? (i / (labels.length - 1)) * inner.w : inner.w / 2);
  const yOf = (v) => PAD.top + inner.h - (v / scale.max) * inner.h;
  yAxis(root, scale, W, height, format);
  xLabels(root, labels, xOf, height, Math.max(2, Math.floor(W / 70)));
  series.forEach((s, n) => {
    const g = svg("g", { class: `series s${n}`, "data-series": s.name });
    // one path per run of values without a gap
    let d = "";
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const previous = i > 0 && s.values[i - 1] !== null && s.values[i - 1] !== undefined;
      d += `${previous ? "L" : "M"}${xOf(i).toFixed(1)} ${yOf(v).toFixed(1)} `;
    });
    for (const run of d.split(/(?=M)/).filter((r) => r.includes("L"))) {
      g.append(svg("path", { d: run.trim(), class: "line" }));
    }
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const dot = svg("circle", { cx: xOf(i), cy: yOf(v), r: 3.5, class: "point", "data-value": v });
      dot.append(svg("title", {}, `${s.name}, ${labels[i]}: ${format(v)}`));
      g.append(dot);
    });
    root.append(g);
  });
  const figure = document.createElement("div");
  figure.className = "chart line-chart";
  figure.append(root, legend(series));
  return figure;
}

/** Upright bars, one per label, each with its value above it. */
export function barChart({ title, labels, values, format = String, width: W = 640, height = 220 }) {
  const root = frame(title, W, height);
  const scale = niceScale(Math.max(0, ...values));
  const inner = { w: W - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
  const slot = inner.w / Math.max(1, labels.length);
  const width = Math.min(56, slot * 0.7);
  const xOf = (i) => PAD.left + slot * (i + 0.5);
  yAxis(root, scale, W, height, format);
  xLabels(root, labels, xOf, height, Math.max(2, Math.floor(W / 60)));
  const g = svg("g", { class: "bars" });
  values.forEach((v, i) => {
    const h = (v / scale.max) * inner.h;
    const y = PAD.top + inner.h - h;
    const bar = svg("rect", { x: xOf(i) - width / 2, y, width, height: h, rx: 2, class: "bar",
                              "data-label": labels[i], "data-value": v });
    bar.append(svg("title", {}, `${labels[i]}: ${format(v)}`));
    g.append(bar);
    if (slot >= 28 && v > 0) { // room for the value above its bar; a day of nothing is no bar
      g.append(svg("text", { x: xOf(i), y: y - 4, "text-anchor": "middle", class: "value" }, format(v)));
    }
  });
  root.append(g);
  const figure = document.createElement("div");
  figure.className = "chart bar-chart";
  figure.append(root);
  return figure;
}

/** Lying bars, one row per label (names may be long), each with its value after it. */
export function rowChart({ title, labels, values, format = String, width: W = 640 }) {
  const row = 30;
  const height = PAD.top + row * Math.max(1, labels.length);
  const root = frame(title, W, height);
  const left = Math.min(160, W * 0.35);
  const room = Math.max(10, W - left - 80); // the value's text after the longest bar
  const chars = Math.max(6, Math.floor((left - 8) / 7.5));
  const max = Math.max(0, ...values) || 1;
  const g = svg("g", { class: "bars" });
  labels.forEach((label, i) => {
    const y = PAD.top / 2 + i * row;
    const name = label.length > chars ? label.slice(0, chars - 1) + "…" : label;
    g.append(svg("text", { x: left - 8, y: y + row / 2 + 4, "text-anchor": "end", class: "name" }, name));
    const w = Math.max(values[i] > 0 ? 2 : 0, (values[i] / max) * room);
    const bar = svg("rect", { x: left, y: y + 5, width: w, height: row - 10, rx: 2, class: "bar",
                              "data-label": label, "data-value": values[i] });
    bar.append(svg("title", {}, `${label}: ${format(values[i])}`));
    g.append(bar);
    g.append(svg("text", { x: left + w + 6, y: y + row / 2 + 4, class: "value" }, format(values[i])));
  });
  root.append(g);
  const figure = document.createElement("div");
  figure.className = "chart row-chart";
  figure.append(root);
  return figure;
}
