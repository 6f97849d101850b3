// restrav operator page: every stream, its live P(AI) timeline, alerts, gaps.
// No build step, no dependencies. Live updates come from GET /ui/events, read with
// fetch() so the API token travels in the Authorization header (EventSource cannot set
// headers, and a token in a URL would end up in logs). The token is kept in
// sessionStorage for this tab; a #token= fragment (never sent to the server) is taken once.
"use strict";

const KEY = "restrav.token";
const STATE_BANDS = {
  stalled: "rgba(245,185,66,.22)", reconnecting: "rgba(255,138,61,.26)",
  paused: "rgba(120,135,150,.20)", failed: "rgba(255,84,104,.18)", stopped: "rgba(120,135,150,.14)",
};
const $ = (id) => document.getElementById(id);

const ui = {
  cfg: { history_s: 300, tick_s: 1, alert_enter: 0.8, alert_leave: 0.6, feature_names: [], thumbnails: false },
  streams: new Map(), order: [], offset: 0, conn: "off", updates: 0, snapshots: 0,
  selected: null, rows: [], lastMsg: 0, ctrl: null, retry: 0, bye: null, rowH: 64,
};
window.restravUi = ui; // read by tests and curious operators
ui.errors = []; // script errors and Content-Security-Policy violations, for tests
window.addEventListener("error", (e) => ui.errors.push(String(e.message)));
document.addEventListener("securitypolicyviolation",
  (e) => ui.errors.push("csp: " + e.violatedDirective + " " + e.blockedURI));

// --- token -------------------------------------------------------------------------------
function takeToken() {
  const m = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(KEY);
}
function askToken(message, canSignIn = true) {
  $("login").hidden = false;
  $("loginError").textContent = message || "";
  // no token configured on the service: nothing to type, only what to change
  $("token").hidden = $("loginForm").querySelector("button").hidden = !canSignIn;
  if (canSignIn) $("token").focus();
}
$("loginForm").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  if (!t) return;
  sessionStorage.setItem(KEY, t);
  $("token").value = "";
  $("login").hidden = true;
  connect();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  if (ui.ctrl) ui.ctrl.abort();
  setConn("off", "no token");
  askToken("");
});
const auth = () => {
  const token = sessionStorage.getItem(KEY);
  return token ? { Authorization: "Bearer " + token } : {};
};

// --- time --------------------------------------------------------------------------------
const nowS = () => Date.now() / 1000 + ui.offset;
function ago(t) {
  const s = Math.max(0, nowS() - t);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return new Date(t * 1000).toLocaleTimeString();
}
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

// --- the event stream --------------------------------------------------------------------
function setConn(state, text) {
  ui.conn = state;
  const el = $("conn");
  el.className = "conn " + ({ live: "conn-live", wait: "conn-wait" }[state] || "conn-off");
  el.textContent = text;
}

async function connect() {
  if (ui.ctrl) ui.ctrl.abort();
  // asked even without a token: a service with none configured says so (503), and the
  // page then says what to set instead of asking for a token nobody has
  const token = sessionStorage.getItem(KEY);
  const ctrl = new AbortController();
  ui.ctrl = ctrl;
  setConn("wait", "connecting…");
  let resp;
  try {
    resp = await fetch("/ui/events", {
      headers: { ...auth(), Accept: "text/event-stream" }, cache: "no-store", signal: ctrl.signal,
    });
  } catch (e) {
    return retryLater("unreachable");
  }
  if (resp.status === 401) {
    sessionStorage.removeItem(KEY);
    setConn("off", "not signed in");
    return askToken(token ? "That token was refused (401). Check serve.api.token." : "");
  }
  if (resp.status === 503) {
    const body = await resp.json().catch(() => ({}));
    const code = (body.error && body.error.code) || "unavailable";
    if (code === "control_disabled") {
      setConn("off", "no API token configured");
      return askToken("This service has no API token, so this page is off: set "
        + "serve.api.token or serve.api.token_file (or RESTRAV_SERVE__API__TOKEN) and "
        + "restart restrav serve.", false);
    }
    return retryLater(code);
  }
  if (!resp.ok || !resp.body) return retryLater("HTTP " + resp.status);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  ui.lastMsg = Date.now();
  ui.bye = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        handleBlock(block);
      }
    }
  } catch (e) {
    if (ctrl.signal.aborted && ui.ctrl !== ctrl) return; // replaced by a newer connection
  }
  if (ui.ctrl === ctrl) retryLater(ui.bye ? "service " + ui.bye : "disconnected");
}

function retryLater(why) {
  ui.retry = Math.min(ui.retry + 1, 5);
  const delay = Math.min(15000, 500 * 2 ** ui.retry) * (0.5 + Math.random() / 2);
  setConn(why.startsWith("service") ? "wait" : "off", why + ", retrying…");
  setTimeout(connect, delay);
}

function handleBlock(block) {
  let event = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trimStart();
  }
  if (!data) return;
  const msg = JSON.parse(data);
  ui.lastMsg = Date.now();
  if (event === "snapshot") onSnapshot(msg);
  else if (event === "update") onUpdate(msg);
  else if (event === "bye") { ui.bye = msg.reason; setConn("wait", "service " + msg.reason); }
}

function blank(id) {
  return { id, summary: {}, points: [], alerts: [], marks: [], hasP: false };
}

function onSnapshot(m) {
  ui.snapshots += 1;
  ui.retry = 0;
  ui.offset = m.t - Date.now() / 1000;
  Object.assign(ui.cfg, {
    history_s: m.history_s, tick_s: m.tick_s, alert_enter: m.alert_enter,
    alert_leave: m.alert_leave, feature_names: m.feature_names, thumbnails: m.thumbnails !== false,
  });
  ui.streams.clear();
  for (const [id, s] of Object.entries(m.streams)) {
    const st = Object.assign(blank(id), s);
    st.hasP = st.points.some((p) => p[1] !== null);
    ui.streams.set(id, st);
  }
  setConn("live", "live");
  reorder();
}

function onUpdate(m) {
  ui.updates += 1;
  ui.offset = m.t - Date.now() / 1000;
  const horizon = m.t - ui.cfg.history_s;
  let structural = false;
  for (const id of m.removed) { ui.streams.delete(id); structural = true; }
  const get = (id) => {
    let s = ui.streams.get(id);
    if (!s) { s = blank(id); ui.streams.set(id, s); structural = true; }
    return s;
  };
  for (const [id, summ] of Object.entries(m.status)) {
    const s = get(id);
    if (s.summary.alert !== summ.alert || s.summary.state !== summ.state) structural = true;
    s.summary = summ;
  }
  for (const [id, p] of Object.entries(m.points)) {
    const s = get(id);
    s.points.push(p);
    if (p[1] !== null) s.hasP = true;
    while (s.points.length && s.points[0][0] < horizon) s.points.shift();
  }
  for (const [id, periods] of Object.entries(m.alerts)) {
    const s = get(id);
    for (const a of periods) {  // opened or closed this tick, oldest first
      const known = s.alerts.find((b) => b[0] === a[0]);
      if (known) known[1] = a[1]; else s.alerts.push(a);
    }
  }
  for (const [id, ms] of Object.entries(m.marks)) {
    const s = get(id);
    s.marks.push(...ms);
    while (s.marks.length > 200) s.marks.shift();
  }
  setConn("live", "live");
  if (structural) reorder(); else render();
  if (ui.selected && (m.points[ui.selected] || m.status[ui.selected])) refreshDetail();
  if (!$("events").hidden) refreshEvents();
  refreshRowThumbs();
}

// each visible row's latest frame, once an update (serve.ui.thumbnails: false turns it off)
const thumbsOff = new Set();
let thumbsBusy = false;
async function refreshRowThumbs() {
  if (!ui.cfg.thumbnails || thumbsBusy) return;
  thumbsBusy = true;
  try {
    for (const row of ui.rows) {
      const id = row.dataset.id;
      if (row.hidden || !id || thumbsOff.has(id)) continue;
      const r = await fetch("/streams/" + encodeURIComponent(id) + "/thumbnail", { headers: auth(), cache: "no-store" });
      if (!r.ok) {
        const code = ((await r.json().catch(() => ({}))).error || {}).code;
        if (code === "thumbnails_off") thumbsOff.add(id);
        continue;
      }
      const url = URL.createObjectURL(await r.blob());
      if (row.dataset.id !== id) { URL.revokeObjectURL(url); continue; }
      const im = row.querySelector(".rowthumb");
      setBlob(im, url);
      im.hidden = false;
    }
  } catch (e) {
    /* the next update retries */
  } finally {
    thumbsBusy = false;
  }
}

// stale stream: nothing for a while (a proxy that buffers, a half-open connection)
setInterval(() => {
  if (ui.conn === "live" && Date.now() - ui.lastMsg > (3 * ui.cfg.tick_s + 10) * 1000) {
    setConn("wait", "stale, reconnecting…");
    connect();
  }
}, 2000);

// --- the list (virtualised: only visible rows exist) ------------------------------------
function reorder() {
  const f = $("filter").value.trim().toLowerCase();
  let ids = [...ui.streams.keys()].filter((id) => {
    if (!f) return true;
    const s = ui.streams.get(id);
    return id.toLowerCase().includes(f) || String(s.summary.state || "").includes(f)
      || (f === "alert" && s.summary.alert);
  });
  ids.sort();
  if ($("alertsFirst").checked) {
    const rank = (id) => {
      const s = ui.streams.get(id).summary;
      return s.alert ? 0 : (troubled(s) ? 1 : 2);
    };
    ids.sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : 1));
  }
  ui.order = ids;
  // few streams: tall rows (small multiples); many: compact rows, only the visible ones drawn
  ui.rowH = ids.length <= 4 ? 140 : ids.length <= 10 ? 96 : 64;
  $("list").style.setProperty("--row-h", ui.rowH + "px");
  const span = ui.cfg.history_s >= 120 ? Math.round(ui.cfg.history_s / 60) + " min"
    : Math.round(ui.cfg.history_s) + " s";
  const anyP = ui.streams.size === 0 || [...ui.streams.values()].some((s) => s.hasP);
  $("axisLabel").textContent = (anyP ? "P(AI)" : "mean curvature (°), no classifier")
    + ", last " + span;
  $("spacer").style.height = ids.length * ui.rowH + "px";
  $("empty").hidden = ui.streams.size > 0;
  summarise();
  render();
}

// stalled, reconnecting or failed; a WHIP stream waiting for its publisher is not
function troubled(sm) {
  return ["failed", "stalled", "reconnecting"].includes(sm.state) && !sm.awaiting;
}

function summarise() {
  const c = { streams: 0, running: 0, alert: 0, problem: 0, paused: 0 };
  for (const s of ui.streams.values()) {
    c.streams += 1;
    const st = s.summary.state;
    if (st === "running") c.running += 1;
    if (st === "paused") c.paused += 1;
    if (troubled(s.summary)) c.problem += 1;
    if (s.summary.alert) c.alert += 1;
  }
  const el = $("summary");
  el.replaceChildren();
  const add = (n, label, cls) => {
    const span = document.createElement("span");
    if (cls && n) span.className = cls;
    const b = document.createElement("b");
    b.textContent = n;
    span.append(b, " " + label);
    el.append(span);
  };
  add(c.streams, c.streams === 1 ? "stream" : "streams");
  add(c.running, "running");
  add(c.alert, c.alert === 1 ? "alert" : "alerts", "hot");
  add(c.problem, "stalled / failing", "warn");
  if (c.paused) add(c.paused, "paused");
}

function makeRow() {
  const row = document.createElement("div");
  row.className = "row";
  row.innerHTML =
    '<div class="id"><div class="name"></div><div class="meta"></div></div>' +
    '<img class="rowthumb" alt="" hidden>' +
    '<div class="score"><div class="num"></div><div class="unit"></div></div><canvas></canvas>';
  row.tabIndex = 0;
  row.setAttribute("role", "button");
  row.addEventListener("click", () => openDetail(row.dataset.id));
  row.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(row.dataset.id); });
  $("list").append(row);
  return row;
}

function render() {
  const list = $("list");
  // rows still placed further down keep the old scroll height: clamp to the real content
  const maxTop = Math.max(0, ui.order.length * ui.rowH - list.clientHeight);
  if (list.scrollTop > maxTop) list.scrollTop = maxTop;
  const first = Math.max(0, Math.floor(list.scrollTop / ui.rowH) - 1);
  const count = Math.min(ui.order.length - first, Math.ceil(list.clientHeight / ui.rowH) + 3);
  while (ui.rows.length < count) ui.rows.push(makeRow());
  ui.rows.forEach((row, i) => {
    if (i >= count) { row.hidden = true; row.dataset.id = ""; row.style.top = "0px"; return; }
    const idx = first + i;
    const s = ui.streams.get(ui.order[idx]);
    row.hidden = false;
    row.style.top = idx * ui.rowH + "px";
    fillRow(row, s, idx);
  });
  ui.visibleRows = ui.rows.filter((r) => !r.hidden).length;
}

function fmtP(s) {
  const last = s.points[s.points.length - 1];
  if (!last) return { text: "–", cls: "na", unit: s.hasP ? "P(AI)" : "" };
  if (s.hasP) {
    const p = last[1];
    if (p === null) return { text: "–", cls: "na", unit: "P(AI)" };
    const cls = p >= ui.cfg.alert_enter ? "hi" : p >= ui.cfg.alert_leave ? "mid" : "lo";
    return { text: (p * 100).toFixed(0) + "%", cls, unit: "P(AI)" };
  }
  return { text: last[2] === null ? "–" : last[2].toFixed(1) + "°", cls: "na", unit: "curvature" };
}

function fillRow(row, s, idx) {
  const sm = s.summary;
  row.dataset.id = s.id;
  row.dataset.state = sm.state || "";
  row.dataset.alert = sm.alert ? "1" : "0";
  row.classList.toggle("odd", idx % 2 === 1);
  row.classList.toggle("alert", !!sm.alert);
  row.classList.toggle("sel", ui.selected === s.id);
  row.querySelector(".name").textContent = s.id;
  const im = row.querySelector(".rowthumb");
  if (im.dataset.sid !== s.id) { im.hidden = true; im.dataset.sid = s.id; }  // a reused row
  const meta = row.querySelector(".meta");
  meta.replaceChildren();
  const pill = document.createElement("span");
  pill.className = "pill st-" + (sm.state || "starting");
  pill.textContent = sm.state || "…";
  meta.append(pill);
  if (sm.alert) {
    const a = document.createElement("span");
    a.className = "pill alerting";
    a.textContent = "ALERT";
    meta.append(a);
  }
  const bits = [sm.kind];
  if (sm.reconnects) bits.push(sm.reconnects + " reconnect" + (sm.reconnects > 1 ? "s" : ""));
  if (sm.error) bits.push(sm.error);
  // degraded, not failing: the device is at capacity and streams take turns
  if (sm.yielding) bits.push("yielding (overload)");
  meta.append(bits.filter(Boolean).join(" · "));
  // the row cuts the line short: the whole error on hover
  row.title = sm.error ? sm.error + ": " + (sm.error_message || "") : "";
  const f = fmtP(s);
  const num = row.querySelector(".num");
  num.textContent = f.text;
  num.className = "num " + f.cls;
  row.querySelector(".unit").textContent = f.unit;
  const drawn = drawTimeline(row.querySelector("canvas"), s, false);
  row.dataset.points = drawn.points;
  row.dataset.alertPeriods = drawn.alerts;
  row.dataset.lastT = drawn.lastT;
  row.dataset.flagged = drawn.flagged;
  row.dataset.bands = drawn.bands;
  row.dataset.gaps = drawn.gaps;
}

$("list").addEventListener("scroll", () => render(), { passive: true });
window.addEventListener("resize", () => { render(); if (ui.selected) refreshDetail(); });
$("filter").addEventListener("input", () => { $("list").scrollTop = 0; reorder(); });
$("alertsFirst").addEventListener("change", reorder);

// --- drawing -----------------------------------------------------------------------------
function tickStep(span) {
  for (const s of [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800]) if (span / s <= 6) return s;
  return 3600;
}

function drawTimeline(canvas, s, big) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  const out = { points: 0, alerts: 0, lastT: 0, flagged: 0, bands: 0, gaps: 0 };
  if (!w || !h) return out;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.fillStyle = "#0a1119";
  g.fillRect(0, 0, w, h);
  const t1 = nowS(), t0 = t1 - ui.cfg.history_s;
  const left = big ? 34 : 0, right = w - (big ? 6 : 0), top = big ? 8 : 4;
  const bottom = h - (big ? 18 : 6);
  const X = (t) => left + ((t - t0) / (t1 - t0)) * (right - left);
  const pts = s.points.filter((p) => p[0] >= t0);
  let lo = 0, hi = 1, vi = 1;
  if (!s.hasP) {
    vi = 2;
    const cs = pts.map((p) => p[2]).filter((v) => v !== null);
    lo = cs.length ? Math.min(...cs) : 0;
    hi = cs.length ? Math.max(...cs) : 180;
    const pad = Math.max(2, (hi - lo) * 0.15);
    lo -= pad; hi += pad;
  }
  const Y = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);

  // grid: a line every `step` seconds, and the y ticks on the big chart
  const step = tickStep(t1 - t0);
  g.strokeStyle = "#16212e";
  g.lineWidth = 1;
  for (let t = Math.ceil(t0 / step) * step; t < t1; t += step) {
    g.beginPath(); g.moveTo(Math.round(X(t)) + 0.5, top); g.lineTo(Math.round(X(t)) + 0.5, bottom); g.stroke();
  }
  // state bands (stalled, reconnecting, paused, failed, stopped)
  const states = s.marks.filter((m) => m[1] === "state").sort((a, b) => a[0] - b[0]);
  // the state in force is drawn up to now whatever its start: its mark may be older than
  // the history (a long outage) and gone from the marks
  const cur = s.summary.state;
  if (cur && (!states.length || states[states.length - 1][2] !== cur)) {
    const since = s.summary.since ?? t0;
    if (!states.length || since >= states[states.length - 1][0]) states.push([since, "state", cur]);
  }
  states.forEach((m, i) => {
    const col = STATE_BANDS[m[2]];
    if (!col) return;
    // a WHIP stream's reconnecting is waiting for its publisher, not an outage
    if (s.summary.kind === "whip" && m[2] === "reconnecting") return;
    const end = i + 1 < states.length ? states[i + 1][0] : t1;
    if (end < t0) return;
    const x0 = Math.max(left, X(m[0])), x1 = Math.min(right, X(end));
    g.fillStyle = col;
    g.fillRect(x0, top, Math.max(2, x1 - x0), bottom - top);
    out.bands += 1;
  });
  // alert periods
  for (const a of s.alerts) {
    const end = a[1] === null ? t1 : a[1];
    if (end < t0) continue;
    const x0 = Math.max(left, X(a[0])), x1 = Math.min(right, X(end));
    g.fillStyle = "rgba(255,84,104,.30)";
    g.fillRect(x0, 0, Math.max(2, x1 - x0), h);
    g.fillStyle = "rgba(255,84,104,.9)";
    g.fillRect(x0, 0, Math.max(2, x1 - x0), 2);
    out.alerts += 1;
  }
  // threshold lines
  if (s.hasP) {
    g.setLineDash([5, 4]);
    g.strokeStyle = "rgba(255,84,104,.85)";
    g.beginPath(); g.moveTo(left, Y(ui.cfg.alert_enter)); g.lineTo(right, Y(ui.cfg.alert_enter)); g.stroke();
    if (big) {
      g.setLineDash([2, 4]);
      g.strokeStyle = "rgba(245,185,66,.6)";
      g.beginPath(); g.moveTo(left, Y(ui.cfg.alert_leave)); g.lineTo(right, Y(ui.cfg.alert_leave)); g.stroke();
    }
    g.setLineDash([]);
  }
  // gaps (a window ended): dotted verticals
  g.strokeStyle = "rgba(200,211,224,.55)";
  g.setLineDash([2, 3]);
  for (const m of s.marks) {
    if (m[1] !== "gap" || m[0] < t0) continue;
    const x = Math.round(X(m[0])) + 0.5;
    g.beginPath(); g.moveTo(x, top); g.lineTo(x, bottom); g.stroke();
    out.gaps += 1;
  }
  g.setLineDash([]);
  // the series: broken across segments and silences
  g.strokeStyle = s.hasP ? "#4fc3f7" : "#b388ff";
  g.lineWidth = big ? 2 : 1.6;
  g.lineJoin = "round";
  g.beginPath();
  let prev = null;
  for (const p of pts) {
    const v = p[vi];
    if (v === null) { prev = null; continue; }
    const x = X(p[0]), y = Y(v);
    if (prev && prev[4] === p[4] && p[0] - prev[0] <= 3 * ui.cfg.tick_s + 0.5) g.lineTo(x, y);
    else { g.moveTo(x, y); g.rect(x - 0.75, y - 0.75, 1.5, 1.5); }
    prev = p;
    out.points += 1;
    out.lastT = p[0];
  }
  g.stroke();
  // windows flagged for repeated frames: amber ticks on the floor
  g.fillStyle = "#f5b942";
  for (const p of pts) {
    if (!p[3]) continue;
    const x = X(p[0]);
    g.beginPath(); g.moveTo(x - 3, h); g.lineTo(x + 3, h); g.lineTo(x, h - 6); g.closePath(); g.fill();
    out.flagged += 1;
  }
  if (big) {
    g.fillStyle = "#7d8ca0";
    g.font = "10px system-ui, sans-serif";
    g.textAlign = "right";
    const ticks = s.hasP ? [0, 0.5, 1] : [lo, (lo + hi) / 2, hi];
    for (const v of ticks) g.fillText(s.hasP ? v.toFixed(1) : v.toFixed(0) + "°", left - 4, Y(v) + 3);
    g.textAlign = "center";
    const fmt = { hour: "2-digit", minute: "2-digit", hour12: false };
    if (step < 60) fmt.second = "2-digit";
    for (let t = Math.ceil(t0 / step) * step; t < t1; t += step) {
      if (t1 - t >= step * 0.7) g.fillText(new Date(t * 1000).toLocaleTimeString([], fmt), X(t), h - 4);
    }
    g.textAlign = "right";
    g.fillText("now", right, h - 4);
  }
  canvas.hoverView = { pts, left, right, t0, t1, hasP: s.hasP };  // for the hover readout
  return out;
}

// hover readout on any timeline: the time under the pointer and the nearest point's value
const hover = document.createElement("div");
hover.id = "hover";
hover.className = "hover";
hover.hidden = true;
document.body.append(hover);
document.addEventListener("mousemove", (e) => {
  const c = e.target;
  const v = c instanceof HTMLCanvasElement ? c.hoverView : null;
  if (!v || !v.pts.length) { hover.hidden = true; return; }
  const x = e.clientX - c.getBoundingClientRect().left;
  if (x < v.left || x > v.right) { hover.hidden = true; return; }
  const t = v.t0 + ((x - v.left) / (v.right - v.left)) * (v.t1 - v.t0);
  let best = v.pts[0];
  for (const p of v.pts) if (Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
  const val = v.hasP ? (best[1] === null ? "–" : `P(AI) ${(best[1] * 100).toFixed(1)}%`)
    : (best[2] === null ? "–" : `curvature ${best[2].toFixed(1)}°`);
  hover.textContent = `${clock(best[0])} · ${val}`;
  hover.hidden = false;
  // beside the pointer, inside the window
  hover.style.left = Math.min(e.clientX + 12, window.innerWidth - hover.offsetWidth - 4) + "px";
  hover.style.top = e.clientY + 12 + "px";
});

// --- one stream --------------------------------------------------------------------------
let detailBusy = false;
function openDetail(id) {
  if (!id) return;
  ui.selected = id;
  $("detail").hidden = false;
  $("dMsg").textContent = "";
  render();
  refreshDetail();
}
$("dClose").addEventListener("click", () => { ui.selected = null; $("detail").hidden = true; render(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("dClose").click(); });

// images and clips: fetched with the token in the header, shown from blob: URLs (no token
// in any URL; the server answers them with Cache-Control: no-store)
async function blobUrl(path) {
  const r = await fetch(path, { headers: auth(), cache: "no-store" });
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  return URL.createObjectURL(await r.blob());
}
function setBlob(el, url) {
  if (el.dataset.blob) URL.revokeObjectURL(el.dataset.blob);
  el.dataset.blob = url;
  el.src = url;
}
async function refreshThumb(id) {
  if (!ui.cfg.thumbnails) { $("dThumb").hidden = true; return; }  // serve.ui.thumbnails: false
  try {
    const url = await blobUrl("/streams/" + encodeURIComponent(id) + "/thumbnail");
    if (ui.selected !== id) { URL.revokeObjectURL(url); return; }
    setBlob($("dThumb"), url);
    $("dThumb").hidden = false;
  } catch (e) {
    $("dThumb").hidden = true;  // no frame sampled yet
  }
}

async function showEvidence(eid) {
  $("evView").hidden = false;
  $("evTitle").textContent = "loading " + eid + "…";
  try {
    const r = await fetch("/evidence/" + encodeURIComponent(eid), { headers: auth(), cache: "no-store" });
    if (!r.ok) {
      $("evTitle").textContent = r.status === 404 ? eid + ": not written (yet, or dropped)" : `HTTP ${r.status}`;
      return;
    }
    const rec = await r.json();
    setBlob($("evSheet"), await blobUrl(rec.urls.sheet));
    setBlob($("evClip"), await blobUrl(rec.urls.clip));
    const sc = rec.score;
    $("evTitle").textContent = `${rec.stream} · ${rec.reason} · P(AI) ${sc.p_ai === null ? "–" : (sc.p_ai * 100).toFixed(1) + "%"}`
      + ` · ${clock(sc.wall_end)} · window #${sc.seq}, ${rec.frames.filter((f) => f.repeated).length} repeated`;
    const body = $("evFeatures").tBodies[0];
    body.replaceChildren();
    rec.feature_names.forEach((n, i) => {
      const tr = body.insertRow();
      const a = tr.insertCell(); a.className = "n"; a.textContent = n;
      const b = tr.insertCell(); b.className = "v"; b.textContent = Number(sc.features[i]).toPrecision(4);
    });
    ui.evidence = rec.id;
  } catch (e) {
    $("evTitle").textContent = eid + ": " + e;
  }
}

// --- the event log: alerts, changes and acknowledgements across streams, newest first ---
let eventsBusy = false;
let eventsAgain = false; // asked for while a refresh was in flight (e.g. the filter changed)
function describe(e) {
  if (e.kind === "alert_start") return `alert, P(AI) ${(Number(e.p_ai) * 100).toFixed(0)}%`;
  if (e.kind === "alert_end") return "alert ended" + (e.reason ? ` (${e.reason})` : "");
  if (e.kind === "control") return `${e.action} by ${e.by}`;
  if (e.kind === "acknowledged") return `acknowledged by ${e.by}`;
  if (e.kind === "state") {
    return e.state + (e.reason ? ` (${e.reason})` : "")
      + (e.suppressed ? ` · ${e.suppressed} earlier changes not logged` : "");
  }
  return e.kind;
}
async function refreshEvents() {
  if (eventsBusy) { eventsAgain = true; return; }
  eventsBusy = true;
  eventsAgain = false;
  try {
    // the server filters by kind, so a burst of state changes cannot push alerts out
    const kind = $("eKind").value;
    const q = "/events?limit=100" + (kind ? "&kind=" + kind : "");
    const r = await fetch(q, { headers: auth(), cache: "no-store" });
    if (!r.ok) { $("eMsg").textContent = `events: HTTP ${r.status}`; return; }
    $("eMsg").textContent = "";
    const events = (await r.json()).events.sort((a, b) => b.at - a.at).slice(0, 100);
    const list = $("eList");
    const key = kind + ":" + events.map((e) => e.n).join();
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    const acked = new Map(events.filter((e) => e.kind === "acknowledged").map((e) => [e.evidence, e.by]));
    list.replaceChildren();
    for (const e of events) {
      const li = document.createElement("li");
      li.className = e.kind;
      li.dataset.kind = e.kind;
      const b = document.createElement("b");
      b.textContent = e.stream;
      li.append(clock(e.at) + " ", b, " " + describe(e));
      if (e.kind === "alert_start" && e.evidence) {
        li.dataset.evidence = e.evidence;
        const open = document.createElement("button");
        open.type = "button"; open.className = "ev-open"; open.textContent = "evidence";
        open.addEventListener("click", () => { $("events").hidden = true; openDetail(e.stream); showEvidence(e.evidence); });
        li.append(open);
        if (acked.has(e.evidence)) {
          const s = document.createElement("span");
          s.className = "acked"; s.textContent = "acknowledged by " + acked.get(e.evidence);
          li.append(s);
        } else {
          const ack = document.createElement("button");
          ack.type = "button"; ack.className = "ev-ack"; ack.textContent = "acknowledge";
          ack.addEventListener("click", () => acknowledge(e.evidence));
          li.append(ack);
        }
      }
      list.append(li);
    }
    if (!events.length) list.textContent = "no events yet";
  } catch (err) {
    $("eMsg").textContent = "events: " + err;
  } finally {
    eventsBusy = false;
    if (eventsAgain) refreshEvents();
  }
}
async function acknowledge(eid) {
  const r = await fetch("/evidence/" + encodeURIComponent(eid) + "/ack", { method: "POST", headers: auth() });
  await r.text();  // read to the end (the answer: who and when, shown by the next refresh)
  $("eMsg").textContent = r.ok ? "" : (r.status === 403 ? "acknowledging needs an operator token" : `acknowledge: HTTP ${r.status}`);
  refreshEvents();
}
// --- add a stream through the control API (POST /streams; an operator token) ------------
$("addBtn").addEventListener("click", () => {
  $("addForm").hidden = !$("addForm").hidden;
  if (!$("addForm").hidden) $("addId").focus();
});
$("addForm").addEventListener("submit", async (ev) => {
  ev.preventDefault();  // never a form submission: the token goes in a header
  const body = { id: $("addId").value.trim(), url: $("addUrl").value.trim() };
  $("addMsg").textContent = "adding " + body.id + "…";
  try {
    const r = await fetch("/streams", {
      method: "POST", headers: { ...auth(), "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const d = await r.json().catch(() => ({}));
    $("addMsg").textContent = r.ok ? `${body.id}: ${d.outcome}`
      : `HTTP ${r.status}: ${d.error ? d.error.message : "refused"}`;
    if (r.ok) { $("addId").value = ""; $("addUrl").value = ""; }
  } catch (err) {
    $("addMsg").textContent = String(err);
  }
});

$("eventsBtn").addEventListener("click", () => {
  $("events").hidden = !$("events").hidden;
  if (!$("events").hidden) { $("dClose").click(); refreshEvents(); }
});
$("eClose").addEventListener("click", () => { $("events").hidden = true; });
$("eKind").addEventListener("change", refreshEvents);

async function refreshDetail() {
  const id = ui.selected;
  if (!id || detailBusy) return;
  detailBusy = true;
  refreshThumb(id);
  try {
    const r = await fetch("/ui/streams/" + encodeURIComponent(id), { headers: auth(), cache: "no-store" });
    if (r.status === 404) { $("dMsg").textContent = "this stream is gone"; return; }
    if (!r.ok) return;
    const d = await r.json();
    if (ui.selected === id) showDetail(d);
  } catch (e) {
    /* the next update retries */
  } finally {
    detailBusy = false;
  }
}

function showDetail(d) {
  const s = ui.streams.get(d.id) || blank(d.id);
  const st = d.status || {};
  $("dId").textContent = d.id;
  const sub = [st.state, st.yielding ? "yielding (overload)" : "", st.kind, st.url]
    .filter(Boolean).join(" · ");
  $("dSub").textContent = sub + (st.error ? "  —  " + st.error.code + ": " + st.error.message : "");
  $("dPause").disabled = st.state === "paused";
  $("dResume").disabled = st.state !== "paused";
  const view = Object.assign({}, s, { points: d.points, alerts: d.alerts, marks: d.marks });
  view.hasP = d.points.some((p) => p[1] !== null);
  drawTimeline($("dCanvas"), view, true);
  const L = d.latest;
  $("dP").textContent = L && L.p_ai !== null ? (L.p_ai * 100).toFixed(1) + "%" : "–";
  $("dC").textContent = L ? L.features.theta_mean.toFixed(2) + "°" : "–";
  $("dW").textContent = st.windows_scored ?? "–";
  $("dR").textContent = st.reconnects ?? "–";
  $("dWin").textContent = L
    ? `#${L.seq}, ${ago(L.at)}` + (L.flagged ? ", flagged: repeated frames" : "")
    : "(none yet)";
  const body = $("dFeatures").tBodies[0];
  body.replaceChildren();
  if (L) {
    const names = Object.keys(L.features);
    const dMax = Math.max(1e-12, ...names.filter((n) => n.startsWith("d_") && n !== "d_var")
      .map((n) => Math.abs(L.features[n])));
    for (const n of names) {
      const v = L.features[n];
      const tr = body.insertRow();
      const a = tr.insertCell(); a.className = "n"; a.textContent = n;
      const b = tr.insertCell(); b.className = "v"; b.textContent = v === null ? "–" : Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : v.toFixed(3);
      const c = tr.insertCell();
      const bar = document.createElement("div");
      const theta = n.startsWith("theta");
      bar.className = "bar" + (theta ? " theta" : "");
      const scale = theta ? (n === "theta_var" ? null : 180) : (n === "d_var" ? null : dMax);
      bar.style.width = scale && v !== null ? Math.min(100, (Math.abs(v) / scale) * 100) + "%" : "0";
      c.append(bar);
    }
  }
  const gaps = Object.entries(st.gaps || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  $("dGaps").textContent = "gaps: " + (gaps || "none") + " · frames " + (st.frames ?? 0)
    + ", dropped " + (st.frames_dropped ?? 0) + " · alerts " + d.alerts.length;
  const ev = $("dEvidence");
  const kept = d.alerts.filter((a) => a[2]).sort((a, b) => b[0] - a[0]);
  if (ev.dataset.ids !== kept.map((a) => a[2]).join()) {  // rebuilt only when it changes
    ev.dataset.ids = kept.map((a) => a[2]).join();
    ev.replaceChildren();
    for (const a of kept) {
      const li = document.createElement("li");
      const btn = document.createElement("button");
      btn.type = "button";
      btn.dataset.evidence = a[2];
      btn.textContent = `alert at ${clock(a[0])}` + (a[1] === null ? " (active)" : "");
      btn.addEventListener("click", () => showEvidence(a[2]));
      li.append(btn);
      ev.append(li);
    }
    if (!kept.length) ev.textContent = "none";
  }
  const hist = $("dHistory");
  hist.replaceChildren();
  const items = [
    ...(st.history || []).map((h) => [h.at, "state", h.state]),
    ...d.alerts.map((a) => [a[0], "alert", a[1] === null ? "alert (active)" : `alert for ${Math.round(a[1] - a[0])} s`]),
  ].sort((a, b) => b[0] - a[0]).slice(0, 40);
  for (const [t, kind, what] of items) {
    const li = document.createElement("li");
    const b = document.createElement("b");
    b.textContent = what;
    li.append(clock(t) + "  ", b, kind === "alert" ? "" : "");
    hist.append(li);
  }
}

async function control(action) {
  const id = ui.selected;
  if (!id) return;
  if (action === "remove" && !confirm(`Remove stream ${id}? It stops and is forgotten.`)) return;
  const url = "/streams/" + encodeURIComponent(id) + (action === "remove" ? "" : "/" + action);
  $("dMsg").textContent = action + "…";
  try {
    const r = await fetch(url, { method: action === "remove" ? "DELETE" : "POST", headers: auth() });
    $("dMsg").textContent = r.ok ? action + ": done" : `${action}: HTTP ${r.status}`;
    if (r.ok && action === "remove") $("dClose").click();
    else refreshDetail();
  } catch (e) {
    $("dMsg").textContent = action + ": " + e;
  }
}
$("dPause").addEventListener("click", () => control("pause"));
$("dResume").addEventListener("click", () => control("resume"));
$("dRemove").addEventListener("click", () => control("remove"));

// between updates, keep the time axis moving on screen
setInterval(() => { if (ui.conn === "live") render(); }, 1000);

takeToken();
connect();  // without a token too: the service says whether it has one (see connect)
