// sacam serve: what the page's modules share: its state, the API call, small DOM helpers.
"use strict";

export const $ = (sel) => document.querySelector(sel);

export const state = {
  image: null,          // Blob to send
  imageName: "",
  result: null,         // last explain answer (or the partial one while its job runs)
  curves: null,         // last curves answer
  attention: {},        // method -> last attention answer
  job: null,            // job id being polled
  jobKind: "",
  pollTimer: null,
  methods: [],
  retry: null,          // what "Explain again" does
};

// the server's words for a status a person can act on
const STATUS_WORDS = {
  413: "The image is too large",
  415: "That file is not an image sacam can read",
  429: "The server is busy",
  500: "Something went wrong on the server",
};

export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("cannot reach the sacam server: is it still running?");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : STATUS_WORDS[response.status] || `the server answered ${response.status}`;
    const error = new Error(detail);
    error.status = response.status;
    error.expired = response.status === 404 && /expired/.test(detail);
    throw error;
  }
  return body;
}

export function say(text, isError = false, offerRetry = false) {
  const box = $("#message");
  box.textContent = text;
  box.classList.toggle("error", isError);
  $("#retry").hidden = !(offerRetry && state.image);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "tabindex") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("could not load an image"));
    img.src = src;
  });
}

export function stem() {
  return (state.imageName || "image").replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "_");
}

export function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return "< 1 s";
  if (s < 90) return `${Math.round(s)} s`;
  return `${Math.round(s / 60)} min`;
}

// Mark the one button of `selector` whose data-`key` is `value` as pressed, the others not.
export function pressOnly(selector, key, value) {
  for (const b of document.querySelectorAll(selector)) {
    const on = b.dataset[key] === String(value);
    b.setAttribute("aria-pressed", String(on));
    b.classList.toggle("active", on);
  }
}

// Post `body` as JSON to the job route `path` through the page's job runner; errors are said.
export async function postJob(page, path, body, onDone, onPartial) {
  try {
    await page.runJob(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    }, onDone, onPartial);
  } catch (err) {
    say(err.message, true, err.expired);
  }
}
