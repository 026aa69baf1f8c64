// d3po label: the page. All state lives on the server; this script shows the task it is
// given, sends one decision per key press or click, and shows what the server answers.
"use strict";

const $ = (id) => document.getElementById(id);
const NAME_KEY = "d3po-annotator";
const SMALL = 128; // images narrower than this are scaled up without smoothing
let config = null;
let view = null; // {annotator, task, progress, can_undo}
let scores = {}; // image id -> value (score protocol)
let focus = 0; // focused image (score protocol)
let busy = false;

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function send(path, body, message) {
  if (busy) return;
  busy = true;
  try {
    show(await api(path, body));
    status(message);
  } catch (error) {
    status(error.message, true);
    if (error.status === 409) show(await api(nextUrl()));
  } finally {
    busy = false;
  }
}

function nextUrl() {
  return `/api/next?annotator=${encodeURIComponent(view ? view.annotator : localStorage.getItem(NAME_KEY))}`;
}

function decide(answer) {
  const body = {annotator: view.annotator, task: view.task.key, ...answer};
  send("/api/decide", body, "saved");
}

function figure(image, index) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.alt = `image ${index + 1}`;
  img.addEventListener("load", () => {
    if (img.naturalWidth < SMALL) {
      const factor = Math.max(1, Math.floor(256 / img.naturalWidth));
      img.width = img.naturalWidth * factor;
      img.classList.add("small");
    }
  });
  img.src = image.url;
  const caption = document.createElement("figcaption");
  caption.append(config.protocol === "pairwise" ? "AB"[index] : String(index + 1));
  fig.append(img, caption);
  if (config.protocol === "score") {
    const rate = document.createElement("div");
    rate.className = "rate";
    for (const value of config.scale) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = config.scale_name === "good-bad" ? (value ? "good" : "bad") : String(value);
      button.dataset.value = value;
      button.addEventListener("click", (event) => { event.stopPropagation(); rate_(index, value); });
      rate.append(button);
    }
    caption.append(rate);
    fig.addEventListener("click", () => { focus = index; paint(); });
  } else if (config.protocol === "best") {
    fig.addEventListener("click", () => decide({best: image.id}));
  } else {
    fig.addEventListener("click", () => decide({winner: "ab"[index]}));
  }
  return fig;
}

function rate_(index, value) {
  scores[view.task.images[index].id] = value;
  focus = Math.min(index + 1, view.task.images.length - 1);
  paint();
}

function paint() {
  const figures = $("images").children;
  view.task.images.forEach((image, i) => {
    const fig = figures[i];
    fig.classList.toggle("focused", config.protocol === "score" && i === focus);
    fig.classList.toggle("chosen", scores[image.id] !== undefined);
    for (const button of fig.querySelectorAll(".rate button")) {
      button.classList.toggle("on", Number(button.dataset.value) === scores[image.id]);
    }
  });
}

function show(next) {
  view = next;
  localStorage.setItem(NAME_KEY, view.annotator);
  $("who").textContent = `judging as ${view.annotator}`;
  const p = view.progress;
  $("mine").max = Math.max(p.mine_total, 1); $("mine").value = p.mine_done;
  $("mine-text").textContent = `${p.mine_done} / ${p.mine_total}`;
  $("set").max = Math.max(p.set_total, 1); $("set").value = p.set_done;
  $("set-text").textContent = `${p.set_done} / ${p.set_total}`;
  if (!$("login").hidden && document.activeElement) document.activeElement.blur(); // keys judge now
  $("login").hidden = true;
  $("judge").hidden = view.task === null;
  $("finished").hidden = view.task !== null;
  $("undo").disabled = !view.can_undo;
  if (view.task === null) return;
  $("prompt").textContent = view.task.prompt;
  scores = {};
  focus = 0;
  $("images").replaceChildren(...view.task.images.map(figure));
  if (config.protocol === "score") paint();
}

function explain() {
  const k = config.protocol;
  $("tie").hidden = k !== "pairwise";
  $("submit").hidden = k !== "score";
  const values = config.scale.join("/");
  $("question").textContent = {
    best: "Which image is best? Click it or press its number.",
    pairwise: "Which image is better, A or B?",
    score: `Rate every image (${config.scale_name}), then save.`,
  }[k];
  $("keys").textContent = {
    best: "Keys: 1-9 pick the best image, s skip, u undo.",
    pairwise: "Keys: 1 = A, 2 = B, space = tie, s skip, u undo.",
    score: `Keys: ${values} rate the framed image, ←/→ move, space save, s skip, u undo.`,
  }[k];
}

function onKey(event) {
  if (!view || event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key === "u") { event.preventDefault(); send("/api/undo", {annotator: view.annotator}, "undone"); return; }
  if (!view.task) return;
  const images = view.task.images;
  const number = /^[0-9]$/.test(key) ? Number(key) : null;
  if (key === "s") {
    send("/api/skip", {annotator: view.annotator, task: view.task.key}, "skipped");
  } else if (config.protocol === "best" && number >= 1 && number <= images.length) {
    decide({best: images[number - 1].id});
  } else if (config.protocol === "pairwise" && (number === 1 || number === 2)) {
    decide({winner: "ab"[number - 1]});
  } else if (config.protocol === "pairwise" && key === " ") {
    decide({winner: "tie"});
  } else if (config.protocol === "score" && number !== null && config.scale.includes(number)) {
    rate_(focus, number);
  } else if (config.protocol === "score" && (key === "ArrowRight" || key === "ArrowLeft")) {
    focus = (focus + (key === "ArrowRight" ? 1 : images.length - 1)) % images.length;
    paint();
  } else if (config.protocol === "score" && key === " ") {
    saveScores();
  } else {
    return;
  }
  event.preventDefault();
}

function saveScores() {
  const missing = view.task.images.filter((image) => scores[image.id] === undefined).length;
  if (missing) { status(`rate ${missing} more image(s) first`, true); return; }
  decide({scores});
}

function login() {
  $("login").hidden = false;
  $("name").focus();
}

async function start(name) {
  try {
    show(await api(`/api/next?annotator=${encodeURIComponent(name)}`));
    status("");
  } catch (error) {
    login();
    status(error.message, true);
  }
}

async function main() {
  config = await api("/api/config");
  explain();
  document.addEventListener("keydown", onKey);
  $("tie").addEventListener("click", () => decide({winner: "tie"}));
  $("submit").addEventListener("click", saveScores);
  $("skip").addEventListener("click", () => send("/api/skip", {annotator: view.annotator, task: view.task.key}, "skipped"));
  for (const id of ["undo", "undo-last"]) {
    $(id).addEventListener("click", () => send("/api/undo", {annotator: view.annotator}, "undone"));
  }
  $("who").addEventListener("click", () => { localStorage.removeItem(NAME_KEY); location.reload(); });
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    start($("name").value.trim());
  });
  const saved = localStorage.getItem(NAME_KEY);
  if (saved) start(saved); else login();
}

main();
