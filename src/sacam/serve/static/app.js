// sacam serve: the page. Plain JavaScript, no libraries; talks only to this server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const COLOURS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7c86", "#57606a"];

const state = {
  image: null,          // Blob to send
  imageName: "",
  target: null,         // class index to explain, null = top-1
  result: null,         // last explain answer
  curves: null,         // last curves answer
  attention: {},        // method -> last attention answer
  job: null,            // job id being polled
  pollTimer: null,
  methods: [],
};

// ------------------------------------------------------------------ helpers
async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
    throw new Error(detail);
  }
  return body;
}

function say(text, isError = false) {
  const el = $("#message");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("could not load an image"));
    img.src = src;
  });
}

// ------------------------------------------------------------------ start-up
async function init() {
  try {
    const [health, methods, layers, samples] = await Promise.all([
      api("/api/health"), api("/api/methods"), api("/api/layers"), api("/api/samples"),
    ]);
    $("#model-info").textContent = `model ${health.model} on ${health.device} · sacam ${health.version}`;
    state.methods = methods.methods;
    const box = $("#methods");
    for (const m of methods.methods) {
      const input = el("input", { type: "checkbox", value: m.name, checked: m.name === methods.default });
      input.addEventListener("change", updateButton);
      box.append(el("label", { title: `${m.paper}: ${m.description}` }, input,
        el("span", { text: m.name }), el("span", { class: "family", text: m.slow ? `${m.family} · slow` : m.family })));
    }
    const select = $("#layer");
    select.append(el("option", { value: "", text: `automatic (${layers.default})` }));
    for (const l of layers.layers) {
      select.append(el("option", { value: l.name, text: `${l.name}  ${l.channels}×${l.grid.join("×")}` }));
    }
    const row = $("#samples");
    for (const name of samples.samples) {
      const button = el("button", { type: "button", title: `sample photo: ${name}`, "data-sample": name },
        el("img", { src: `/api/samples/${encodeURIComponent(name)}`, alt: name }));
      button.addEventListener("click", () => chooseSample(name, button));
      row.append(button);
    }
  } catch (err) {
    say(`cannot reach the server: ${err.message}`, true);
  }
}

// ------------------------------------------------------------------ image choice
function setImage(blob, name) {
  state.image = blob;
  state.imageName = name;
  state.target = null;
  const img = $("#chosen");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.hidden = false;
  $("#drop-text").hidden = true;
  updateButton();
  say(`${name}: choose methods and press Explain.`);
}

async function chooseSample(name, button) {
  const response = await fetch(`/api/samples/${encodeURIComponent(name)}`);
  if (!response.ok) { say(`cannot load sample ${name}`, true); return; }
  document.querySelectorAll(".samples button").forEach((b) => b.classList.remove("active"));
  button.classList.add("active");
  setImage(await response.blob(), `${name}.png`);
}

function chosenMethods() {
  return [...document.querySelectorAll("#methods input:checked")].map((i) => i.value);
}

function updateButton() {
  $("#explain").disabled = !state.image || chosenMethods().length === 0 || state.job !== null;
}

// ------------------------------------------------------------------ jobs
function showJob(show) {
  $("#job").hidden = !show;
  $("#curves").disabled = show;
  updateButton();
}

function runJob(path, options, onDone) {
  return api(path, options).then((job) => {
    state.job = job.job_id;
    showJob(true);
    $("#progress").value = 0;
    $("#stage").textContent = "queued";
    const poll = async () => {
      let info;
      try {
        info = await api(`/api/jobs/${job.job_id}`);
      } catch (err) {
        finish(); say(err.message, true); return;
      }
      $("#progress").value = info.progress;
      $("#stage").textContent = info.status === "running" ? `${info.stage} · ${Math.round(100 * info.progress)}%` : info.status;
      if (info.status === "done") { finish(); onDone(info.result); }
      else if (info.status === "error") { finish(); say(info.error ? info.error.message : "failed", true); }
      else if (info.status === "cancelled") { finish(); say("cancelled"); }
      else state.pollTimer = setTimeout(poll, 250);
    };
    const finish = () => { clearTimeout(state.pollTimer); state.job = null; showJob(false); };
    poll();
  });
}

async function cancelJob() {
  if (!state.job) return;
  try { await api(`/api/jobs/${state.job}`, { method: "DELETE" }); } catch (err) { say(err.message, true); }
}

function busy() {
  if (state.job === null) return false;
  say("a job is running: wait for it or cancel it first", true);
  return true;
}

async function explain() {
  if (!state.image || busy()) return;
  const form = new FormData();
  form.append("image", state.image, state.imageName || "image");
  for (const m of chosenMethods()) form.append("methods", m);
  const layer = $("#layer").value;
  if (layer) form.append("layer", layer);
  if (state.target !== null) form.append("target", String(state.target));
  say("explaining…");
  try {
    await runJob("/api/jobs/explain", { method: "POST", body: form }, (result) => {
      render(result);
      say(`explained ${result.explained_class.name} with ${result.maps.length} method(s).`);
    });
  } catch (err) {
    say(err.message, true);
  }
}

// ------------------------------------------------------------------ results
function render(result) {
  state.result = result;
  state.curves = null;
  state.attention = {};
  $("#results").hidden = false;
  const list = $("#predictions");
  list.replaceChildren();
  for (const p of result.predictions) {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.max(2, 100 * p.probability)}%`;
    const button = el("button", { type: "button", class: p.class_index === result.explained_class.class_index ? "active" : "", "data-class": String(p.class_index) },
      el("span", { text: `${p.name} (${p.class_index})` }), el("span", { class: "track" }, bar), el("span", { text: p.probability.toFixed(3) }));
    button.addEventListener("click", () => { state.target = p.class_index; explain(); });
    list.append(el("li", {}, button));
  }
  const ec = result.explained_class;
  $("#explained").textContent = `Maps explain “${ec.name}” (${ec.class_index}, p = ${ec.probability.toFixed(3)}) at layer ${result.layer}.`;
  const maps = $("#maps");
  maps.replaceChildren();
  for (const m of result.maps) maps.append(card(result, m));
  clearCurves();
  applyOpacity();
}

function card(result, m) {
  const base = el("img", { class: "base", src: result.image, alt: "image", draggable: false });
  const heat = el("img", { class: "overlay", src: m.heatmap, alt: `${m.method} map`, draggable: false });
  const stack = el("div", { class: "stack" }, base, heat);
  const value = el("span", { class: "value", text: m.constant ? "constant map" : "" });
  const png = el("button", { type: "button", class: "png", text: "PNG" });
  png.addEventListener("click", () => downloadOverlay(result, m));
  const body = el("div", { class: "card", "data-method": m.method },
    el("h3", {}, el("span", { text: m.method }), el("span", { class: "time", text: `${m.time_s.toFixed(2)} s` })),
    stack, el("div", { class: "foot" }, png, value));
  // the raw map on hover, with its value under the cursor
  let grey = null;
  loadImage(m.map).then((img) => {
    const c = el("canvas", { width: img.width, height: img.height });
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    grey = ctx.getImageData(0, 0, img.width, img.height);
  });
  stack.addEventListener("mousemove", (ev) => {
    heat.style.opacity = "1";
    if (!grey) return;
    const r = stack.getBoundingClientRect();
    const x = Math.min(grey.width - 1, Math.floor((ev.clientX - r.left) / r.width * grey.width));
    const y = Math.min(grey.height - 1, Math.floor((ev.clientY - r.top) / r.height * grey.height));
    value.textContent = `map ${(grey.data[4 * (y * grey.width + x)] / 255).toFixed(2)}`;
  });
  stack.addEventListener("mouseleave", () => { applyOpacity(); value.textContent = m.constant ? "constant map" : ""; });
  if (m.attention) {
    const [gh, gw] = m.attention.grid;
    body.append(el("p", { class: "hint", text: `Click the map: the attention of that position over the ${gh}×${gw} grid of ${m.attention.layer}.` }));
    const attImg = el("img", { class: "attention", alt: "attention row", draggable: false });
    const marker = el("span", { class: "marker" });
    const attStack = el("div", { class: "stack attention-stack" }, attImg, marker);
    const attInfo = el("span", { class: "value attention-info" });
    const attPanel = el("div", { class: "attention-panel" }, attStack, el("div", { class: "foot" }, attInfo));
    attPanel.hidden = true;
    body.append(attPanel);
    stack.addEventListener("click", async (ev) => {
      const r = stack.getBoundingClientRect();
      const fx = (ev.clientX - r.left) / r.width, fy = (ev.clientY - r.top) / r.height;
      const row = Math.min(gh - 1, Math.max(0, Math.floor(fy * gh)));
      const col = Math.min(gw - 1, Math.max(0, Math.floor(fx * gw)));
      try {
        const a = await api(`/api/results/${result.result_id}/attention?method=${encodeURIComponent(m.method)}&row=${row}&col=${col}`);
        state.attention[m.method] = a;
        attImg.src = a.overlay;
        marker.style.left = `${(col + 0.5) / gw * 100}%`;
        marker.style.top = `${(row + 0.5) / gh * 100}%`;
        attInfo.textContent = `attention of position (${row}, ${col}); max weight ${a.max.toFixed(3)}`;
        attPanel.hidden = false;
      } catch (err) {
        say(err.message, true);
      }
    });
  }
  return body;
}

function applyOpacity() {
  const a = $("#opacity").value;
  document.querySelectorAll(".stack img.overlay").forEach((img) => { img.style.opacity = a; });
}

async function downloadOverlay(result, m) {
  // the picture as shown: (1 - a) · image + a · colour map, at the slider's opacity a
  const [base, heat] = await Promise.all([loadImage(result.image), loadImage(m.heatmap)]);
  const c = el("canvas", { width: base.width, height: base.height });
  const ctx = c.getContext("2d");
  ctx.drawImage(base, 0, 0);
  ctx.globalAlpha = Number($("#opacity").value);
  ctx.drawImage(heat, 0, 0, base.width, base.height);
  c.toBlob((blob) => download(blob, `${stem()}_${m.method}.png`), "image/png");
}

function stem() {
  return (state.imageName || "image").replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "_");
}

function downloadJson() {
  const r = state.result;
  if (!r) return;
  const numbers = {
    image: state.imageName,
    model: r.model,
    layer: r.layer,
    predictions: r.predictions,
    explained_class: r.explained_class,
    maps: r.maps.map((m) => ({ method: m.method, time_s: m.time_s, constant: m.constant })),
    curves: state.curves,
    attention: Object.values(state.attention).map((a) => ({ method: a.method, layer: a.layer, position: a.position, values: a.values })),
  };
  download(new Blob([JSON.stringify(numbers, null, 2)], { type: "application/json" }), `${stem()}_sacam.json`);
}

// ------------------------------------------------------------------ curves
function clearCurves() {
  for (const id of ["#deletion-canvas", "#insertion-canvas"]) {
    const c = $(id);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
  $("#auc-table").hidden = true;
}

async function curves() {
  if (!state.result || busy()) return;
  const steps = Math.max(2, Math.min(512, Number($("#steps").value) || 50));
  say("computing deletion and insertion curves…");
  try {
    await runJob("/api/jobs/curves", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ result_id: state.result.result_id, steps }),
    }, (res) => { state.curves = res; drawCurves(res); say("curves done."); });
  } catch (err) {
    say(err.message, true);
  }
}

function drawCurves(res) {
  for (const kind of ["deletion", "insertion"]) {
    const c = $(`#${kind}-canvas`);
    const ctx = c.getContext("2d");
    const W = c.width, H = c.height, L = 40, R = 10, T = 10, B = 30;
    ctx.clearRect(0, 0, W, H);
    ctx.strokeStyle = "#888"; ctx.fillStyle = "#444"; ctx.lineWidth = 1; ctx.font = "11px sans-serif";
    ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
    for (const v of [0, 0.5, 1]) {
      const y = T + (1 - v) * (H - T - B);
      ctx.fillText(v.toFixed(1), 8, y + 4);
      const x = L + v * (W - L - R);
      ctx.fillText(v.toFixed(1), x - 8, H - B + 14);
    }
    ctx.fillText("fraction of pixels", W / 2 - 40, H - 4);
    res.methods.forEach((m, i) => {
      ctx.strokeStyle = COLOURS[i % COLOURS.length]; ctx.lineWidth = 2;
      ctx.beginPath();
      m[kind].curve.forEach((p, t) => {
        const x = L + res.fractions[t] * (W - L - R), y = T + (1 - p) * (H - T - B);
        if (t === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
      ctx.fillStyle = COLOURS[i % COLOURS.length];
      ctx.fillText(`${m.method} ${m[kind].auc.toFixed(3)}`, W - R - 150, T + 14 * (i + 1));
    });
  }
  const body = $("#auc-table tbody");
  body.replaceChildren();
  for (const m of res.methods) {
    body.append(el("tr", {}, el("td", { text: m.method }), el("td", { text: m.deletion.auc.toFixed(4) }), el("td", { text: m.insertion.auc.toFixed(4) })));
  }
  $("#auc-table").hidden = false;
}

// ------------------------------------------------------------------ wiring
function wire() {
  const drop = $("#dropzone");
  $("#file-input").addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    if (file) setImage(file, file.name);
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (ev) => {
    const file = ev.dataTransfer.files[0];
    if (file) setImage(file, file.name);
  });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("#file-input").click(); });
  $("#explain").addEventListener("click", () => { state.target = null; explain(); });
  $("#cancel").addEventListener("click", cancelJob);
  $("#opacity").addEventListener("input", applyOpacity);
  $("#download-json").addEventListener("click", downloadJson);
  $("#curves").addEventListener("click", curves);
}

wire();
init();
