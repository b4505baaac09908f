// The dashboard: plain JavaScript, SVG charts drawn here, data from /api/* and /v1/*,
// refreshed when /api/events says the store changed (no timers).
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") n.className = v; else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v);
  }
  for (const k of kids) n.append(k instanceof Node ? k : document.createTextNode(k ?? ""));
  return n;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error((await r.json()).error?.message || r.statusText);
  return r.json();
}

// the list views answer a page at a time (?limit=, ?offset=, X-Total-Count): the loss chart
// shows the latest STEPS_SHOWN sampled steps
const STEPS_SHOWN = 5000;
async function latestSteps() {
  const r = await fetch("/api/steps?limit=1", { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error((await r.json()).error?.message || r.statusText);
  const total = Number(r.headers.get("X-Total-Count")) || 0;
  return getJSON(`/api/steps?limit=${STEPS_SHOWN}&offset=${Math.max(0, total - STEPS_SHOWN)}`);
}

// numbers as people read them: thousands separated, no fractions past 100 (7,166 tokens/s,
// not 7166.156), up to `d` decimals below (a loss of 4.512)
const fmt = (v, d = 3) => v === null || v === undefined ? "" :
  typeof v === "number" ? v.toLocaleString("en-US", { maximumFractionDigits: Math.abs(v) >= 100 ? 0 : d })
    : String(v);

function table(node, rows, columns) {
  node.replaceChildren(el("tr", {}, ...columns.map(([, label]) => el("th", {}, label))));
  for (const r of rows) {
    node.append(el("tr", {}, ...columns.map(([key, , render]) => {
      const v = render ? render(r) : r[key];
      return v instanceof Node ? el("td", {}, v) :
        el("td", { class: typeof v === "number" ? "num" : "" }, fmt(v));
    })));
  }
  if (!rows.length) node.append(el("tr", {}, el("td", { colspan: columns.length, class: "muted" }, "nothing yet")));
}

// --------------------------------------------------------------------------- charts

const PALETTE = ["#2c6bed", "#e4572e", "#17b890", "#f3a712", "#8e44ad", "#29335c", "#a8c686"];

function axes(node, W, H, pad, x0, x1, y0, y1, xlabel, ylabel) {
  node.replaceChildren();
  const sx = (x) => pad + (x - x0) / ((x1 - x0) || 1) * (W - 2 * pad);
  const sy = (y) => H - pad - (y - y0) / ((y1 - y0) || 1) * (H - 2 * pad);
  node.append(svg("line", { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: "#999" }));
  node.append(svg("line", { x1: pad, y1: pad, x2: pad, y2: H - pad, stroke: "#999" }));
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    node.append(svg("text", { x: pad - 4, y: sy(y) + 4, "text-anchor": "end", "font-size": 10 }, fmt(y, 2)));
  }
  node.append(svg("text", { x: W / 2, y: H - 6, "text-anchor": "middle", "font-size": 11 }, xlabel));
  node.append(svg("text", { x: 12, y: pad - 8, "font-size": 11 }, ylabel));
  return [sx, sy];
}

function lossChart(node, steps) {
  const pts = steps.filter((s) => s.loss !== null);
  if (!pts.length) { node.replaceChildren(svg("text", { x: 20, y: 30 }, "no steps recorded yet")); return; }
  // one x axis across cycles: each cycle's steps follow the previous cycle's
  let offset = 0, last = null, xs = [];
  for (const s of pts) {
    if (last !== null && s.cycle_id !== last.cycle_id) offset = xs[xs.length - 1];
    xs.push(offset + s.step); last = s;
  }
  const ys = pts.map((s) => s.loss);
  const [sx, sy] = axes(node, 800, 260, 40, 0, Math.max(...xs), Math.min(...ys), Math.max(...ys),
    "step (cycles one after another)", "loss");
  const byCycle = new Map();
  pts.forEach((s, i) => { if (!byCycle.has(s.cycle_id)) byCycle.set(s.cycle_id, []); byCycle.get(s.cycle_id).push([xs[i], s.loss]); });
  let k = 0;
  for (const [cycle, line] of byCycle) {
    const color = PALETTE[k++ % PALETTE.length];
    node.append(svg("polyline", { points: line.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" "),
      fill: "none", stroke: color, "stroke-width": 1.5, "data-cycle": cycle, class: "loss-line" }));
    node.append(svg("text", { x: sx(line[0][0]) + 2, y: 52 + (k % 2) * 12, fill: color, "font-size": 10 }, `cycle ${cycle}`));
  }
}

function barChart(node, labels, values, xlabel, ylabel, H = 200) {
  if (!values.length) { node.replaceChildren(svg("text", { x: 20, y: 30 }, "nothing yet")); return; }
  const [, sy] = axes(node, 800, H, 40, 0, 1, 0, Math.max(...values, 1), xlabel, ylabel);
  const w = Math.min(80, (800 - 80) / values.length);
  values.forEach((v, i) => {
    node.append(svg("rect", { x: 40 + i * w + 2, y: sy(v), width: Math.max(1, w - 4), height: H - 40 - sy(v), fill: PALETTE[0], class: "bar" }));
    node.append(svg("text", { x: 40 + i * w + w / 2, y: H - 26, "text-anchor": "middle", "font-size": 10 }, labels[i]));
  });
}

function heatmap(node, rows) {
  node.replaceChildren();
  if (!rows.length) { node.append(svg("text", { x: 20, y: 30 }, "no evaluations yet")); return; }
  const sources = [...new Set(rows.map((r) => r.source))].sort();
  const cycles = [...new Set(rows.map((r) => r.cycle_id))].sort((a, b) => a - b);
  const vals = rows.map((r) => r.forgetting ?? 0);
  const hi = Math.max(...vals.map(Math.abs), 1e-9);
  const left = 140, top = 20, cw = Math.min(60, (800 - left - 10) / cycles.length), ch = Math.min(28, 160 / sources.length);
  node.setAttribute("viewBox", `0 0 800 ${top + ch * sources.length + 30}`);
  sources.forEach((s, j) => node.append(svg("text", { x: left - 6, y: top + j * ch + ch / 2 + 4, "text-anchor": "end", "font-size": 11 }, s)));
  cycles.forEach((c, i) => node.append(svg("text", { x: left + i * cw + cw / 2, y: top + ch * sources.length + 14, "text-anchor": "middle", "font-size": 10 }, `cycle ${c}`)));
  for (const r of rows) {
    const f = r.forgetting ?? 0, a = Math.min(1, Math.abs(f) / hi);
    const color = f >= 0 ? `rgba(228,87,46,${0.1 + 0.9 * a})` : `rgba(23,184,144,${0.1 + 0.9 * a})`;
    const cell = svg("rect", { x: left + cycles.indexOf(r.cycle_id) * cw, y: top + sources.indexOf(r.source) * ch,
      width: cw - 2, height: ch - 2, fill: color, class: "cell" });
    cell.append(svg("title", {}, `${r.source}, cycle ${r.cycle_id}: loss ${fmt(r.val_loss)}, forgetting ${fmt(r.forgetting)}`));
    node.append(cell);
  }
}

// --------------------------------------------------------------------------- tabs

async function training() {
  const [st, cycles, steps] = await Promise.all([getJSON("/api/status"), getJSON("/api/cycles"), latestSteps()]);
  $("#agent-state").replaceChildren(st.agent_running ? `running (pid ${st.pid})` : "not running",
    el("br"), `${st.cycles_completed} cycles completed`);
  const pause = $("#pause-training");
  pause.dataset.paused = st.training_paused ? "1" : "0";
  pause.textContent = st.training_paused ? "Resume training" : "Pause training";
  const ph = st.training_phase;
  if (st.paused_by && st.paused_by.length)   // why: a user, the battery, the machine's load
    $("#agent-state").append(el("br"), "training paused: " +
      (ph && ph.phase === "paused" && st.agent_running ? ph.reason : "paused by a user"));
  else if (st.training_phase && st.agent_running)
    $("#agent-state").append(el("br"), `training: ${st.training_phase.phase} (${st.training_phase.reason})`);
  const c = st.current_cycle;
  $("#current-cycle").textContent = c ? `cycle ${c.id} (${c.trigger}): step ${c.step}/${c.steps ?? "?"}, loss ${fmt(c.loss)}` +
    (c.stale ? " (interrupted)" : "") : "none";
  const b = st.backlog;
  $("#backlog").textContent = b.documents ? `${b.documents} documents, ${fmt(b.bytes)} bytes` +
    (b.tokens_per_s ? `, ${fmt(b.tokens_per_s, 0)} tokens/s` : "") + (b.eta_s ? `, ETA ${Math.round(b.eta_s)} s` : "") : "nothing to learn";
  lossChart($("#loss-chart"), steps);
  table($("#cycles-table"), cycles.slice().reverse(), [["id", "cycle"], ["status", "status"], ["trigger", "trigger"],
    ["documents", "documents"], ["steps", "steps"], ["loss", "loss"], ["val_loss", "validation"],
    ["forgetting_mean", "forgetting"], ["tokens_per_s", "tokens/s"], ["vocab_after", "vocabulary"]]);
}

$("#pause-training").addEventListener("click", async () => {
  const paused = $("#pause-training").dataset.paused !== "1";
  await fetch("/api/training", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ paused }) });
  training();
});

async function crawler() {
  const [targets, st, docs, urls] = await Promise.all([getJSON("/api/targets"), getJSON("/api/status"),
    getJSON("/api/documents?limit=200"), getJSON("/api/urls?limit=200")]);
  table($("#targets-table"), targets, [["id", "id"], ["kind", "kind"], ["location", "location"],
    ["last_scan", "last scan"], ["", "", (t) => el("button", { class: "link remove-target", "data-id": t.id,
      onclick: () => removeTarget(t.id) }, "remove")]]);
  $("#doc-status").replaceChildren(...Object.entries(st.documents).map(([k, v]) => el("span", { "data-status": k }, `${k}: ${v}`)));
  table($("#documents-table"), docs, [["id", "id"], ["status", "status"], ["passes", "passes"],
    ["uri", "document"], ["source", "source"], ["reason", "reason"]]);
  table($("#urls-table"), urls, [["status", "status"], ["http_status", "HTTP"], ["url", "URL"], ["reason", "reason"]]);
}

async function removeTarget(id) {
  const r = await fetch(`/api/targets/${id}`, { method: "DELETE" });
  $("#target-message").textContent = r.ok ? `target ${id} removed` : (await r.json()).error.message;
  crawler();
}

$("#target-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const r = await fetch("/api/targets", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ kind: $("#target-kind").value, location: $("#target-location").value }) });
  const body = await r.json();
  $("#target-message").textContent = r.ok ? `target ${body.id} recorded` : body.error.message;
  if (r.ok) $("#target-location").value = "";
  crawler();
});

async function llm() {
  const ckpts = await getJSON("/api/checkpoints");
  const sel = $("#llm-checkpoint"), keep = sel.value;
  sel.replaceChildren(el("option", { value: "" }, "latest"),
    ...ckpts.filter((c) => c.exists && c.cycle_id !== null).map((c) => el("option", { value: c.cycle_id }, `cycle ${c.cycle_id} (step ${c.step})`)));
  sel.value = keep;
}

let chat = [], controller = null;

async function* sseEvents(response) {
  const reader = response.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i + 2);
      for (const line of block.split("\n")) if (line.startsWith("data: ")) yield line.slice(6);
    }
  }
}

$("#llm-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const mode = $("#llm-mode").value, text = $("#llm-prompt").value;
  const num = (id) => $(id).value === "" ? undefined : Number($(id).value);
  const body = { stream: true, max_tokens: num("#llm-max-tokens"), temperature: num("#llm-temperature"),
    top_p: num("#llm-top-p"), top_k: num("#llm-top-k"), seed: num("#llm-seed"), checkpoint: num("#llm-checkpoint") };
  let path;
  if (mode === "chat") {
    chat.push({ role: "user", content: text });
    body.messages = chat; path = "/v1/chat/completions";
    $("#llm-log").append(el("div", { class: "turn" }, el("span", { class: "who" }, "you"), text));
  } else { body.prompt = text; path = "/v1/completions"; }
  const out = $("#llm-output"), status = $("#llm-status");
  out.textContent = mode === "chat" ? "" : text;
  let chunks = 0, reply = "";
  controller = new AbortController();
  $("#llm-send").disabled = true; $("#llm-stop").disabled = false;
  status.textContent = "generating…"; status.dataset.chunks = "0"; status.dataset.done = "false";
  try {
    const r = await fetch(path, { method: "POST", signal: controller.signal,
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (!r.ok) throw new Error((await r.json()).error.message);
    for await (const data of sseEvents(r)) {
      if (data === "[DONE]") break;
      const ev = JSON.parse(data), ch = ev.choices[0];
      if (!ch) continue;
      const piece = mode === "chat" ? ch.delta.content : ch.text;
      if (piece) { reply += piece; out.textContent += piece; chunks++; status.dataset.chunks = String(chunks); }
      if (ch.finish_reason) status.textContent = `${chunks} chunks, finished: ${ch.finish_reason}`;
    }
  } catch (err) {
    status.textContent = err.name === "AbortError" ? `stopped after ${chunks} chunks` : `error: ${err.message}`;
  } finally {
    status.dataset.done = "true";
    $("#llm-send").disabled = false; $("#llm-stop").disabled = true;
    if (mode === "chat") {
      chat.push({ role: "assistant", content: reply.trim() });
      $("#llm-log").append(el("div", { class: "turn" }, el("span", { class: "who" }, "cllm"), reply));
    }
  }
});
$("#llm-stop").addEventListener("click", () => controller && controller.abort());

async function research() {
  const [vocab, forgetting, cycles] = await Promise.all([getJSON("/api/vocab"), getJSON("/api/forgetting"),
    getJSON("/api/cycles")]);
  const per = new Map();
  for (const v of vocab) per.set(v.cycle_id, (per.get(v.cycle_id) || 0) + 1);
  const done = cycles.filter((c) => c.status === "completed");   // every cycle, those that added nothing too
  barChart($("#vocab-chart"), done.map((c) => `cycle ${c.id}`), done.map((c) => per.get(c.id) || 0), "cycle", "tokens added");
  table($("#vocab-table"), vocab.slice(-20).reverse(), [["token_id", "id"], ["token", "token", (v) => JSON.stringify(v.token)],
    ["cycle_id", "cycle"], ["document", "first seen in"]]);
  heatmap($("#forgetting-heatmap"), forgetting);
}

$("#neighbours-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const d = await getJSON(`/api/neighbours?token=${encodeURIComponent($("#neighbours-token").value)}`);
    $("#neighbours-info").textContent = `token ${d.token}${d.text !== undefined ? " " + JSON.stringify(d.text) : ""}: ` +
      `Ulam point (${d.ulam.join(", ")}), clock ring ${d.clock.ring} position ${d.clock.pos}/${d.clock.ring_size}, symmetry group ${d.symmetry_group}`;
    table($("#neighbours-table"), d.neighbours, [["token", "neighbour"], ["text", "text", (n) => n.text === undefined ? "" : JSON.stringify(n.text)],
      ["similarity", "similarity"], ["prior", "prior q"]]);
  } catch (err) { $("#neighbours-info").textContent = err.message; }
});

$("#bench-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const status = $("#bench-status");
  status.textContent = "running…"; $("#bench-run").disabled = true;
  try {
    const r = await fetch("/api/bench", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ preset: $("#bench-preset").value, rounds: Number($("#bench-rounds").value),
        workers: $("#bench-workers").value.split(",").map((s) => Number(s.trim())).filter((n) => n > 0) }) });
    const res = await r.json();
    if (!r.ok) throw new Error(res.error.message);
    $("#bench-lines").textContent = res.lines.join("\n");
    barChart($("#bench-chart"), res.rows.map((row) => `${row.workers} workers`), res.rows.map((row) => row.tok_s), "workers", "tokens/s", 220);
    status.textContent = "done";
  } catch (err) { status.textContent = `error: ${err.message}`; }
  finally { $("#bench-run").disabled = false; }
});

// --------------------------------------------------------------------------- wiring

const TABS = { training, crawler, llm, research, benchmark: async () => {} };
let active = "training";

function show(tab) {
  active = tab;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${tab}`);
  history.replaceState(null, "", `#${tab}`);
  refresh();
}

async function refresh() {
  const section = $(`#tab-${active}`);
  try { await TABS[active](); section.dataset.loaded = String(Number(section.dataset.loaded || 0) + 1); }
  catch (err) { console.error(err); }
}

async function model() {
  try { const m = await getJSON("/v1/models"); $("#model-id").textContent = m.data[0]?.id ?? "no model yet"; }
  catch { /* shown as no model */ }
}

for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.tab));
window.addEventListener("hashchange", () => { const t = location.hash.slice(1); if (TABS[t] && t !== active) show(t); });

const live = $("#live"), source = new EventSource("/api/events");
source.addEventListener("open", () => { live.className = "badge live"; live.textContent = "live"; });
source.addEventListener("error", () => { live.className = "badge offline"; live.textContent = "offline"; });
const onEvent = () => { live.dataset.events = String(Number(live.dataset.events) + 1); model(); refresh(); };
source.addEventListener("store", onEvent);
source.addEventListener("model", onEvent);

model();
show(TABS[location.hash.slice(1)] ? location.hash.slice(1) : "training");
