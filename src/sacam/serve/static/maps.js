// sacam serve: the map cards, colour maps, colour bar, attention rows and downloads.
"use strict";

import { $, api, el, download, loadImage, say, stem, state } from "./common.js";

// ------------------------------------------------------------------ colour maps
function poly(t, c) {
  // c: seven RGB coefficients, highest power last (a polynomial fit of matplotlib's map)
  return [0, 1, 2].map((k) => c.reduceRight((acc, row) => acc * t + row[k], 0));
}
const VIRIDIS = [[0.2777, 0.0054, 0.3341], [0.1051, 1.4046, 1.3846], [-0.3309, 0.2148, 0.0951],
  [-4.6342, -5.7991, -19.3324], [6.2283, 14.1799, 56.6906], [4.7764, -13.7451, -65.3530], [-5.4355, 4.6459, 26.3124]];
const INFERNO = [[0.0002, 0.0017, -0.0195], [0.1065, 0.5640, 3.9327], [11.6025, -3.9729, -15.9424],
  [-41.7040, 17.4364, 44.3541], [77.1629, -33.4024, -81.8073], [-71.3194, 32.6261, 73.2095], [25.1311, -12.2427, -23.0703]];
const MAPS = {
  jet: (t) => [1.5 - Math.abs(4 * t - 3), 1.5 - Math.abs(4 * t - 2), 1.5 - Math.abs(4 * t - 1)],
  viridis: (t) => poly(t, VIRIDIS),
  inferno: (t) => poly(t, INFERNO),
  gray: (t) => [t, t, t],
};

function lut(name) {
  const f = MAPS[name] || MAPS.jet;
  const table = new Uint8ClampedArray(256 * 3);
  for (let v = 0; v < 256; v++) {
    const rgb = f(v / 255);
    for (let k = 0; k < 3; k++) table[3 * v + k] = Math.round(255 * Math.min(1, Math.max(0, rgb[k])));
  }
  return table;
}

export function drawColorbar() {
  const c = $("#colorbar");
  const ratio = window.devicePixelRatio || 1;
  c.width = 160 * ratio; c.height = 12 * ratio;
  const ctx = c.getContext("2d");
  const table = lut($("#cmap").value);
  for (let x = 0; x < c.width; x++) {
    const v = Math.round(255 * x / (c.width - 1));
    ctx.fillStyle = `rgb(${table[3 * v]},${table[3 * v + 1]},${table[3 * v + 2]})`;
    ctx.fillRect(x, 0, 1, c.height);
  }
}

// the colour-mapped map as a PNG URL (jet: the server's own picture)
function heatUrl(entry, grey) {
  const name = $("#cmap").value;
  if (name === "jet" || !grey) return entry.heatmap;
  const table = lut(name);
  const c = el("canvas", { width: grey.width, height: grey.height });
  const ctx = c.getContext("2d");
  const out = ctx.createImageData(grey.width, grey.height);
  for (let i = 0; i < grey.width * grey.height; i++) {
    const v = grey.data[4 * i];
    out.data[4 * i] = table[3 * v]; out.data[4 * i + 1] = table[3 * v + 1]; out.data[4 * i + 2] = table[3 * v + 2];
    out.data[4 * i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  return c.toDataURL("image/png");
}

export function applyColours() {
  drawColorbar();
  const alpha = $("#opacity").value;
  for (const card of document.querySelectorAll(".card[data-method]")) {
    const img = card.querySelector("img.overlay");
    if (card.sacam) img.src = heatUrl(card.sacam.entry, card.sacam.grey);
    img.style.opacity = alpha;
  }
}

// ------------------------------------------------------------------ cards
export function originalCard(result) {
  const stack = el("div", { class: "stack plain" }, el("img", { src: result.image, alt: "the image as the model sees it" }));
  return el("div", { class: "card", "data-role": "original" },
    el("h3", {}, el("span", { text: "image" }), el("span", { class: "time", text: "as the model sees it" })), stack);
}

export function pendingCard(name) {
  return el("div", { class: "card pending", "data-pending": name, text: `${name}: computing…` });
}

export function mapCard(result, m) {
  const base = el("img", { class: "base", src: result.image, alt: "", draggable: false });
  const heat = el("img", { class: "overlay", src: m.heatmap, alt: `${m.method} map over the image`, draggable: false });
  const stack = el("div", { class: "stack", tabindex: "0", role: "img", "aria-label": `${m.method} map` }, base, heat);
  const value = el("span", { class: "value", text: m.constant ? "constant map" : "" });
  const png = el("button", { type: "button", class: "png", text: "PNG" });
  png.addEventListener("click", () => downloadOverlay(result, m));
  const npy = el("button", { type: "button", class: "npy", text: ".npy" });
  npy.addEventListener("click", () => downloadNpy(result, m));
  const card = el("div", { class: "card", "data-method": m.method },
    el("h3", {}, el("span", { text: m.method }), el("span", { class: "time", text: `${m.time_s.toFixed(2)} s` })),
    stack, el("div", { class: "foot" }, png, npy, value));
  card.sacam = { entry: m, grey: null };
  loadImage(m.map).then((img) => {
    const c = el("canvas", { width: img.width, height: img.height });
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    card.sacam.grey = ctx.getImageData(0, 0, img.width, img.height);
    if ($("#cmap").value !== "jet") heat.src = heatUrl(m, card.sacam.grey);
  });
  stack.addEventListener("mousemove", (ev) => {
    const grey = card.sacam.grey;
    if (!grey) return;
    const r = stack.getBoundingClientRect();
    const x = Math.min(grey.width - 1, Math.floor((ev.clientX - r.left) / r.width * grey.width));
    const y = Math.min(grey.height - 1, Math.floor((ev.clientY - r.top) / r.height * grey.height));
    value.textContent = `map ${(grey.data[4 * (y * grey.width + x)] / 255).toFixed(2)}`;
  });
  stack.addEventListener("mouseleave", () => { value.textContent = m.constant ? "constant map" : ""; });
  if (m.attention) addAttention(card, stack, result, m);
  heat.style.opacity = $("#opacity").value;
  return card;
}

function addAttention(card, stack, result, m) {
  const [gh, gw] = m.attention.grid;
  card.append(el("p", { class: "hint", text: `Click the map (or press Enter, arrows to move): the attention of that position over the ${gh}×${gw} grid of ${m.attention.layer}.` }));
  const attImg = el("img", { class: "attention", alt: "attention row", draggable: false });
  const marker = el("span", { class: "marker" });
  const attInfo = el("span", { class: "value attention-info" });
  const panel = el("div", { class: "attention-panel" }, el("div", { class: "stack plain attention-stack" }, attImg, marker), el("div", { class: "foot" }, attInfo));
  panel.hidden = true;
  card.append(panel);
  let pos = [Math.floor(gh / 2), Math.floor(gw / 2)];
  const show = async (row, col) => {
    pos = [row, col];
    try {
      const a = await api(`/api/results/${result.result_id}/attention?method=${encodeURIComponent(m.method)}&row=${row}&col=${col}`);
      state.attention[m.method] = a;
      attImg.src = a.overlay;
      marker.style.left = `${(col + 0.5) / gw * 100}%`;
      marker.style.top = `${(row + 0.5) / gh * 100}%`;
      attInfo.textContent = `attention of position (${row}, ${col}); max weight ${a.max.toFixed(3)}`;
      panel.hidden = false;
    } catch (err) {
      say(err.message, true, err.expired);
    }
  };
  stack.addEventListener("click", (ev) => {
    const r = stack.getBoundingClientRect();
    const row = Math.min(gh - 1, Math.max(0, Math.floor((ev.clientY - r.top) / r.height * gh)));
    const col = Math.min(gw - 1, Math.max(0, Math.floor((ev.clientX - r.left) / r.width * gw)));
    show(row, col);
  });
  stack.addEventListener("keydown", (ev) => {
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); show(...pos); }
    else if (moves[ev.key]) {
      ev.preventDefault();
      show(Math.min(gh - 1, Math.max(0, pos[0] + moves[ev.key][0])), Math.min(gw - 1, Math.max(0, pos[1] + moves[ev.key][1])));
    }
  });
}

// ------------------------------------------------------------------ downloads
async function downloadOverlay(result, m) {
  // the picture as shown: (1 - a) · image + a · colour map, at the slider's opacity a
  const card = document.querySelector(`.card[data-method="${CSS.escape(m.method)}"]`);
  const heatSrc = card ? card.querySelector("img.overlay").src : m.heatmap;
  const [base, heat] = await Promise.all([loadImage(result.image), loadImage(heatSrc)]);
  const c = el("canvas", { width: base.width, height: base.height });
  const ctx = c.getContext("2d");
  ctx.drawImage(base, 0, 0);
  ctx.globalAlpha = Number($("#opacity").value);
  ctx.drawImage(heat, 0, 0, base.width, base.height);
  c.toBlob((blob) => download(blob, `${stem()}_${m.method}.png`), "image/png");
}

async function downloadNpy(result, m) {
  const response = await fetch(`/api/results/${result.result_id}/maps/${encodeURIComponent(m.method)}.npy`);
  if (!response.ok) {
    say("this result has expired on the server: explain the image again to download its maps", true, true);
    return;
  }
  download(await response.blob(), `${stem()}_${m.method}.npy`);
}

export function downloadJson() {
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
