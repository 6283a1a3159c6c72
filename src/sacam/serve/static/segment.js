// sacam serve: the page for a semantic segmenter (sacam serve --task segmentation).
// The image is sent to /api/segment; its predicted classes are drawn in colour over it,
// with a legend of the classes; clicking a class in the legend (by mouse or keyboard), or a
// pixel of the picture, explains that class's region with the chosen methods, and the maps
// appear as they do for a classifier.
"use strict";

import { $, api, el, loadImage, postJob, pressOnly, say, state } from "./common.js";

let page = null;       // the functions of app.js this module calls: runJob, render, chosenMethods, busy
let found = null;      // the answer of /api/segment
let positions = null;  // its map of list positions, as ImageData (the class under a click)

export function setupSegmentation(functions) {
  page = functions;
  state.upload = segment;
  $("#explain").textContent = "Segment image";
  $("#curves-section").hidden = true;     // deletion/insertion curves score a class probability
  document.querySelector(".classes").hidden = true;
  const panel = el("div", { id: "segments-panel", class: "segments" },
    el("h2", { text: "Predicted classes" }),
    el("p", { class: "muted small", text: "Click a class in the legend, or a pixel of the picture, to explain that class's region with the chosen methods." }),
    el("div", { id: "segment-view", class: "segment-view" }),
    el("ul", { id: "segment-legend", class: "segment-legend", "aria-label": "predicted classes" }),
    el("p", { id: "segment-note", class: "muted small" }),
    el("p", { id: "segment-explained", class: "small" }));
  $("#output .row").prepend(panel);
  $("#intro p").textContent = "Choose a photo and press Segment image: the segmenter's classes appear in colour over it. "
    + "Click a class to see where the model looked to label those pixels.";
  document.querySelector("#intro li:last-child").textContent =
    "Click a class in the legend, or a pixel of the picture, to explain that class: the maps of the chosen methods appear side by side.";
}

function percent(share) {
  return `${(100 * share).toFixed(share < 0.001 ? 2 : 1)}%`;
}

async function segment() {
  if (!state.image || page.busy()) return;
  const form = new FormData();
  form.append("image", state.image, state.imageName || "image");
  say("segmenting…");
  let answer;
  try {
    answer = await api("/api/segment", { method: "POST", body: form });
  } catch (err) {
    say(err.message, true);
    return;
  }
  found = answer;
  positions = null;
  state.result = null;
  showClasses();
  loadImage(answer.positions).then((img) => {
    const c = el("canvas", { width: img.width, height: img.height });
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    if (found === answer) positions = ctx.getImageData(0, 0, img.width, img.height);
  });
  const n = answer.classes.length + answer.unlisted;
  say(`${n} class${n === 1 ? "" : "es"} predicted: click one in the legend, or a pixel of the picture, to explain it.`);
}

function showClasses() {
  $("#intro").hidden = true;
  $("#output").hidden = false;
  $("#maps").replaceChildren();
  $("#segment-explained").textContent = "";
  const picture = el("img", { src: found.overlay, alt: "the predicted classes in colour over the image", draggable: false });
  picture.addEventListener("click", (ev) => pickPixel(ev, picture));
  $("#segment-view").replaceChildren(picture);
  const legend = $("#segment-legend");
  legend.replaceChildren();
  for (const c of found.classes) {
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = c.colour;
    const button = el("button", { type: "button", "data-class": String(c.class_index), "aria-pressed": "false" },
      swatch, el("span", { text: `${c.name} (${c.class_index})` }), el("span", { class: "share", text: percent(c.share) }));
    button.addEventListener("click", () => explainClass(c));
    legend.append(el("li", {}, button));
  }
  $("#segment-note").textContent = found.unlisted
    ? `${found.unlisted} smaller class${found.unlisted === 1 ? "" : "es"} (${percent(found.unlisted_share)} of the pixels) not listed, drawn grey.`
    : "";
}

function pickPixel(ev, picture) {
  if (!positions) return;
  const r = picture.getBoundingClientRect();
  const x = Math.min(positions.width - 1, Math.max(0, Math.floor((ev.clientX - r.left) / r.width * positions.width)));
  const y = Math.min(positions.height - 1, Math.max(0, Math.floor((ev.clientY - r.top) / r.height * positions.height)));
  const k = positions.data[4 * (y * positions.width + x)];
  if (k < found.classes.length) explainClass(found.classes[k]);
  else say("the class of that pixel is one of the smallest, which are not listed: pick a listed class", true);
}

async function explainClass(c) {
  if (!found || page.busy()) return;
  const methods = page.chosenMethods();
  if (methods.length === 0) { say("choose at least one method first", true); return; }
  pressOnly("#segment-legend button", "class", c.class_index);
  const body = { result_id: found.result_id, class_index: c.class_index, methods };
  const layer = $("#layer").value;
  if (layer) body.layer = layer;
  say(`explaining ${c.name} (${percent(c.share)} of the pixels)…`);
  const done = (result) => {
    page.render(result, methods, true);
    $("#segment-explained").textContent =
      `Maps explain “${c.name}” (${c.class_index}), ${percent(c.share)} of the pixels, at layer ${result.layer}.`;
  };
  await postJob(page, "/api/jobs/explain-segment", body, (result) => {
    done(result);
    say(`explained ${c.name} with ${result.maps.length} method(s).`);
  }, done);
}
