// sentistream live dashboard. Fed by the WebSocket bridge of `sentistream run --dashboard`:
// text messages are JSON ({type: "hello" | "event" | "health" | "eos"}), binary ones JPEG frames.
// No external code: the chart is drawn on a <canvas> here.
"use strict";

const COLORS = { positive: "#3ccf6e", negative: "#ef5350", neutral: "#e0b84a", grid: "#2c333d", dim: "#8a93a0", line: "#4aa3ff" };
const state = {
  connected: false,
  events: 0,          // live events received on this page (not counting the replayed history)
  frames: 0,          // video frames shown
  points: [],         // [t1, score] over the last chartSeconds of stream time
  chartSeconds: 60,
  drawnPoints: 0,     // points in the last chart drawn
  draws: 0,
  words: [],          // committed words, in order
  lastEvent: null,
  stages: {},
  errors: [],
  eos: false,
};
window.__sentistream = state;  // for tests and curious people
window.addEventListener("error", (e) => state.errors.push(String(e.message || e)));

const $ = (id) => document.getElementById(id);
const fmt = (x, d = 2) => (typeof x === "number" && isFinite(x) ? x.toFixed(d) : "–");
const signed = (x) => (typeof x === "number" && isFinite(x) ? (x >= 0 ? "+" : "") + x.toFixed(2) : "–");

// ---- WebSocket -----------------------------------------------------------------------------
let frameUrl = null;
let frameTimes = [];
let retry = 500;

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = "blob";
  ws.onopen = () => { state.connected = true; retry = 500; setConn(true); };
  ws.onclose = () => {
    state.connected = false; setConn(false);
    setTimeout(connect, retry); retry = Math.min(retry * 2, 5000);
  };
  ws.onmessage = (msg) => {
    if (typeof msg.data !== "string") { showFrame(msg.data); return; }
    let m;
    try { m = JSON.parse(msg.data); } catch (e) { state.errors.push("bad JSON from bridge"); return; }
    if (m.type === "hello") onHello(m);
    else if (m.type === "event") onEvent(m.event, m.delivery_ms, true);
    else if (m.type === "health") onHealth(m.stages);
    else if (m.type === "eos") { state.eos = true; $("window").textContent += " · stream ended"; }
  };
}

function setConn(on) {
  const el = $("conn");
  el.className = "conn " + (on ? "on" : "off");
  el.textContent = on ? "live" : "disconnected, retrying…";
}

function onHello(m) {
  $("title").textContent = m.title || "sentistream";
  $("address").textContent = "events on " + (m.events_address || "?");
  state.chartSeconds = m.chart_seconds || 60;
  state.points = (m.points || []).map((p) => [p[0], p[1]]);
  state.words = (m.transcript || []).map((w) => w.text);
  if (!m.video) $("novideo").textContent = "this source has no video";
  if (m.stages) onHealth(m.stages);
  if (m.last_event) onEvent(m.last_event, null, false);
  else scheduleDraw();
  renderTranscript(m.last_event ? m.last_event.partial : "");
}

// ---- events ----------------------------------------------------------------------------------
function onEvent(ev, deliveryMs, live) {
  if (!ev || !ev.window) return;
  state.lastEvent = ev;
  if (live) {
    state.events += 1;
    const t1 = ev.window.t1;
    const last = state.points.length ? state.points[state.points.length - 1][0] : -Infinity;
    if (t1 < last - 1e-6) { state.points = []; state.words = []; }  // a new session
    state.points.push([t1, ev.score]);
    const start = t1 - state.chartSeconds;
    while (state.points.length && state.points[0][0] < start) state.points.shift();
    for (const w of ev.new_words || []) state.words.push(w.text);
    if (state.words.length > 400) state.words.splice(0, state.words.length - 400);
  }
  const label = ev.label || "neutral";
  const lab = $("label");
  lab.textContent = label;
  lab.className = "label " + label;
  $("score").textContent = signed(ev.score);
  $("confidence").textContent = "confidence " + fmt(ev.confidence);
  $("window").textContent = `window ${fmt(ev.window.t0)}–${fmt(ev.window.t1)} s · event ${ev.seq}` + (ev.final ? " (final)" : "");
  const model = ev.model || {};
  const mEl = $("model");
  mEl.textContent = "model " + (model.name || "?") + (model.backend ? ` (${model.backend})` : "") +
    (model.placeholder ? " — UNTRAINED PLACEHOLDER: scores are meaningless" : "");
  mEl.className = model.placeholder ? "warn" : "dim";
  // Attributions (score with all present modalities minus with this one masked) when the engine
  // sends them; older engines: the contribution shares.
  const attr = ev.attributions;
  $("attr-unit").textContent = attr ? "(score points)" : "(shares)";
  for (const k of ["text", "audio", "vision"]) {
    const v = attr ? attr[k] : (ev.contributions || {})[k];
    const width = attr ? Math.abs(v || 0) / 3 : (v || 0);
    $("bar-" + k).style.width = Math.max(0, Math.min(1, width)) * 100 + "%";
    $("bar-" + k).classList.toggle("neg", Boolean(attr) && v < 0);
    $("val-" + k).textContent = typeof v !== "number" ? "–" : attr ? signed(v) : Math.round(v * 100) + "%";
    const present = (ev.modalities || {})[k];
    $("bar-" + k).parentElement.parentElement.className = "bar" + (present === false ? " absent" : "");
  }
  renderLatency(ev.latency_ms || {}, deliveryMs);
  renderTranscript(ev.partial || "");
  scheduleDraw();
  renderCounts();
}

function renderLatency(lat, deliveryMs) {
  $("lat-total").textContent = fmt(lat.capture_to_emit, 1) + " ms capture → emit";
  const rows = [];
  for (const [k, v] of Object.entries(lat)) {
    if (typeof v === "object" && v) rows.push([`${k} stream`, v.capture_to_emit]);
  }
  rows.push(["text encoder", lat.text_encoder], ["model", lat.model], ["fusion", lat.fusion]);
  if (typeof deliveryMs === "number") rows.push(["emit → dashboard", deliveryMs]);
  const body = $("lat-table").tBodies[0];
  body.replaceChildren(...rows.map(([name, v]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td"); a.textContent = name;
    const b = document.createElement("td"); b.textContent = fmt(v, 1) + " ms";
    tr.append(a, b);
    return tr;
  }));
}

function renderTranscript(partial) {
  $("committed").textContent = state.words.slice(-120).join(" ");
  $("partial").textContent = partial || "";
  const box = $("transcript");
  box.scrollTop = box.scrollHeight;
}

function onHealth(stages) {
  state.stages = stages || {};
  const body = $("stages").tBodies[0];
  body.replaceChildren(...Object.entries(state.stages).map(([name, s]) => {
    const tr = document.createElement("tr");
    const cells = [name, s.state, s.pid ?? "–", s.restarts, s.received, s.published, s.dropped, s.errors + (s.malformed ? ` (+${s.malformed} malformed)` : "")];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.textContent = String(c);
      if (i === 1) td.className = "state-" + s.state;
      tr.append(td);
    });
    return tr;
  }));
}

function renderCounts() {
  $("counts").textContent = `${state.events} events · ${state.frames} frames on this page`;
}

// ---- video -------------------------------------------------------------------------------------
function showFrame(blob) {
  const img = $("video");
  const url = URL.createObjectURL(blob);
  img.onload = () => { if (frameUrl && frameUrl !== url) URL.revokeObjectURL(frameUrl); frameUrl = url; };
  img.src = url;
  img.className = "live";
  $("novideo").style.display = "none";
  state.frames += 1;
  const now = performance.now();
  frameTimes.push(now);
  while (frameTimes.length && frameTimes[0] < now - 3000) frameTimes.shift();
  $("fps").textContent = `${(frameTimes.length / 3).toFixed(1)} fps`;
  renderCounts();
}

// ---- chart -------------------------------------------------------------------------------------
let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; draw(); });
}

function draw() {
  const canvas = $("chart");
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 720, cssH = canvas.clientHeight || 220;
  if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
    canvas.width = Math.round(cssW * dpr); canvas.height = Math.round(cssH * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const left = 34, right = 8, top = 8, bottom = 22;
  const w = cssW - left - right, h = cssH - top - bottom;
  const pts = state.points;
  const tEnd = pts.length ? Math.max(pts[pts.length - 1][0], state.chartSeconds) : state.chartSeconds;
  const tStart = tEnd - state.chartSeconds;
  const x = (t) => left + ((t - tStart) / state.chartSeconds) * w;
  const y = (s) => top + ((3 - Math.max(-3, Math.min(3, s))) / 6) * h;

  // neutral band and grid
  ctx.fillStyle = "rgba(224,184,74,0.08)";
  ctx.fillRect(left, y(0.5), w, y(-0.5) - y(0.5));
  ctx.strokeStyle = COLORS.grid; ctx.lineWidth = 1;
  ctx.fillStyle = COLORS.dim; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let s = -3; s <= 3; s += 1) {
    ctx.beginPath(); ctx.moveTo(left, y(s) + 0.5); ctx.lineTo(left + w, y(s) + 0.5); ctx.stroke();
    ctx.fillText((s > 0 ? "+" : "") + s, left - 6, y(s));
  }
  ctx.textBaseline = "top";
  for (let k = 0; k <= 6; k++) {
    const t = tStart + (k * state.chartSeconds) / 6;
    ctx.textAlign = k === 0 ? "left" : k === 6 ? "right" : "center";
    ctx.fillText(t.toFixed(0) + " s", x(t), top + h + 6);
  }
  ctx.strokeStyle = COLORS.dim;
  ctx.beginPath(); ctx.moveTo(left, y(0) + 0.5); ctx.lineTo(left + w, y(0) + 0.5); ctx.stroke();

  // the score line, coloured by sign, with the newest point marked
  const visible = pts.filter((p) => p[0] >= tStart);
  if (visible.length >= 2) {
    ctx.lineWidth = 2; ctx.lineJoin = "round";
    for (let i = 1; i < visible.length; i++) {
      const [t0, s0] = visible[i - 1], [t1, s1] = visible[i];
      const mid = (s0 + s1) / 2;
      ctx.strokeStyle = Math.abs(mid) < 0.5 ? COLORS.neutral : mid > 0 ? COLORS.positive : COLORS.negative;
      ctx.beginPath(); ctx.moveTo(x(t0), y(s0)); ctx.lineTo(x(t1), y(s1)); ctx.stroke();
    }
  }
  if (visible.length) {
    const [t, s] = visible[visible.length - 1];
    ctx.fillStyle = COLORS.line;
    ctx.beginPath(); ctx.arc(x(t), y(s), 4, 0, 2 * Math.PI); ctx.fill();
  }
  state.drawnPoints = visible.length;
  state.draws += 1;
}

window.addEventListener("resize", scheduleDraw);
draw();
connect();
