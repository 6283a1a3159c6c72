// sacam serve: the page for an object detector (sacam serve --task detection).
// The image is sent to /api/detect; its detections are drawn as boxes over it and listed;
// clicking a box (or a list entry, by mouse or keyboard) explains that detection with the
// chosen methods, and the maps appear as they do for a classifier.
"use strict";

import { $, api, el, postJob, pressOnly, say, state } from "./common.js";

let page = null;   // the functions of app.js this module calls: runJob, render, chosenMethods, busy
let found = null;  // the answer of /api/detect

export function setupDetection(functions) {
  page = functions;
  state.upload = detect;
  $("#explain").textContent = "Detect objects";
  $("#curves-section").hidden = true;     // deletion/insertion curves score a class probability
  document.querySelector(".classes").hidden = true;
  const panel = el("div", { id: "detections-panel", class: "detections" },
    el("h2", { text: "Detections" }),
    el("p", { class: "muted small", text: "Click a box, or pick a detection from the list, to explain it with the chosen methods." }),
    el("div", { id: "detection-view", class: "detection-view" }),
    el("ol", { id: "detections", class: "detection-list" }),
    el("p", { id: "detection-explained", class: "small" }));
  $("#output .row").prepend(panel);
  $("#intro p").textContent = "Choose a photo and press Detect objects: the detector's boxes appear over it. "
    + "Click a box to see where the detector looked to find that object.";
}

async function detect() {
  if (!state.image || page.busy()) return;
  const form = new FormData();
  form.append("image", state.image, state.imageName || "image");
  say("detecting…");
  try {
    found = await api("/api/detect", { method: "POST", body: form });
  } catch (err) {
    say(err.message, true);
    return;
  }
  state.result = null;
  showDetections();
  const n = found.detections.length;
  say(n ? `${n} detection${n === 1 ? "" : "s"}: click a box, or pick one from the list, to explain it.`
    : "no detection scored 0.5 or more.");
}

function percent(value, total) {
  return `${(100 * value / total).toFixed(3)}%`;
}

function showDetections() {
  $("#intro").hidden = true;
  $("#output").hidden = false;
  $("#maps").replaceChildren();
  $("#detection-explained").textContent = "";
  const view = $("#detection-view");
  view.replaceChildren(el("img", { src: found.image, alt: "the image as the detector sees it" }));
  const list = $("#detections");
  list.replaceChildren();
  for (const d of found.detections) {
    const text = `${d.name} ${d.score.toFixed(2)}`;
    const where = d.box.map((v) => Math.round(v)).join(", ");
    const box = el("button", { type: "button", class: "box", "data-index": String(d.index),
      "aria-label": `explain detection ${d.index + 1}: ${text} at ${where}`, "aria-pressed": "false" },
    el("span", { text }));
    const [x1, y1, x2, y2] = d.box.map((v, i) => Math.min(Math.max(v, 0), i % 2 ? found.height : found.width));
    Object.assign(box.style, { left: percent(x1, found.width), top: percent(y1, found.height),
      width: percent(x2 - x1, found.width), height: percent(y2 - y1, found.height) });
    box.addEventListener("click", () => explainDetection(d));
    view.append(box);
    const item = el("button", { type: "button", "data-index": String(d.index), "aria-pressed": "false" },
      el("span", { text: `${d.index + 1}. ${text}` }), el("span", { class: "muted small", text: ` [${where}]` }));
    item.addEventListener("click", () => explainDetection(d));
    list.append(el("li", {}, item));
  }
}

async function explainDetection(d) {
  if (!found || page.busy()) return;
  const methods = page.chosenMethods();
  if (methods.length === 0) { say("choose at least one method first", true); return; }
  pressOnly("#detections-panel button[data-index]", "index", d.index);
  const body = { result_id: found.result_id, index: d.index, methods };
  const layer = $("#layer").value;
  if (layer) body.layer = layer;
  say(`explaining detection ${d.index + 1} (${d.name} ${d.score.toFixed(2)})…`);
  const done = (result) => {
    page.render(result, methods, true);
    $("#detection-explained").textContent =
      `Maps explain detection ${d.index + 1}: ${d.name} (${d.label}), score ${d.score.toFixed(3)}, at layer ${result.layer}.`;
  };
  await postJob(page, "/api/jobs/explain-detection", body, (result) => {
    done(result);
    say(`explained detection ${d.index + 1} with ${result.maps.length} method(s).`);
  }, done);
}
