// The ELBO explorer (ddpm_lib.teaching.widgets.ElboExplorer): an anywidget ES module.
//
// The one-dimensional linear-Gaussian model of the chapter "The evidence lower bound" (book eq.
// elbo-lg-model; ddpm_lib.toys.LinearGaussianModel with k = d = 1): p(z) = N(0, 1), p(x | z) = N(w z + b, s2),
// and a Gaussian q(z | x) = N(m, v) with v = exp(log_var). It shows log p(x), the ELBO and the gap
// KL(q || p(z | x)), each computed from its own closed form in float64 (the identity log p(x) = ELBO + KL,
// book eq. elbo-identity, is then a check, not a construction). It runs as a Jupyter widget and, unchanged,
// in the static HTML book; the DOM it builds is described in ddpm_lib/teaching/widgets.py.

const LOG_2PI = Math.log(2 * Math.PI);

function checkInputs({ w, b, s2, x, m, logVar }) {
  for (const [name, v] of Object.entries({ weight: w, bias: b, noise_var: s2, x, mean: m, log_var: logVar })) {
    if (typeof v !== "number" || !Number.isFinite(v)) throw new Error(`${name} must be a finite number, got ${String(v)}.`);
  }
  if (!(s2 > 0)) throw new Error(`noise_var is a variance and must be > 0, got ${String(s2)}.`);
}

/**
 * log p(x), the ELBO and KL(q || p(z | x)) in nats, and the posterior, for the 1-D linear-Gaussian model.
 *
 * Inputs {w, b, s2, x, m, logVar}: weight, bias, noise variance s2 > 0, the observation, q's mean and log-variance.
 * Returns {logPx, elbo, kl, recon, priorKl, postMean, postVar} or {error: message} (never throws).
 * log p(x) = log N(x; b, w^2 + s2) (eq. elbo-lg-evidence); the posterior N(w (x - b) / M, s2 / M) with
 * M = w^2 + s2 (eq. elbo-lg-posterior); ELBO = E_q[log p(x | z)] - KL(q || p(z)) (eqs. elbo-recon-prior, elbo-lg-recon).
 */
export function elboTerms(inputs) {
  try {
    checkInputs(inputs);
    const { w, b, s2, x, m, logVar } = inputs;
    const v = Math.exp(logVar);
    const M = w * w + s2;
    const logPx = -0.5 * (LOG_2PI + Math.log(M)) - ((x - b) * (x - b)) / (2 * M);
    const postMean = (w * (x - b)) / M;
    const postVar = s2 / M;
    const resid = x - w * m - b;
    const recon = -0.5 * (LOG_2PI + Math.log(s2)) - (resid * resid + w * w * v) / (2 * s2);
    const priorKl = 0.5 * (v + m * m - 1 - logVar);
    const elbo = recon - priorKl;
    const d = m - postMean;
    const kl = 0.5 * (v / postVar + (d * d) / postVar - 1 + Math.log(postVar) - logVar);
    return { logPx, elbo, kl, recon, priorKl, postMean, postVar };
  } catch (err) {
    return { error: err.message };
  }
}

/** The normal density N(z; mean, variance) at each z of `zs`. */
export function normalPdf(zs, mean, variance) {
  const c = 1 / Math.sqrt(2 * Math.PI * variance);
  return zs.map((z) => c * Math.exp(-((z - mean) * (z - mean)) / (2 * variance)));
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

function svgEl(name, attrs, text) {
  svgNs = svgNs || svgNamespace();
  const node = document.createElementNS(svgNs, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function htmlEl(name, attrs, text) {
  const node = document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const Z_RANGE = [-4, 4];
const DENSITY_MAX = 1.4;
const DW = 420;
const BW = 230;
const H = 220;
const M = { l: 40, r: 10, t: 10, b: 28 };

export function render({ model, el }) {
  const root = htmlEl("div", { class: "ddpm-explorer", "data-explorer": "elbo" });
  root.style.cssText = "font: 13px sans-serif; max-width: 700px; color: #222; margin: 8px 0;";

  const form = htmlEl("div");
  form.style.cssText = "display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: center; margin-bottom: 6px;";
  const controls = {};
  const shown = {};
  const ranges = model.get("ranges"); // {mean: [lo, hi], log_var: [lo, hi]}, the sliders' ends
  for (const [name, text] of [["mean", "mean m of q"], ["log_var", "log-variance log v of q"]]) {
    const [lo, hi] = ranges[name];
    const label = htmlEl("label", {}, `${text} `);
    const input = htmlEl("input", { type: "range", min: lo, max: hi, step: "any", "data-param": name });
    input.style.cssText = "width: 200px; vertical-align: middle;";
    input.value = String(model.get(name));
    const value = htmlEl("span");
    label.appendChild(input);
    label.appendChild(value);
    form.appendChild(label);
    controls[name] = input;
    shown[name] = value;
  }
  root.appendChild(form);

  const error = htmlEl("div", { "data-error": "", role: "alert" });
  error.style.cssText = "color: #a00; font-weight: bold; margin: 4px 0;";
  root.appendChild(error);

  const readoutBox = htmlEl("div");
  readoutBox.style.cssText = "display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 4px 0;";
  const readouts = {};
  for (const [name, text] of [["log_px", "log p(x)"], ["elbo", "ELBO"], ["kl", "gap = KL(q ‖ p(z|x))"]]) {
    const item = htmlEl("span", {}, `${text} = `);
    const value = htmlEl("b", { "data-readout": name, "data-number": "" });
    item.appendChild(value);
    readoutBox.appendChild(item);
    readouts[name] = value;
  }
  root.appendChild(readoutBox);

  const figure = htmlEl("div");
  figure.style.cssText = "display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start;";
  const densSvg = svgEl("svg", { width: DW, height: H, viewBox: `0 0 ${DW} ${H}`, role: "img", "aria-label": "densities over z" });
  const barSvg = svgEl("svg", { width: BW, height: H, viewBox: `0 0 ${BW} ${H}`, role: "img", "aria-label": "log p(x), ELBO and gap" });
  for (const s of [densSvg, barSvg]) s.style.font = "10px sans-serif";
  figure.appendChild(densSvg);
  figure.appendChild(barSvg);
  root.appendChild(figure);
  el.appendChild(root);

  const zs = [];
  for (let i = 0; i <= 400; i++) zs.push(Z_RANGE[0] + ((Z_RANGE[1] - Z_RANGE[0]) * i) / 400);

  function clear(svg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
  }

  function drawDensities(terms, m, v) {
    clear(densSvg);
    const x = (z) => M.l + ((DW - M.l - M.r) * (z - Z_RANGE[0])) / (Z_RANGE[1] - Z_RANGE[0]);
    const y = (p) => M.t + ((H - M.t - M.b) * (DENSITY_MAX - Math.min(p, DENSITY_MAX))) / DENSITY_MAX;
    densSvg.appendChild(svgEl("rect", { x: M.l, y: M.t, width: DW - M.l - M.r, height: H - M.t - M.b, fill: "none", stroke: "#999" }));
    for (const z of [-4, -2, 0, 2, 4]) densSvg.appendChild(svgEl("text", { x: x(z), y: H - M.b + 12, "text-anchor": "middle" }, String(z)));
    for (const p of [0, 0.5, 1]) densSvg.appendChild(svgEl("text", { x: M.l - 5, y: y(p) + 3, "text-anchor": "end" }, String(p)));
    densSvg.appendChild(svgEl("text", { x: (M.l + DW - M.r) / 2, y: H - 4, "text-anchor": "middle" }, "z"));
    const curves = [
      [normalPdf(zs, 0, 1), "#999", "prior p(z)"],
      [normalPdf(zs, terms.postMean, terms.postVar), "#000", "posterior p(z | x)"],
      [normalPdf(zs, m, v), "#d62728", `q = N(${m.toFixed(2)}, ${v.toFixed(2)})`],
    ];
    curves.forEach(([ps, color, label], i) => {
      const pts = zs.map((z, j) => `${x(z).toFixed(2)},${y(ps[j]).toFixed(2)}`).join(" ");
      densSvg.appendChild(svgEl("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 1.8 }));
      const ly = M.t + 14 + 14 * i;
      densSvg.appendChild(svgEl("line", { x1: M.l + 8, x2: M.l + 26, y1: ly - 4, y2: ly - 4, stroke: color, "stroke-width": 2 }));
      densSvg.appendChild(svgEl("text", { x: M.l + 30, y: ly }, label));
    });
  }

  function drawBar(terms) {
    clear(barSvg);
    const lo = Math.min(terms.elbo, terms.logPx) - 1;
    const hi = terms.logPx + 1;
    const y = (v) => M.t + ((H - M.t - M.b) * (hi - v)) / (hi - lo);
    barSvg.appendChild(svgEl("rect", { x: M.l, y: M.t, width: BW - M.l - M.r, height: H - M.t - M.b, fill: "none", stroke: "#999" }));
    for (const v of [lo, terms.logPx]) {
      barSvg.appendChild(svgEl("text", { x: M.l - 5, y: y(v) + 3, "text-anchor": "end" }, v.toFixed(1)));
    }
    barSvg.appendChild(svgEl("text", { x: 10, y: (M.t + H - M.b) / 2, transform: `rotate(-90 10 ${(M.t + H - M.b) / 2})`, "text-anchor": "middle" }, "nats"));
    const x0 = M.l + 20;
    const x1 = BW - M.r - 10;
    barSvg.appendChild(svgEl("rect", { x: x0 + 10, y: y(terms.logPx), width: 36, height: Math.max(0, y(terms.elbo) - y(terms.logPx)), fill: "#d62728", opacity: 0.6 }));
    barSvg.appendChild(svgEl("line", { x1: x0, x2: x1, y1: y(terms.logPx), y2: y(terms.logPx), stroke: "#000", "stroke-width": 1.5 }));
    barSvg.appendChild(svgEl("line", { x1: x0, x2: x1, y1: y(terms.elbo), y2: y(terms.elbo), stroke: "#1f77b4", "stroke-width": 1.5 }));
    barSvg.appendChild(svgEl("text", { x: x1, y: y(terms.logPx) - 4, "text-anchor": "end" }, "log p(x)"));
    barSvg.appendChild(svgEl("text", { x: x1, y: y(terms.elbo) + 12, "text-anchor": "end", fill: "#1f77b4" }, "ELBO"));
    barSvg.appendChild(svgEl("text", { x: x0 + 50, y: (y(terms.logPx) + y(terms.elbo)) / 2 + 3, fill: "#d62728" }, "gap = KL"));
  }

  function value(name) {
    const text = controls[name].value.trim();
    return text === "" ? NaN : Number(text);
  }

  function update() {
    const m = value("mean");
    const logVar = value("log_var");
    shown.mean.textContent = ` ${m.toFixed(2)}`;
    shown.log_var.textContent = ` ${logVar.toFixed(2)} (v = ${Math.exp(logVar).toFixed(3)})`;
    const terms = elboTerms({ w: model.get("weight"), b: model.get("bias"), s2: model.get("noise_var"), x: model.get("x"), m, logVar });
    const bad = terms.error !== undefined;
    error.textContent = bad ? `Invalid parameters: ${terms.error}` : "";
    error.style.display = bad ? "" : "none";
    figure.style.opacity = bad ? "0.25" : "1";
    for (const [name, key] of [["log_px", "logPx"], ["elbo", "elbo"], ["kl", "kl"]]) {
      readouts[name].textContent = bad ? "—" : terms[key].toFixed(4);
      readouts[name].setAttribute("data-number", bad ? "" : String(terms[key]));
    }
    if (bad) return;
    drawDensities(terms, m, Math.exp(logVar));
    drawBar(terms);
  }

  const cleanups = [];
  for (const name of Object.keys(controls)) {
    const onInput = () => {
      const v = value(name);
      if (Number.isFinite(v)) {
        model.set(name, v);
        model.save_changes();
      }
      update();
    };
    for (const ev of ["input", "change"]) controls[name].addEventListener(ev, onInput);
    const sync = () => {
      if (value(name) !== model.get(name)) controls[name].value = String(model.get(name));
      update();
    };
    model.on(`change:${name}`, sync);
    cleanups.push(() => model.off(`change:${name}`, sync));
  }
  for (const name of ["weight", "bias", "noise_var", "x"]) {
    model.on(`change:${name}`, update);
    cleanups.push(() => model.off(`change:${name}`, update));
  }
  update();
  return () => cleanups.forEach((f) => f());
}

export default { render };
