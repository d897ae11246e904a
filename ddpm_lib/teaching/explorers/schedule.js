// The schedule explorer (ddpm_lib.teaching.widgets.ScheduleExplorer): an anywidget ES module.
//
// It runs as a Jupyter widget (anywidget calls `render({model, el})`) and, unchanged, in the static
// HTML book, where a small inline script calls the same `render` with a stand-in model. Everything is
// computed here, in float64 (JavaScript numbers), with the formulas of ddpm_lib/core/schedules.py;
// tests/test_explorers.py runs the exported pure functions under node and compares them with ddpm_lib.
// The DOM it builds (data-param, data-readout, data-error) is described in ddpm_lib/teaching/widgets.py.

export const KINDS = ["linear", "cosine", "sigmoid"];
const MAX_BETA = 0.999; // cosine_schedule and sigmoid_schedule clip beta_t at max_beta = 0.999
const SIGMOID_MIN_BETA = 1e-12; // sigmoid_schedule also clips from below
const LOG_SNR_YLIM = [-22.0, 16.0];

function repr(v) {
  // a number as Python's repr writes it in the library's messages (1.0, not 1; inf, nan)
  if (Number.isNaN(v)) return "nan";
  if (v === Infinity) return "inf";
  if (v === -Infinity) return "-inf";
  return Number.isInteger(v) && Math.abs(v) < 1e16 ? v.toFixed(1) : String(v);
}

function sigmoid(x) {
  // torch.sigmoid's scalar formula, 1 / (1 + exp(-x))
  return 1.0 / (1.0 + Math.exp(-x));
}

function clamp(x, lo, hi) {
  // torch.clamp: NaN stays NaN
  return Number.isNaN(x) ? x : Math.min(Math.max(x, lo), hi);
}

export function linspace(start, end, n) {
  // torch.linspace: the first half counted up from start, the second half down from end
  if (n === 1) return [start];
  const step = (end - start) / (n - 1);
  const half = Math.floor(n / 2);
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = i < half ? start + step * i : end - step * (n - 1 - i);
  return out;
}

function checkT(T) {
  if (!Number.isInteger(T) || T < 1) {
    throw new Error(`the number of steps T must be an integer >= 1, got ${String(T)}.`);
  }
}

function checkFinite(params, names) {
  for (const name of names) {
    const v = params[name];
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new Error(`${name} must be a finite number, got ${String(v)}.`);
    }
  }
}

function betasOf(kind, params, T) {
  // beta_1..beta_T of the schedule constructors of ddpm_lib.core.schedules
  checkT(T);
  if (kind === "linear") {
    checkFinite(params, ["beta_start", "beta_end"]);
    return linspace(params.beta_start, params.beta_end, T);
  }
  if (kind === "cosine") {
    checkFinite(params, ["s"]);
    const s = params.s;
    if (s < 0) throw new Error(`cosine_schedule: the offset s must be >= 0, got ${repr(s)}.`);
    const ab = new Array(T + 1);
    for (let t = 0; t <= T; t++) {
      const c = Math.cos((((t / T + s) / (1 + s)) * Math.PI) / 2);
      ab[t] = c * c;
    }
    const f0 = ab[0];
    for (let t = 0; t <= T; t++) ab[t] = ab[t] / f0;
    const beta = new Array(T);
    for (let t = 1; t <= T; t++) beta[t - 1] = clamp(1.0 - ab[t] / ab[t - 1], -Infinity, MAX_BETA);
    return beta;
  }
  if (kind === "sigmoid") {
    checkFinite(params, ["start", "end", "tau"]);
    const { start, end, tau } = params;
    if (!(start < end)) throw new Error(`sigmoid_schedule: need start < end, got start=${repr(start)}, end=${repr(end)}.`);
    if (tau <= 0) throw new Error(`sigmoid_schedule: tau must be > 0, got ${repr(tau)}.`);
    const vStart = sigmoid(start / tau);
    const vEnd = sigmoid(end / tau);
    const ab = new Array(T + 1);
    for (let t = 0; t <= T; t++) ab[t] = (vEnd - sigmoid((start + (end - start) * (t / T)) / tau)) / (vEnd - vStart);
    for (let t = 1; t < T; t++) {
      if (ab[t] <= 0) {
        throw new Error(
          `sigmoid_schedule: alpha_bar underflows to 0 at t = ${t} < T with tau=${repr(tau)}, start=${repr(start)}, ` +
            `end=${repr(end)}; use a larger tau (Chen 2023 uses tau in [0.3, 1.1]) or a smaller end - start.`,
        );
      }
    }
    const beta = new Array(T);
    for (let t = 1; t <= T; t++) beta[t - 1] = clamp(1.0 - ab[t] / ab[t - 1], SIGMOID_MIN_BETA, MAX_BETA);
    return beta;
  }
  throw new Error(`unknown schedule kind '${String(kind)}'; choose one of ('linear', 'cosine', 'sigmoid').`);
}

/**
 * The schedule of `kind` with `params` over `T` steps, as ddpm_lib.teaching.widgets.make_schedule builds it.
 *
 * Returns {beta, alphaBar, snr, logSnr}: arrays of length T + 1 indexed by t (entry 0: beta 0, alpha_bar 1,
 * snr and log-SNR +Infinity), or {error: message} for parameters the library rejects (never throws).
 */
export function computeSchedule(kind, params, T) {
  try {
    const inner = betasOf(kind, params, T);
    for (let i = 0; i < inner.length; i++) {
      const b = inner[i];
      if (!(b > 0 && b < 1)) {
        throw new Error(
          `beta_t must lie in the open interval (0, 1) for t = 1..T; beta_${i + 1} = ${repr(b)}. ` +
            "Check the schedule's parameters (e.g. beta_end < 1).",
        );
      }
    }
    const beta = [0.0, ...inner];
    const alphaBar = new Array(T + 1);
    const snr = new Array(T + 1);
    const logSnr = new Array(T + 1);
    let ab = 1.0;
    for (let t = 0; t <= T; t++) {
      ab = ab * (1.0 - beta[t]); // Schedule.alpha_bar: cumprod(1 - beta)
      alphaBar[t] = ab;
      snr[t] = ab / (1.0 - ab); // Schedule.snr
      logSnr[t] = Math.log(ab) - Math.log1p(-ab); // Schedule.log_snr
    }
    return { beta, alphaBar, snr, logSnr };
  } catch (err) {
    return { error: err.message };
  }
}

function roundHalfEven(v) {
  // torch.round: halves go to the even neighbour
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps (book eq. q-sample) as uint8 pixels.
 *
 * `pixels` are uint8 values 0..255 (x0 = p / 127.5 - 1, as ddpm_lib.data.to_model), `eps` standard normal
 * draws of the same length; the result is clipped to [-1, 1] and mapped back to 0..255 as
 * ddpm_lib.data.to_uint8 does (here in float64, rounding halves to even).
 */
export function noisedPixels(pixels, eps, alphaBar) {
  const a = Math.sqrt(alphaBar);
  const b = Math.sqrt(1.0 - alphaBar);
  const out = new Array(pixels.length);
  for (let i = 0; i < pixels.length; i++) {
    const xt = a * (pixels[i] / 127.5 - 1.0) + b * eps[i];
    out[i] = roundHalfEven((clamp(xt, -1.0, 1.0) + 1.0) * 127.5);
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// the view

function svgNamespace() {
  // the SVG namespace, read from an <svg> the HTML parser made (so no address is written in this file)
  const box = document.createElement("div");
  box.innerHTML = "<svg></svg>";
  return box.firstChild.namespaceURI;
}

let svgNs = null;

function svgEl(name, attrs) {
  svgNs = svgNs || svgNamespace();
  const node = document.createElementNS(svgNs, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function htmlEl(name, attrs, text) {
  const node = document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function formatNumber(v) {
  // the rounded text of a readout (its data-number keeps every digit)
  if (v === Infinity) return "∞";
  if (v === -Infinity) return "-∞";
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e-3 && a < 1e5 ? v.toPrecision(5) : v.toExponential(4);
}

const W = 178;
const H = 150;
const M = { l: 36, r: 16, t: 20, b: 26 };

function makeChart(title) {
  const svg = svgEl("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  svg.style.font = "10px sans-serif";
  svg.appendChild(svgEl("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "none", stroke: "#999" }));
  const ttl = svgEl("text", { x: M.l, y: 13 });
  ttl.textContent = title;
  svg.appendChild(ttl);
  const layer = svgEl("g", {});
  svg.appendChild(layer);
  return { svg, layer };
}

function drawChart(chart, series, T, t, ylim, yTicks, yLabel) {
  // series: [{values (index = step), color, width}], y already transformed; ylim [lo, hi]
  const layer = chart.layer;
  while (layer.firstChild) layer.removeChild(layer.firstChild);
  const x = (s) => M.l + ((W - M.l - M.r) * s) / T;
  const y = (v) => M.t + ((H - M.t - M.b) * (ylim[1] - clamp(v, ylim[0], ylim[1]))) / (ylim[1] - ylim[0]);
  for (const tick of yTicks) {
    const ty = y(tick);
    layer.appendChild(svgEl("line", { x1: M.l - 3, x2: M.l, y1: ty, y2: ty, stroke: "#666" }));
    const label = svgEl("text", { x: M.l - 5, y: ty + 3, "text-anchor": "end" });
    label.textContent = yLabel(tick);
    layer.appendChild(label);
  }
  for (const tick of [0, T]) {
    const label = svgEl("text", { x: x(tick), y: H - M.b + 12, "text-anchor": "middle" });
    label.textContent = String(tick);
    layer.appendChild(label);
  }
  const tl = svgEl("text", { x: (M.l + W - M.r) / 2, y: H - 4, "text-anchor": "middle" });
  tl.textContent = "t";
  layer.appendChild(tl);
  for (const s of series) {
    const pts = [];
    for (let i = s.from; i < s.values.length; i++) {
      if (Number.isFinite(s.values[i])) pts.push(`${x(i).toFixed(2)},${y(s.values[i]).toFixed(2)}`);
    }
    layer.appendChild(svgEl("polyline", { points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": s.width }));
  }
  layer.appendChild(svgEl("line", { x1: x(t), x2: x(t), y1: M.t, y2: H - M.b, stroke: "#000", "stroke-dasharray": "2,2" }));
}

const CONTROLS = [
  // [name, label, kind of the schedule that uses it (null: all), input attributes]
  ["T", "T (steps)", null, { type: "number", min: 1, step: 1 }],
  ["beta_start", "beta_start", "linear", { type: "number", min: 0, step: "any" }],
  ["beta_end", "beta_end", "linear", { type: "number", min: 0, step: "any" }],
  ["s", "s", "cosine", { type: "number", step: "any" }],
  ["start", "start", "sigmoid", { type: "number", step: "any" }],
  ["end", "end", "sigmoid", { type: "number", step: "any" }],
  ["tau", "tau", "sigmoid", { type: "number", step: "any" }],
];

const READOUTS = [
  ["beta", "β_t"],
  ["alpha_bar", "ᾱ_t"],
  ["snr", "SNR(t)"],
  ["log_snr", "log-SNR (nats)"],
];

function parseControl(input) {
  const text = input.value.trim();
  return text === "" ? NaN : Number(text);
}

export function render({ model, el }) {
  const root = htmlEl("div", { class: "ddpm-explorer", "data-explorer": "schedule" });
  root.style.cssText = "font: 13px sans-serif; max-width: 700px; color: #222; margin: 8px 0;";
  const controls = {};
  const form = htmlEl("div");
  form.style.cssText = "display: flex; flex-wrap: wrap; gap: 4px 12px; align-items: center; margin-bottom: 6px;";

  const kindLabel = htmlEl("label", {}, "schedule ");
  const kind = htmlEl("select", { "data-param": "kind" });
  for (const k of KINDS) kind.appendChild(htmlEl("option", { value: k }, k));
  kind.value = model.get("kind");
  kindLabel.appendChild(kind);
  form.appendChild(kindLabel);
  controls.kind = kind;
  const labels = {};
  for (const [name, text, usedBy, attrs] of CONTROLS) {
    const label = htmlEl("label", {}, `${text} `);
    const input = htmlEl("input", { ...attrs, "data-param": name });
    input.style.width = "6.5em";
    input.value = String(model.get(name));
    label.appendChild(input);
    form.appendChild(label);
    controls[name] = input;
    labels[name] = [label, usedBy];
  }
  const tLabel = htmlEl("label", {}, "t ");
  const tInput = htmlEl("input", { type: "range", min: 0, max: model.get("T"), step: 1, "data-param": "t" });
  tInput.style.cssText = "width: 260px; vertical-align: middle;";
  tInput.value = String(model.get("t"));
  const tText = htmlEl("span");
  tLabel.appendChild(tInput);
  tLabel.appendChild(tText);
  form.appendChild(tLabel);
  controls.t = tInput;
  root.appendChild(form);

  const error = htmlEl("div", { "data-error": "", role: "alert" });
  error.style.cssText = "color: #a00; font-weight: bold; margin: 4px 0;";
  root.appendChild(error);

  const readoutBox = htmlEl("div");
  readoutBox.style.cssText = "display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 4px 0;";
  const readouts = {};
  for (const [name, text] of READOUTS) {
    const item = htmlEl("span", {}, `${text} = `);
    const value = htmlEl("b", { "data-readout": name, "data-number": "" });
    item.appendChild(value);
    readoutBox.appendChild(item);
    readouts[name] = value;
  }
  root.appendChild(readoutBox);

  const figure = htmlEl("div");
  figure.style.cssText = "display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start;";
  const charts = {
    beta: makeChart("β_t (log scale)"),
    alphaBar: makeChart("ᾱ_t (signal variance share)"),
    logSnr: makeChart("log-SNR (nats)"),
  };
  for (const c of Object.values(charts)) figure.appendChild(c.svg);
  const imageBox = htmlEl("div");
  imageBox.style.cssText = "text-align: center; font-size: 11px;";
  const canvas = htmlEl("canvas", { width: model.get("width"), height: model.get("height") });
  canvas.style.cssText = "width: 140px; height: 140px; image-rendering: pixelated; border: 1px solid #999; display: block;";
  imageBox.appendChild(canvas);
  const imageCaption = htmlEl("div");
  imageBox.appendChild(imageCaption);
  figure.appendChild(imageBox);
  root.appendChild(figure);
  el.appendChild(root);

  function params() {
    const p = {};
    for (const name of ["beta_start", "beta_end", "s", "start", "end", "tau"]) p[name] = parseControl(controls[name]);
    return p;
  }

  function update() {
    const k = kind.value;
    for (const [name, [label, usedBy]] of Object.entries(labels)) {
      label.style.display = usedBy === null || usedBy === k ? "" : "none";
    }
    const T = parseControl(controls.T);
    if (Number.isInteger(T) && T >= 1) tInput.max = String(T);
    const t = Number(tInput.value);
    tText.textContent = ` ${t}`;
    const sch = computeSchedule(k, params(), T);
    const bad = sch.error !== undefined;
    error.textContent = bad ? `Invalid parameters: ${sch.error}` : "";
    error.style.display = bad ? "" : "none";
    figure.style.opacity = bad ? "0.25" : "1";
    if (bad) {
      for (const r of Object.values(readouts)) {
        r.textContent = "—";
        r.setAttribute("data-number", "");
      }
      return;
    }
    const values = { beta: sch.beta[t], alpha_bar: sch.alphaBar[t], snr: sch.snr[t], log_snr: sch.logSnr[t] };
    for (const [name, v] of Object.entries(values)) {
      readouts[name].textContent = formatNumber(v);
      readouts[name].setAttribute("data-number", String(v));
    }
    const defaults = model.get("defaults");
    const refs = KINDS.map((rk) => computeSchedule(rk, defaults, T)).filter((r) => r.error === undefined);
    const grey = (field, tf) => refs.map((r) => ({ values: r[field].map(tf), color: "#ccc", width: 1, from: 1 }));
    const lg = (v) => Math.log10(v);
    drawChart(charts.beta, [...grey("beta", lg), { values: sch.beta.map(lg), color: "#1f77b4", width: 2, from: 1 }],
      T, t, [-6, 0], [-6, -4, -2, 0], (v) => `1e${v}`);
    drawChart(charts.alphaBar, [...grey("alphaBar", (v) => v), { values: sch.alphaBar, color: "#1f77b4", width: 2, from: 0 }],
      T, t, [0, 1], [0, 0.5, 1], (v) => String(v));
    drawChart(charts.logSnr, [...grey("logSnr", (v) => v), { values: sch.logSnr, color: "#ff7f0e", width: 2, from: 1 }],
      T, t, LOG_SNR_YLIM, [-20, -10, 0, 10], (v) => String(v));
    const pixels = noisedPixels(model.get("pixels"), model.get("eps"), sch.alphaBar[t]);
    const ctx = canvas.getContext("2d");
    if (ctx) {
      const img = ctx.createImageData(canvas.width, canvas.height);
      for (let i = 0; i < pixels.length; i++) {
        img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = pixels[i];
        img.data[4 * i + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
    }
    imageCaption.textContent = `x_t at t = ${t}`;
  }

  function onControl(name) {
    return () => {
      const input = controls[name];
      const v = name === "kind" ? input.value : parseControl(input);
      if (name === "kind" || Number.isFinite(v)) {
        if (name === "T" && !Number.isInteger(v)) {
          update();
          return;
        }
        model.set(name, v);
        if (name === "T") model.set("t", Number(tInput.value) > v ? v : Number(tInput.value));
        model.save_changes();
      }
      update();
    };
  }

  const cleanups = [];
  for (const name of Object.keys(controls)) {
    for (const ev of ["input", "change"]) controls[name].addEventListener(ev, onControl(name));
    const sync = () => {
      const v = model.get(name);
      const input = controls[name];
      const current = name === "kind" ? input.value : parseControl(input);
      if (current !== v) {
        if (name === "t") tInput.max = String(Math.max(Number(tInput.max), v));
        input.value = String(v);
      }
      update();
    };
    model.on(`change:${name}`, sync);
    cleanups.push(() => model.off(`change:${name}`, sync));
  }
  update();
  return () => cleanups.forEach((f) => f());
}

export default { render };
