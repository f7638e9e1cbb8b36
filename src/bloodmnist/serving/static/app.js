// bloodmnist page: send images to /v1/predict or /v1/explain, show classes, bars and Grad-CAM.
// Plain JavaScript, no build step, nothing loaded from other hosts.
"use strict";

const state = { model: null, rows: [] };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "className") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/model");
    const m = await r.json();
    state.model = m;
    const t = m.training || {};
    // a graph exported with --tta answers with its views: quote the run's TTA accuracy
    const testAcc = m.tta_baked ? t.test_acc_tta : t.test_acc;
    const acc = typeof testAcc === "number" ? `, test accuracy ${(testAcc * 100).toFixed(1)}%` : "";
    const temp = (m.temperature || {}).plain;
    const cal = typeof temp === "number" ? `, calibrated probabilities (T ${temp.toFixed(2)})` : "";
    $("model-info").textContent =
      `Model ${m.file} (${m.arch}, ${m.engine}, ${m.input_size} px, sha256 ${m.sha256.slice(0, 12)}${acc}${cal})`;
    $("gradcam").disabled = !m.explain;
    $("gradcam").checked = m.explain;
    $("tta").disabled = !m.tta || Boolean(m.tta_baked);
    $("tta").checked = Boolean(m.tta_baked);
    $("tta-note").textContent = m.tta_baked ? ` (inside the model: ${m.tta_baked})` : "";
  } catch (e) {
    $("model-info").textContent = "Cannot reach the server: " + e;
  }
}

function bars(row) {
  const list = el("ul", { className: "bars", "aria-label": "class probabilities" });
  const entries = Object.entries(row.probs).sort((a, b) => b[1] - a[1]);
  entries.forEach(([name, p], i) => {
    const fill = el("span");
    fill.style.width = (p * 100).toFixed(1) + "%";
    list.append(el("li", i === 0 ? { className: "top" } : {},
      el("span", {}, name.replace(/_/g, " ")),
      el("span", { className: "bar", "aria-hidden": "true" }, fill),
      el("span", { className: "num" }, (p * 100).toFixed(1) + "%")));
  });
  return list;
}

function card(row, file) {
  const item = el("li", { className: row.status === "ok" ? "card" : "card error" });
  item.append(el("h2", {}, row.file));
  const pics = el("div", { className: "pics" });
  pics.append(el("figure", {}, el("img", { src: URL.createObjectURL(file), alt: "uploaded " + row.file }),
    el("figcaption", {}, "upload")));
  if (row.status !== "ok") {
    item.append(pics, el("p", { className: "err" }, "Error: " + row.error));
    return item;
  }
  if (row.explain) {
    pics.append(el("figure", {}, el("img", { src: "data:image/png;base64," + row.explain.input_png,
      alt: "model input" }), el("figcaption", {}, "model input")));
    pics.append(el("figure", {}, el("img", { src: "data:image/png;base64," + row.explain.overlay_png,
      alt: "Grad-CAM overlay for " + row.explain.class }), el("figcaption", {}, "Grad-CAM: " + row.explain.class)));
  }
  item.append(pics);
  const pred = el("p", { className: "pred" }, `${row.pred} `, el("span", { className: "muted" },
    `${(row.prob * 100).toFixed(1)}% · ${row.preprocess}`));
  pred.dataset.pred = row.pred;
  item.append(pred, bars(row));
  return item;
}

async function send(files) {
  if (!files.length) return;
  const m = state.model || { max_files: 16, limits: { max_files: 16 } };
  const chunk = (m.limits && m.limits.max_files) || 16;
  const explain = $("gradcam").checked && !$("gradcam").disabled;
  const params = new URLSearchParams({ top_k: "3", tta: String($("tta").checked) });
  const url = (explain ? "/v1/explain?" : "/v1/predict?") + params;
  $("results").replaceChildren();
  state.rows = [];
  $("csv").disabled = true;
  for (let i = 0; i < files.length; i += chunk) {
    const part = files.slice(i, i + chunk);
    $("status").textContent = `Classifying ${i + 1}–${i + part.length} of ${files.length}…`;
    const form = new FormData();
    part.forEach((f) => form.append("files", f, f.name));
    let body;
    try {
      const r = await fetch(url, { method: "POST", body: form });
      body = await r.json();
      if (!r.ok) throw new Error(`${r.status}: ${body.detail}`);
    } catch (e) {
      $("status").textContent = "Request failed: " + e.message;
      return;
    }
    body.results.forEach((row, j) => {
      state.rows.push(row);
      $("results").append(card(row, part[j]));
    });
  }
  const ok = state.rows.filter((r) => r.status === "ok").length;
  $("status").textContent = `Done: ${ok} of ${state.rows.length} images classified.`;
  $("csv").disabled = state.rows.length === 0;
}

function csvCell(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function downloadCsv() {
  const names = state.model ? state.model.classes : [];
  const head = ["file", "status", "pred", "prob", ...names.map((n) => "prob_" + n), "preprocess", "error"];
  const lines = [head.join(",")];
  for (const r of state.rows) {
    const probs = names.map((n) => (r.probs && n in r.probs ? r.probs[n].toFixed(6) : ""));
    const prob = r.prob === null ? "" : r.prob.toFixed(6);
    lines.push([r.file, r.status, r.pred, prob, ...probs, r.preprocess, r.error].map(csvCell).join(","));
  }
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "bloodmnist_results.csv" });
  document.body.append(a);
  a.click();
  a.remove();
}

function setup() {
  const drop = $("drop");
  $("files").addEventListener("change", (e) => send([...e.target.files]));
  drop.addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === " ") && e.target === drop) { e.preventDefault(); $("files").click(); }
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    send([...e.dataTransfer.files].filter((f) => f.type.startsWith("image/") || f.type === ""));
  });
  $("csv").addEventListener("click", downloadCsv);
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
