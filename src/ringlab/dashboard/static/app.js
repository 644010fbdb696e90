// Ringlab dashboard: plain JavaScript, no library, no build step. It reads the live view from
// /api/live (server-sent events), a VM's console from /api/vms/NAME/console, and acts through
// /api/vms. Everything it shows comes from the hypervisor's API (docs/dashboard.md).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#1d4ed8", "#b91c1c", "#047857", "#7c3aed", "#c2410c", "#0e7490", "#be185d",
  "#4d7c0f", "#92400e", "#334155"];
const ACTIVE = new Set(["runnable", "running", "blocked"]);
const ENDED = new Set(["stopped", "poweroff", "halted", "shutdown", "limit"]);
const CONSOLE_KEEP = 100000;

const state = {
  session: null,
  view: null,          // the last view from /api/live
  slices: [],          // slices kept for the timeline (the server sends each once)
  clockSkew: 0,        // server time - this browser's time
  techniques: new Set(),
  consoleVm: null,
  consoleCursor: "",
  consoleTimer: null,
  source: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function colour(id) {
  const n = parseInt(id, 10);
  if (!Number.isNaN(n)) return PALETTE[n % PALETTE.length];
  let h = 0;
  for (const ch of String(id)) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

function count(n) {
  if (n < 10000) return String(n);
  for (const [scale, unit] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (n >= scale) {
      const v = n / scale;
      return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + unit;
    }
  }
  return String(n);
}

function rate(r) { return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2); }

function say(text, kind, from) {
  const box = $("message");
  box.dataset.from = from || "";  // "live": the live view's own error, cleared when it clears
  if (!text) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = text;
  box.className = kind || "";
  box.hidden = false;
}

// -- calls --------------------------------------------------------------------------------------
async function api(method, path, body) {
  const init = { method, headers: { "X-Ringlab-Request": "1" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error("the dashboard does not answer (" + err.message + ")");
  }
  let doc = null;
  try { doc = await response.json(); } catch (_) { doc = null; }
  if (response.status === 401) { showLogin(); }
  if (!response.ok) throw new Error((doc && doc.error) || ("HTTP " + response.status));
  return doc;
}

// -- login --------------------------------------------------------------------------------------
function showLogin() {
  if (state.source) { state.source.close(); state.source = null; }
  $("board").hidden = true;
  $("login").hidden = false;
  $("live-status").dataset.state = "connecting";
  $("live-status").textContent = "log in";
  $("login-token").focus();
}

async function login(event) {
  event.preventDefault();
  try {
    await api("POST", "/api/login", { token: $("login-token").value });
    $("login-token").value = "";
    say("");
    await start();
  } catch (err) {
    say(err.message);
  }
}

async function logout() {
  try { await api("POST", "/api/logout", {}); } catch (_) { /* shown by the login */ }
  stopConsole();
  showLogin();
}

// -- start --------------------------------------------------------------------------------------
async function start() {
  let session;
  try {
    session = await api("GET", "/api/session");
  } catch (err) {
    say(err.message);
    setTimeout(start, 2000);
    return;
  }
  state.session = session;
  $("target").textContent = "hypervisor " + session.target;
  $("logout").hidden = !session.auth_required;
  if (session.auth_required && !session.authenticated) { showLogin(); return; }
  $("login").hidden = true;
  $("board").hidden = false;
  fillForm(session);
  connect();
}

function fillForm(session) {
  const technique = $("create-technique");
  if (technique.options.length) return;
  for (const t of session.techniques) technique.append(el("option", { value: t }, t));
  technique.value = "bt";
  const workload = $("create-workload");
  for (const [name, description] of Object.entries(session.workloads)) {
    workload.append(el("option", { value: name, title: description }, name));
  }
  workload.value = "hello";
  const kernel = $("create-kernel");
  for (const k of session.kernels) kernel.append(el("option", { value: k }, k));
  for (const t of session.techniques) state.techniques.add(t);
  $("create-np").disabled = true;
  drawFilter();
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource("/api/live");
  state.source = source;
  state.slices = [];
  source.onmessage = (message) => {
    const view = JSON.parse(message.data);
    receive(view);
  };
  source.onerror = () => {
    $("live-status").dataset.state = "error";
    $("live-status").textContent = "reconnecting";
    if (source.readyState === EventSource.CLOSED) {
      state.source = null;
      setTimeout(start, 2000);  // logged out, or the dashboard restarted
    }
  };
}

function receive(view) {
  state.view = view;
  state.clockSkew = view.time - Date.now() / 1000;
  for (const s of view.slices) state.slices.push(s);
  const keep = view.time - view.window;
  while (state.slices.length && state.slices[0].end < keep) state.slices.shift();
  const status = $("live-status");
  if (view.error) {
    status.dataset.state = "error";
    status.textContent = "hypervisor error";
    say(view.error, "", "live");
  } else {
    status.dataset.state = "live";
    status.textContent = "live";
    if (view.events_error) say("event stream: " + view.events_error, "", "live");
    else if ($("message").dataset.from === "live") say("");
  }
  drawVms(view);
  drawExits(view);
  drawTimeline();
  document.body.dataset.live = "1";
}

// -- VMs ----------------------------------------------------------------------------------------
function drawVms(view) {
  const body = $("vms").querySelector("tbody");
  const rows = new Map([...body.children].map((tr) => [tr.dataset.vm, tr]));
  const seen = new Set();
  for (const vm of view.vms) {
    seen.add(vm.name);
    let tr = rows.get(vm.name);
    const key = [vm.status, vm.technique, vm.kernel].join("/");
    if (!tr || tr.dataset.key !== key) {
      const fresh = vmRow(vm);
      if (tr) tr.replaceWith(fresh); else body.append(fresh);
      tr = fresh;
    }
    updateRow(tr, vm);
  }
  for (const [name, tr] of rows) if (!seen.has(name)) tr.remove();
  $("no-vms").hidden = view.vms.length > 0;
  const alive = view.pcpus.filter((p) => p.alive).length;
  $("pcpus").textContent = `${view.vms.length} VM(s) on ${alive} pCPU(s)`;
}

function vmRow(vm) {
  const actions = el("td", { class: "actions" });
  const act = (label, action, cls) => el("button", {
    type: "button", class: cls || "", dataset: { action }, onclick: () => vmAction(vm.name, action),
  }, label);
  if (vm.status === "paused") actions.append(act("resume", "resume"));
  else if (ACTIVE.has(vm.status)) actions.append(act("pause", "pause"), act("stop", "stop"));
  else actions.append(act(vm.status === "created" ? "start" : "restart", "start"));
  const destroy = el("button", { type: "button", class: "danger", dataset: { action: "destroy" } }, "destroy");
  destroy.addEventListener("click", () => armDestroy(destroy, vm.name));
  actions.append(el("button", {
    type: "button", dataset: { action: "console" }, onclick: () => openConsole(vm.name),
  }, "console"), destroy);
  const technique = vm.technique + (vm.nested_paging ? "+np" : "");
  return el("tr", { dataset: { vm: vm.name, key: [vm.status, vm.technique, vm.kernel].join("/") } },
    el("td", { class: "vm-name" }, el("span", { class: "swatch", dataset: { swatch: vm.id } }), vm.name),
    el("td", {}, technique), el("td", {}, vm.kernel), el("td", {}, vm.workload),
    el("td", { class: "status" }, el("span", { class: "state", dataset: { status: vm.status } }, stateText(vm))),
    el("td", { class: "num share-cell" }), el("td", { class: "num credit" }),
    el("td", { class: "num rate" }), el("td", { class: "num exits" }), actions);
}

function stateText(vm) {
  return vm.status + (vm.code === null || vm.code === undefined ? "" : " " + vm.code);
}

function updateRow(tr, vm) {
  tr.querySelector(".swatch").style.background = colour(vm.id);
  tr.querySelector(".state").title = vm.detail || "";
  const share = tr.querySelector(".share-cell");
  share.replaceChildren(el("span", { class: "share" }, el("span")), (vm.cpu_share * 100).toFixed(1) + "%");
  share.querySelector(".share > span").style.width = Math.min(100, vm.cpu_share * 100).toFixed(1) + "%";
  const credit = vm.credit * 1000;
  tr.querySelector(".credit").textContent = (credit >= 0 ? "+" : "") + credit.toFixed(1) + " ms";
  tr.querySelector(".rate").textContent = rate(vm.exits_per_s || 0);
  tr.querySelector(".exits").textContent = count(vm.exits);
  tr.title = `${vm.name} (id ${vm.id}): ${count(vm.retired)} instructions, ${count(vm.slices)} slices, weight ${vm.weight}`;
}

function armDestroy(button, name) {
  if (button.classList.contains("armed")) {
    button.classList.remove("armed");
    vmAction(name, "destroy");
    return;
  }
  button.classList.add("armed");
  button.textContent = "sure?";
  setTimeout(() => { button.classList.remove("armed"); button.textContent = "destroy"; }, 4000);
}

async function vmAction(name, action) {
  try {
    if (action === "destroy") {
      await api("DELETE", "/api/vms/" + encodeURIComponent(name));
      if (state.consoleVm === name) $("console-name").textContent = name + " (destroyed)";
      say(`VM ${name} destroyed`, "info");
    } else {
      const vm = await api("POST", `/api/vms/${encodeURIComponent(name)}/${action}`);
      say(`VM ${name}: ${vm.status}`, "info");
      if (action === "start") openConsole(name);
    }
  } catch (err) {
    say(err.message);
  }
}

async function createVm(event) {
  event.preventDefault();
  const body = {
    name: $("create-name").value.trim(),
    technique: $("create-technique").value,
    workload: $("create-workload").value,
    kernel: $("create-kernel").value,
    weight: parseInt($("create-weight").value, 10) || 256,
    nested_paging: $("create-np").checked,
    start: true,
  };
  const iterations = $("create-iterations").value.trim();
  if (iterations) body.iterations = parseInt(iterations, 10);
  const button = $("create-submit");
  button.disabled = true;
  try {
    const vm = await api("POST", "/api/vms", body);
    say(`VM ${vm.name} created (${vm.technique}, ${vm.kernel} kernel, ${vm.workload}): ${vm.status}`, "info");
    $("create-name").value = "";
    openConsole(vm.name);
  } catch (err) {
    say(err.message);
  } finally {
    button.disabled = false;
  }
}

// -- console ------------------------------------------------------------------------------------
function openConsole(name) {
  stopConsole();
  state.consoleVm = name;
  state.consoleCursor = "";
  $("console-name").textContent = name;
  $("console-output").textContent = "";
  pollConsole();
}

function stopConsole() {
  if (state.consoleTimer) clearTimeout(state.consoleTimer);
  state.consoleTimer = null;
  state.consoleVm = null;
}

async function pollConsole() {
  const name = state.consoleVm;
  if (!name) return;
  let next = 700;
  try {
    const query = state.consoleCursor ? "?after=" + encodeURIComponent(state.consoleCursor) : "";
    const doc = await api("GET", `/api/vms/${encodeURIComponent(name)}/console${query}`);
    if (state.consoleVm !== name) return;
    if (doc.data) {
      const out = $("console-output");
      const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      let text = out.textContent + doc.data;
      if (text.length > CONSOLE_KEEP) text = text.slice(text.length - CONSOLE_KEEP);
      out.textContent = text;
      if (atEnd) out.scrollTop = out.scrollHeight;
      next = 100;  // more may be waiting
    }
    state.consoleCursor = doc.cursor;
  } catch (err) {
    if (state.consoleVm !== name) return;
    $("console-name").textContent = `${name} (${err.message})`;
    next = 3000;
  }
  if (state.consoleVm === name) state.consoleTimer = setTimeout(pollConsole, next);
}

// -- exits by reason ----------------------------------------------------------------------------
function drawFilter() {
  const box = $("technique-filter");
  box.replaceChildren();
  for (const t of state.session.techniques) {
    const on = state.techniques.has(t);
    box.append(el("button", {
      type: "button", "aria-pressed": on ? "true" : "false", dataset: { technique: t },
      onclick: () => {
        if (state.techniques.has(t)) state.techniques.delete(t); else state.techniques.add(t);
        drawFilter();
        if (state.view) drawExits(state.view);
      },
    }, t));
  }
}

function drawExits(view) {
  const box = $("exits");
  box.replaceChildren();
  const shown = state.session.techniques.filter((t) => state.techniques.has(t));
  for (const t of shown) {
    const vms = view.vms.filter((vm) => vm.technique === t);
    if (!vms.length) continue;
    const column = el("div", { class: "technique-column", dataset: { technique: t } }, el("h3", {}, t));
    for (const vm of vms) column.append(exitCard(vm));
    box.append(column);
  }
  if (!box.children.length) {
    box.append(el("p", { class: "muted" }, "No VM under the techniques chosen above."));
  }
}

function exitCard(vm) {
  const total = vm.exits || 0;
  const rates = vm.rates_by_reason || {};
  const reasons = Object.entries(vm.exits_by_reason)
    .sort((a, b) => (rates[b[0]] || 0) - (rates[a[0]] || 0) || b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, 8);
  const table = el("table", {}, el("thead", {}, el("tr", {},
    el("th", {}, "event"), el("th", { class: "num" }, "total"), el("th", { class: "num" }, "%"),
    el("th", { class: "num" }, "/s"))));
  const body = el("tbody");
  for (const [reason, n] of reasons) {
    body.append(el("tr", { dataset: { reason } }, el("td", {}, reason), el("td", { class: "num" }, count(n)),
      el("td", { class: "num" }, total ? (n * 100 / total).toFixed(0) : "0"),
      el("td", { class: "num" }, rate(rates[reason] || 0))));
  }
  if (!reasons.length) body.append(el("tr", {}, el("td", { colspan: "4", class: "muted" }, "no exit yet")));
  table.append(body);
  const swatch = el("span", { class: "swatch" });
  swatch.style.background = colour(vm.id);
  return el("div", { class: "card", dataset: { vm: vm.name } },
    el("h4", {}, swatch, `${vm.name} `, el("span", { class: "muted" }, `${vm.workload}, ${rate(vm.exits_per_s || 0)} exits/s`)),
    table);
}

// -- timeline -----------------------------------------------------------------------------------
const ROW = 26;
const LEFT = 130;

function drawTimeline() {
  const view = state.view;
  if (!view) return;
  const chart = $("timeline");
  const width = Math.max(400, chart.clientWidth || chart.parentNode.clientWidth || 900);
  const span = parseInt($("timeline-span").value, 10);
  const now = Date.now() / 1000 + state.clockSkew;
  const t0 = now - span;
  const x = (t) => LEFT + ((t - t0) / span) * (width - LEFT - 10);
  const pcpus = view.pcpus.map((p) => p.pcpu);
  for (const s of state.slices) if (s.pcpu && !pcpus.includes(s.pcpu)) pcpus.push(s.pcpu);
  const names = new Map(view.vms.map((vm) => [vm.id, vm.name]));
  const vms = view.vms.slice().sort((a, b) => (parseInt(a.id, 10) - parseInt(b.id, 10)) || a.name.localeCompare(b.name));
  const height = 24 + (pcpus.length + vms.length) * ROW + 34;
  chart.setAttribute("height", String(height));
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const nodes = [];
  // the axis: a line every few seconds, labelled in seconds ago
  const step = span <= 10 ? 1 : span <= 30 ? 5 : 10;
  for (let ago = 0; ago <= span; ago += step) {
    const gx = x(now - ago);
    nodes.push(svg("line", { class: "grid", x1: gx, x2: gx, y1: 18, y2: height - 16 }));
    nodes.push(svg("text", { class: "axis", x: gx, y: height - 2, "text-anchor": "middle" }, ago ? `-${ago}s` : "now"));
  }
  let y = 18;
  nodes.push(svg("text", { class: "heading", x: 4, y: y - 4 }, "pCPUs"));
  const bar = (group, s, top, open, label) => {
    const start = Math.max(s.start, t0);
    const end = open ? now : s.end;
    if (end < t0) return;
    const bx = x(start);
    const bw = Math.max(2, x(end) - bx);
    const name = names.get(s.vm) || s.vm;
    const rect = svg("rect", {
      class: "slice" + (open ? " open" : ""), x: bx, y: top + 3, width: bw, height: ROW - 8,
      fill: colour(s.vm), rx: 2, "data-vm": name,
    });
    const exits = s.exits ? Object.entries(s.exits) : [];
    const total = exits.reduce((sum, [, n]) => sum + n, 0);
    const what = open ? "running now" : `${((s.end - s.start) * 1000).toFixed(1)} ms, ended: ${s.how}`;
    rect.append(svg("title", {}, `${name} on ${s.pcpu}: ${what}` +
      (total ? `; exits: ${exits.map(([r, n]) => `${r} x${n}`).join(", ")}` : "; no exit")));
    group.append(rect);
    if (label && bw > 8 * name.length + 8) {
      group.append(svg("text", { class: "on-bar", x: bx + 4, y: top + ROW / 2 + 4 }, name));
    }
    if (total) {  // the slice's exits: one tick each, as many as fit
      const marks = Math.min(total, Math.floor(bw / 3));
      for (let i = 0; i < marks; i++) {
        const mx = bx + ((i + 0.5) * bw) / marks;
        group.append(svg("line", { class: "exit", x1: mx, x2: mx, y1: top, y2: top + 6 }));
      }
    }
  };
  for (const pcpu of pcpus) {
    const g = svg("g", { class: "lane", "data-pcpu": pcpu });
    g.append(svg("rect", { class: "lane-back", x: LEFT, y, width: width - LEFT - 10, height: ROW - 2 }));
    g.append(svg("text", { x: 4, y: y + ROW / 2 + 4 }, pcpu.length > 16 ? pcpu.slice(0, 15) + "…" : pcpu));
    for (const s of state.slices) if (s.pcpu === pcpu) bar(g, s, y, false, true);
    for (const r of view.running) if (r.pcpu === pcpu) bar(g, { ...r, end: now, how: "" }, y, true, true);
    nodes.push(g);
    y += ROW;
  }
  y += 6;
  nodes.push(svg("text", { class: "heading", x: 4, y: y + 8 }, "VMs"));
  y += 12;
  for (const vm of vms) {
    const g = svg("g", { class: "vm-row", "data-vm": vm.name });
    g.append(svg("rect", { class: "lane-back", x: LEFT, y, width: width - LEFT - 10, height: ROW - 2 }));
    const label = svg("text", { x: 4, y: y + ROW / 2 + 4 }, vm.name.length > 14 ? vm.name.slice(0, 13) + "…" : vm.name);
    label.style.fill = colour(vm.id);
    g.append(label);
    for (const s of state.slices) if (s.vm === vm.id) bar(g, s, y, false, false);
    for (const r of view.running) if (r.vm === vm.id) bar(g, { ...r, end: now, how: "" }, y, true, false);
    nodes.push(g);
    y += ROW;
  }
  chart.replaceChildren(...nodes);
}

// -- wiring -------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("create").addEventListener("submit", createVm);
  $("create-technique").addEventListener("change", () => {
    $("create-np").disabled = $("create-technique").value !== "hw";
    if ($("create-np").disabled) $("create-np").checked = false;
  });
  $("timeline-span").addEventListener("change", drawTimeline);
  setInterval(drawTimeline, 250);  // the timeline scrolls between updates
  start();
});
