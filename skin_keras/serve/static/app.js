// The page of serve.py: images in, the model's answers out. Talks to this server only
// (/api/model, /api/predict, /api/explain); text from files or the server is set with
// textContent, never parsed as HTML.
"use strict";

const state = { info: null, token: "", items: [], sort: { column: null, up: true } };

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// How typical of the training images an image is, in words: the share of validation images
// whose unknown score is lower (from the rule's percentiles; rules fitted before they were
// recorded have none, and say nothing more).
function typicality(score) {
  const percentiles = (state.info.unknown || {})["validation percentiles"] || [];
  if (percentiles.length < 2) return "";
  const below = percentiles.filter((value) => value < score).length;
  return " (more typical of the training images than " +
    Math.round(100 * below / percentiles.length) + "% of the validation images)";
}

// The server takes image bodies as image/* or application/octet-stream only (admission.py).
function contentType(file) {
  return file.type.startsWith("image/") ? file.type : "application/octet-stream";
}

async function call(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) document.getElementById("token-box").hidden = false;
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (error) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function loadModel() {
  try {
    state.info = await (await call("/api/model")).json();
  } catch (error) {
    document.getElementById("model-facts").textContent = "The model's record could not be read: " + error.message;
    return;
  }
  const info = state.info;
  document.getElementById("model-name").textContent = "· " + info.name + " v" + info.version;
  const facts = [info.source + (info.architecture ? " (" + info.architecture + ")" : ""),
    info.class_names.length + " classes: " + info.class_names.join(", "),
    "input " + info.img_size + " × " + info.img_size + " px", "runs on " + info.backend,
    info.temperature ? "calibrated (temperature " + info.temperature.toFixed(3) + ")" : "not calibrated",
    info.unknown ? "an image is unknown when it is " + info.unknown["in words"] : "no unknown rule"];
  if (info.metadata !== null) facts.push("takes patient metadata (optional, per image)");
  document.getElementById("model-facts").textContent = facts.join(" · ");
}

function metadataFields(item) {
  const vocabulary = state.info.metadata;
  const box = el("div", { class: "metadata" });
  const age = el("input", { type: "number", min: "0", max: "120", step: "5", "data-field": "age_approx" });
  box.append(el("label", { text: "age" }), age);
  for (const [field, title] of [["sex", "sex"], ["anatom_site_general", "site"]]) {
    const values = vocabulary[field];
    let input;
    if (values) {
      input = el("select", { "data-field": field }, el("option", { value: "", text: "unknown" }));
      for (const value of values) input.append(el("option", { value, text: value }));
    } else {
      input = el("input", { type: "text", "data-field": field });
    }
    box.append(el("label", { text: title }), input);
  }
  const again = el("button", { type: "button", class: "predict-again", text: "predict with these" });
  again.addEventListener("click", () => predict(item));
  box.append(el("span"), again);
  return box;
}

function addFiles(files) {
  if (!state.info) return Promise.resolve();  // Nothing to show the answers with yet.
  for (const file of files) {
    const item = { file, row: null, csv: null, error: null, overlay: null, showing: "image" };
    item.url = URL.createObjectURL(file);
    const picture = el("img", { alt: file.name, src: item.url });
    item.card = el("article", { class: "card", "data-name": file.name },
      el("div", { class: "picture" }, picture), el("div", { class: "name", text: file.name }),
      el("div", { class: "label", text: "predicting…" }), el("div", { class: "bars" }),
      el("div", { class: "flags" }));
    item.picture = picture;
    if (state.info && state.info.metadata !== null) item.card.append(metadataFields(item));
    if (state.info && state.info.explain) {
      const toggle = el("button", { type: "button", class: "gradcam", text: "show Grad-CAM", disabled: "" });
      toggle.addEventListener("click", () => toggleGradCam(item, toggle));
      item.card.append(toggle);
    }
    document.getElementById("cards").append(item.card);
    state.items.push(item);
  }
  document.getElementById("batch").hidden = state.items.length === 0;
  return queue(files.length ? state.items.slice(-files.length) : []);
}

async function queue(items) {
  for (const item of items) await predict(item);  // One at a time: the server queues anyway.
}

function query(item) {
  const parameters = new URLSearchParams({ name: item.file.name });
  for (const input of item.card.querySelectorAll("[data-field]")) {
    if (input.value !== "") parameters.set(input.dataset.field, input.value);
  }
  return parameters.toString();
}

async function predict(item) {
  item.card.classList.remove("failed");
  item.card.dataset.state = "busy";
  try {
    const response = await call("/api/predict?" + query(item), {
      method: "POST", body: item.file, headers: { "Content-Type": contentType(item.file) } });
    const answer = await response.json();
    item.row = answer.row;
    item.csv = answer.csv;
    item.error = null;
    item.overlay = null;
  } catch (error) {
    item.row = null;
    item.error = error.message;
    // predictions.csv's error row, its columns from the header the server sent.
    item.csv = state.info.csv_header.map((column) => column === "path" ? safeCell(item.file.name)
      : column === "error" ? safeCell(error.message) : "");
  }
  showCard(item);
  showTable();
}

function showCard(item) {
  const card = item.card;
  const bars = card.querySelector(".bars");
  const flags = card.querySelector(".flags");
  bars.replaceChildren();
  flags.replaceChildren();
  card.querySelector(".error")?.remove();
  card.dataset.state = "done";
  const toggle = card.querySelector(".gradcam");
  if (item.error) {
    card.classList.add("failed");
    card.dataset.error = item.error;
    card.dataset.label = "";
    card.querySelector(".label").textContent = "not predicted";
    card.insertBefore(el("div", { class: "error", text: item.error }), flags);
    if (toggle) toggle.disabled = true;
    return;
  }
  const row = item.row;
  delete card.dataset.error;
  card.dataset.label = row.label;
  card.dataset.score = String(row.score);
  card.querySelector(".label").textContent = row.label + " · " + (100 * row.score).toFixed(1) + "%";
  const ranked = Object.entries(row.probabilities).sort((a, b) => b[1] - a[1]).slice(0, 3);
  for (const [name, probability] of ranked) {
    const fill = el("div", { class: "fill" });
    fill.style.width = (100 * probability).toFixed(1) + "%";
    bars.append(el("div", { class: "bar", "data-class": name, "data-probability": String(probability) },
      el("span", { class: "text", text: name + " " + (100 * probability).toFixed(1) + "%" }),
      el("div", { class: "track" }, fill)));
  }
  if ("unknown" in row) {
    card.dataset.unknown = String(row.unknown);
    flags.append(el("span", { class: row.unknown ? "unknown" : "known",
      text: (row.unknown ? "unknown: none of the classes" : "within the classes") +
        typicality(row.unknown_score) }));
  }
  if ("metadata" in row) flags.append(el("span", { class: "known", text: " metadata " + row.metadata }));
  if (toggle) {
    toggle.disabled = false;
    toggle.textContent = "show Grad-CAM";
    item.picture.src = item.url;
    item.showing = "image";
  }
}

async function toggleGradCam(item, toggle) {
  if (item.showing === "gradcam") {
    item.picture.src = item.url;
    item.showing = "image";
    toggle.textContent = "show Grad-CAM";
    return;
  }
  toggle.disabled = true;
  try {
    if (!item.overlay) {
      const response = await call("/api/explain?" + query(item), {
        method: "POST", body: item.file, headers: { "Content-Type": contentType(item.file) } });
      item.overlay = URL.createObjectURL(await response.blob());
    }
    item.picture.src = item.overlay;
    item.showing = "gradcam";
    toggle.textContent = "show image";
    item.card.dataset.gradcam = "shown";
  } catch (error) {
    item.card.querySelector(".flags").append(el("div", { class: "error", text: "Grad-CAM: " + error.message }));
  }
  toggle.disabled = false;
}

function tableColumns() {
  const info = state.info;
  const columns = [["name", (item) => item.file.name], ["label", (item) => item.row ? item.row.label : ""],
    ["score", (item) => item.row ? item.row.score : null]];
  if (info.unknown) columns.push(["unknown", (item) => item.row ? String(item.row.unknown) : ""]);
  for (const name of info.class_names) columns.push([name, (item) => item.row ? item.row.probabilities[name] : null]);
  columns.push(["error", (item) => item.error || ""]);
  return columns;
}

function showTable() {
  const columns = tableColumns();
  const table = document.getElementById("table");
  const head = el("tr");
  columns.forEach(([title], index) => {
    const cell = el("th", { text: title, "data-column": String(index) });
    if (state.sort.column === index) cell.className = state.sort.up ? "sorted-up" : "sorted-down";
    cell.addEventListener("click", () => {
      state.sort = { column: index, up: state.sort.column === index ? !state.sort.up : true };
      showTable();
    });
    head.append(cell);
  });
  table.tHead.replaceChildren(head);
  const items = state.items.filter((item) => item.csv);
  if (state.sort.column !== null) {
    const value = columns[state.sort.column][1];
    items.sort((a, b) => {
      const x = value(a), y = value(b);
      const order = (x === null) - (y === null) || (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y)));
      return state.sort.up ? order : -order;
    });
  }
  table.tBodies[0].replaceChildren(...items.map((item) => el("tr", {},
    ...columns.map(([, value]) => {
      const cell = value(item);
      return el("td", { text: typeof cell === "number" ? cell.toFixed(4) : cell });
    }))));
}

// As csv_table.safe_cell (the rows the server sends are made by it): a cell a spreadsheet
// would run as a formula starts with a quote.
function safeCell(text) {
  return /^[=+\-@\t\r]/.test(text) ? "'" + text : text;
}

function csvCell(text) {
  return /[",\r\n]/.test(text) ? '"' + text.replaceAll('"', '""') + '"' : text;
}

function download() {
  const lines = [state.info.csv_header, ...state.items.filter((item) => item.csv).map((item) => item.csv)];
  const blob = new Blob([lines.map((cells) => cells.map(csvCell).join(",")).join("\r\n") + "\r\n"], { type: "text/csv" });
  const link = el("a", { href: URL.createObjectURL(blob), download: "predictions.csv" });
  document.body.append(link);
  link.click();
  link.remove();
}

function setUp() {
  const hash = new URLSearchParams(location.hash.slice(1));
  state.token = hash.get("token") || sessionStorage.getItem("skin_keras_token") || "";
  if (hash.get("token")) sessionStorage.setItem("skin_keras_token", state.token);
  document.getElementById("token-save").addEventListener("click", () => {
    state.token = document.getElementById("token").value;
    sessionStorage.setItem("skin_keras_token", state.token);
    document.getElementById("token-box").hidden = true;
    loadModel();
  });
  const drop = document.getElementById("drop");
  const input = document.getElementById("files");
  input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles([...event.dataTransfer.files]);
  });
  document.getElementById("download").addEventListener("click", download);
  document.getElementById("clear").addEventListener("click", () => {
    for (const item of state.items) URL.revokeObjectURL(item.url);
    state.items = [];
    document.getElementById("cards").replaceChildren();
    document.getElementById("batch").hidden = true;
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
