// sacam serve: the page. Plain JavaScript modules, no libraries; talks only to this server.
"use strict";

import { clearCharts, drawCurves } from "./charts.js";
import { $, api, el, say, seconds, state } from "./common.js";
import { setupDetection } from "./detect.js";
import { setupSegmentation } from "./segment.js";
import { applyColours, downloadJson, drawColorbar, mapCard, originalCard, pendingCard } from "./maps.js";

const FAMILY_ORDER = ["attention", "gradient", "activation", "decomposition", "transformer", "baseline", "perturbation"];
const SHORT_LAYERS = 8;
let layers = null;

// ------------------------------------------------------------------ start-up
async function init() {
  try {
    const [health, methods, layerList, samples, classes] = await Promise.all([
      api("/api/health"), api("/api/methods"), api("/api/layers"), api("/api/samples"), api("/api/classes"),
    ]);
    $("#model-info").textContent = `model ${health.model} on ${health.device} · sacam ${health.version}`;
    if (health.task === "detection") setupDetection({ runJob, render, chosenMethods, busy });
    if (health.task === "segmentation") setupSegmentation({ runJob, render, chosenMethods, busy });
    showMethods(methods);
    layers = layerList;
    showLayers(false);
    for (const name of samples.samples) {
      const button = el("button", { type: "button", title: `sample photo: ${name}`, "data-sample": name },
        el("img", { src: `/api/samples/${encodeURIComponent(name)}`, alt: `sample photo ${name}` }));
      button.addEventListener("click", () => chooseSample(name, button));
      $("#samples").append(button);
    }
    const list = $("#class-names");
    classes.classes.forEach((name, i) => list.append(el("option", { value: name, label: String(i) })));
  } catch (err) {
    say(err.message, true);
  }
}

function cost(m) {
  if (m.expected_s !== null && m.expected_s !== undefined) {
    return m.expected_s < 1 ? "< 1 s" : `~${seconds(m.expected_s)}`;
  }
  return m.passes > 1 ? `${m.passes.toLocaleString()} passes` : "1 pass";
}

function showMethods(methods) {
  state.methods = methods.methods;
  const box = $("#methods");
  box.replaceChildren();
  const families = [...new Set(methods.methods.map((m) => m.family))];
  families.sort((a, b) => (FAMILY_ORDER.indexOf(a) + 99) % 99 - (FAMILY_ORDER.indexOf(b) + 99) % 99);
  for (const family of families) {
    const set = el("fieldset", { "data-family": family }, el("legend", { text: family }));
    for (const m of methods.methods.filter((x) => x.family === family && x.available)) {
      const input = el("input", { type: "checkbox", value: m.name, checked: m.name === methods.default });
      input.addEventListener("change", updateButton);
      set.append(el("label", { title: `${m.paper}: ${m.description}`, "data-search": `${m.name} ${m.family} ${m.paper}`.toLowerCase() },
        input, el("span", { text: m.name }), el("span", { class: "cost", text: cost(m) })));
    }
    if (set.querySelector("label")) box.append(set);
  }
  const hidden = methods.methods.filter((m) => !m.available);
  $("#methods-note").textContent = hidden.map((m) => `${m.name} is hidden: ${m.note}.`).join(" ");
}

function filterMethods() {
  const words = $("#method-filter").value.trim().toLowerCase();
  for (const label of document.querySelectorAll("#methods label")) {
    label.hidden = words !== "" && !label.dataset.search.includes(words);
  }
  for (const set of document.querySelectorAll("#methods fieldset")) {
    set.hidden = !set.querySelector("label:not([hidden])");
  }
}

function showLayers(all) {
  const select = $("#layer");
  const keep = select.value;
  select.replaceChildren(el("option", { value: "", text: `automatic (${layers.default})` }));
  const shown = all ? layers.layers : layers.layers.slice(-SHORT_LAYERS);
  for (const l of shown) {
    select.append(el("option", { value: l.name, text: `${l.name}  ${l.channels}×${l.grid.join("×")}` }));
  }
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

// ------------------------------------------------------------------ image choice
function setImage(blob, name) {
  state.image = blob;
  state.imageName = name;
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
  if (!response.ok) { say(`cannot load the sample photo ${name}`, true); return; }
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

function describe(info) {
  if (info.status === "queued") {
    const ahead = info.queue_position;
    return ahead > 0 ? `waiting for the model: ${ahead} request${ahead === 1 ? "" : "s"} ahead` : "starting…";
  }
  // "grad-cam · 12 of 40 passes · 3.1 s elapsed · about 7 s left"
  const parts = info.stage ? [info.stage] : [];
  if (info.passes_planned > 0) {
    const unit = info.passes_planned === 1 ? "pass" : "passes";
    parts.push(`${info.passes_done.toLocaleString()} of ${info.passes_planned.toLocaleString()} ${unit}`);
  } else {
    parts.push(`${Math.round(100 * info.progress)}%`);
  }
  parts.push(`${elapsed(info.elapsed_s)} elapsed`);
  if (info.eta_s !== null && info.eta_s !== undefined) {
    parts.push(info.eta_s < 1 ? "under a second left" : `about ${seconds(info.eta_s)} left`);
  }
  return parts.join(" · ");
}

function elapsed(s) {
  return s < 10 ? `${s.toFixed(1)} s` : seconds(s);
}

function failure(error) {
  if (!error) return "the job failed";
  if (error.status >= 500) return `Something went wrong on the server (${error.message}); try another method or layer.`;
  return error.message;
}

function runJob(path, options, onDone, onPartial = null) {
  return api(path, options).then((job) => {
    state.job = job.job_id;
    state.jobKind = job.kind;
    $("#job").dataset.jobId = job.job_id;
    showJob(true);
    $("#progress").value = 0;
    $("#stage").textContent = describe(job);
    let shown = -1;
    const finish = () => { clearTimeout(state.pollTimer); state.job = null; delete $("#job").dataset.jobId; showJob(false); };
    const poll = async () => {
      let info;
      try {
        info = await api(`/api/jobs/${job.job_id}`);
      } catch (err) {
        finish(); say(err.message, true); return;
      }
      $("#progress").value = info.progress;
      $("#stage").textContent = describe(info);
      if (info.partial && onPartial && info.partial.maps.length !== shown) { shown = info.partial.maps.length; onPartial(info.partial); }
      if (info.status === "done") { finish(); onDone(info.result); }
      else if (info.status === "error") { finish(); say(failure(info.error), true); }
      else if (info.status === "cancelled") { finish(); say("cancelled"); }
      else state.pollTimer = setTimeout(poll, 250);
    };
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
  if (state.upload) { state.upload(); return; }  // a detector's or segmenter's page (detect.js, segment.js)
  if (!state.image || busy()) return;
  const form = new FormData();
  form.append("image", state.image, state.imageName || "image");
  const methods = chosenMethods();
  for (const m of methods) form.append("methods", m);
  const layer = $("#layer").value;
  if (layer) form.append("layer", layer);
  say("explaining…");
  try {
    await runJob("/api/jobs/explain", { method: "POST", body: form }, (result) => {
      render(result, methods, true);
      say(`explained ${result.explained_class.name} with ${result.maps.length} method(s).`);
    }, (partial) => render(partial, methods, true));
  } catch (err) {
    say(err.message, true);
  }
}

async function reexplain(target) {
  if (!state.result || busy()) return;
  const methods = state.result.maps.map((m) => m.method);
  const previous = state.result.explained_class;
  say(`explaining “${target}” with the same image and methods…`);
  try {
    await runJob("/api/jobs/reexplain", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ result_id: state.result.result_id, target: String(target), methods, layer: state.result.layer }),
    }, (result) => {
      render(result, methods, false);
      if (state.curves) {
        const note = $("#curves-note");
        note.textContent = `The curves below are those of “${previous.name}”: press Compute curves for “${result.explained_class.name}”.`;
        note.hidden = false;
      }
      say(`explained ${result.explained_class.name}.`);
    }, (partial) => render(partial, methods, false));
  } catch (err) {
    say(err.message, true, err.expired);
  }
}

// ------------------------------------------------------------------ results
function render(result, methods, fresh) {
  // a job's partial answers and its final one share a result id: only new maps are added
  const same = state.result !== null && state.result.result_id === result.result_id;
  state.result = result;
  $("#intro").hidden = true;
  $("#output").hidden = false;
  if (!same) {
    state.attention = {};
    showPredictions(result);
    $("#maps").replaceChildren(originalCard(result), ...methods.map((name) => pendingCard(name)));
  }
  for (const m of result.maps) {
    const pending = document.querySelector(`#maps .card[data-pending="${CSS.escape(m.method)}"]`);
    if (pending) pending.replaceWith(mapCard(result, m));
  }
  if (fresh && !same) {
    state.curves = null;
    clearCharts([$("#deletion-canvas"), $("#insertion-canvas")]);
    $("#charts").hidden = true;
    $("#legend").replaceChildren();
    $("#auc-table").hidden = true;
    $("#curves-note").hidden = true;
  }
  applyColours();
}

function showPredictions(result) {
  const list = $("#predictions");
  list.replaceChildren();
  for (const p of result.predictions) {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.max(2, 100 * p.probability)}%`;
    const active = p.class_index === result.explained_class.class_index;
    const button = el("button", { type: "button", class: active ? "active" : "", "data-class": String(p.class_index), "aria-pressed": String(active) },
      el("span", { text: `${p.name} (${p.class_index})` }), el("span", { class: "track" }, bar), el("span", { text: p.probability.toFixed(3) }));
    button.addEventListener("click", () => reexplain(p.class_index));
    list.append(el("li", {}, button));
  }
  const ec = result.explained_class;
  $("#explained").textContent = `Maps explain “${ec.name}” (${ec.class_index}, p = ${ec.probability.toFixed(3)}) at layer ${result.layer}.`;
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
    }, (res) => {
      state.curves = res;
      $("#curves-note").hidden = true;
      $("#charts").hidden = false;
      drawCurves(res, { deletion: $("#deletion-canvas"), insertion: $("#insertion-canvas") }, $("#legend"));
      const body = $("#auc-table tbody");
      body.replaceChildren();
      for (const m of res.methods) {
        body.append(el("tr", {}, el("td", { text: m.method }), el("td", { text: m.deletion.auc.toFixed(4) }), el("td", { text: m.insertion.auc.toFixed(4) })));
      }
      $("#auc-table").hidden = false;
      say("curves done.");
    });
  } catch (err) {
    say(err.message, true, err.expired);
  }
}

// ------------------------------------------------------------------ wiring
function wire() {
  const drop = $("#dropzone");
  $("#file-input").addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    if (file) setImage(file, file.name);
  });
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (ev) => {
    const file = ev.dataTransfer.files[0];
    if (file) setImage(file, file.name);
  });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("#file-input").click(); } });
  $("#explain").addEventListener("click", explain);
  $("#retry-button").addEventListener("click", () => { $("#retry").hidden = true; explain(); });
  $("#cancel").addEventListener("click", cancelJob);
  $("#opacity").addEventListener("input", applyColours);
  $("#cmap").addEventListener("change", applyColours);
  $("#download-json").addEventListener("click", downloadJson);
  $("#curves").addEventListener("click", curves);
  $("#method-filter").addEventListener("input", filterMethods);
  $("#all-layers").addEventListener("change", (ev) => showLayers(ev.target.checked));
  $("#class-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("#class-input").value.trim();
    if (text) reexplain(text);
  });
  // leaving or reloading the page cancels its job: nobody would see the answer
  window.addEventListener("pagehide", () => {
    if (state.job) fetch(`/api/jobs/${state.job}`, { method: "DELETE", keepalive: true });
  });
  drawColorbar();
}

wire();
init();
