// coord dashboard.  Plain browser JavaScript, no build step; charts by uPlot
// (vendored under /static/vendor/uplot with its licence).  Every value that
// comes from the tree (names, data) is inserted as text, never as HTML.
// What a view may show follows the server's ACL and admin rules; a refused
// call shows why and a "sign in" link (HTTP Basic at /login).
"use strict";

const $ = (sel) => document.querySelector(sel);

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

// An API call refused for want of permission (401/403) throws an Error
// whose .denied is true; the views then show the reason and a sign-in link.
async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error(body.error || `${r.status} ${r.statusText}`);
    err.denied = r.status === 401 || r.status === 403;
    throw err;
  }
  return body;
}

// ---------------------------------------------------------------- signing in
// HTTP Basic: /login makes the browser ask once, then it sends the
// credential with every request to this port (fetches and event streams).
let me = { user: null };

function signinLink() {
  const href = me.user ? `/login?not=${encodeURIComponent(me.user)}` : "/login";
  return h("a", { href, class: "signin" }, me.user ? "sign in as someone else" : "sign in");
}

// The message of a failed call, with a sign-in link when it was refused.
function failure(e) {
  return e.denied ? h("span", { class: "denied" }, e.message, " — ", signinLink()) : e.message;
}

async function refreshWhoami() {
  try {
    me = await getJSON("/api/whoami");
  } catch (e) {
    return;
  }
  const el = $("#signin");
  if (me.user) el.replaceChildren(`signed in as ${me.user}${me.superuser ? " (superuser)" : me.admin ? " (admin)" : ""} · `, signinLink());
  else el.replaceChildren(me.restricted ? signinLink() : "");
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());
const hex = (n) => "0x" + Number(n).toString(16);

// ---------------------------------------------------------------- ensemble
let lastEnsembleOk = 0;

async function refreshEnsemble() {
  let view;
  try {
    view = await getJSON("/api/ensemble");
  } catch (e) {
    if (e.denied) {  // the server answers, but not to us: the sign-in link is in the header
      lastEnsembleOk = Date.now();
      $("#live").classList.remove("stale");
      $("#whoami").replaceChildren(h("span", { class: "denied" }, e.message));
      $("#summary").textContent = "";
      $("#members tbody").replaceChildren();
      return;
    }
    $("#live").classList.add("stale");
    $("#whoami").textContent = "this server does not answer: " + e.message;
    return;
  }
  lastEnsembleOk = Date.now();
  $("#live").classList.remove("stale");
  $("#whoami").textContent = `server ${view.server_id} (this page)`;
  $("#summary").textContent = view.leader ? `leader: server ${view.leader} · term ${view.term}` : "no leader";
  $("#summary").className = view.leader ? "" : "health-bad";
  $("#config").textContent = `voters ${view.voters.join(", ")}` +
    (view.learners.length ? ` · learners ${view.learners.join(", ")}` : "") + ` · config at index ${view.config_index}`;
  const joint = $("#joint");
  joint.hidden = !view.joint;
  if (view.joint) joint.textContent =
    `Joint configuration in progress: old voters {${view.outgoing.join(", ")}} → new voters {${view.voters.join(", ")}}`;
  const maxLag = Math.max(1, ...view.members.map((m) => m.lag || 0));
  const rows = view.members.map((m) => {
    const isLeader = m.reachable && m.role === "leader" && m.id === view.leader;
    const lag = m.lag ?? 0;
    const lagCls = !m.reachable ? "bad" : lag > 1000 ? "bad" : lag > 100 ? "warn" : "";
    const width = m.reachable ? Math.max(lag ? 4 : 0, Math.round(100 * lag / maxLag)) : 100;
    const health = m.health || "unknown";
    const healthCls = health === "ok" ? "health-ok" : health === "lagging" ? "health-warn" : "health-bad";
    const link = m.http && !m.self ? h("a", { href: `${location.protocol}//${m.http}/` }, m.http) : (m.self ? "this page" : "–");
    return h("tr", { class: isLeader ? "leader" : "", "data-member": m.id, "data-role": m.reachable ? m.role : "unreachable" },
      h("td", {}, `server ${m.id}`),
      h("td", {}, m.reachable ? h("span", { class: `badge ${m.role}` }, m.role) : h("span", { class: "badge" }, "—")),
      h("td", {}, m.membership),
      h("td", { class: "num" }, fmt(m.term)),
      h("td", { class: "num" }, fmt(m.commit)),
      h("td", { class: "num" }, fmt(m.applied)),
      h("td", {}, h("span", { class: `lagbar ${lagCls}` }, h("span", { style: `width:${width}%` })),
        m.reachable ? `${fmt(lag)}` : ""),
      h("td", { class: healthCls }, health),
      h("td", { class: "num" }, fmt(m.sessions)),
      h("td", {}, link));
  });
  $("#members tbody").replaceChildren(...rows);
}

// ---------------------------------------------------------------- charts
const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const history = { t: [], commits: [], reads: [], writes: [], pw: [], pr: [], pf: [], sessions: [], conns: [], marks: [] };
let lastSampleT = 0;
let charts = [];

function leaderMarks() {
  return {
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx;
        ctx.save();
        ctx.strokeStyle = css("--mark");
        ctx.setLineDash([5, 4]);
        ctx.lineWidth = 1.5 * devicePixelRatio;
        for (const t of history.marks) {
          const x = u.valToPos(t, "x", true);
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
        }
        ctx.restore();
      }],
    },
  };
}

function makeChart(el, series, data) {
  const axis = { stroke: css("--muted"), grid: { stroke: css("--grid"), width: 1 }, ticks: { stroke: css("--grid") } };
  const opts = {
    width: Math.max(300, el.clientWidth), height: 200,
    // what the ring holds (at most the last ten minutes, at least one), the newest sample at the right edge
    scales: { x: { time: true, range: () => {
      const end = lastSampleT || Date.now() / 1000;
      const first = history.t.length ? history.t[0] : end;
      return [Math.max(end - 600, Math.min(first, end - 60)), end];
    } } },
    series: [{}, ...series.map((s) => ({ label: s.label, stroke: css(s.color), width: 1.5, spanGaps: false,
                                        points: { show: false },
                                        value: (u, v) => (v === null ? "–" : (+v).toFixed(s.digits ?? 1)) }))],
    axes: [axis, { ...axis, size: 55 }],
    plugins: [leaderMarks()],
    legend: { live: true },
  };
  return new uPlot(opts, data, el);
}

function chartData() {
  return [
    [history.t, history.commits, history.reads],
    [history.t, history.pw, history.pr, history.pf],
    [history.t, history.sessions, history.conns],
  ];
}

function buildCharts() {
  for (const c of charts) c.destroy();
  const d = chartData();
  charts = [
    makeChart($("#chart-rate"), [{ label: "writes/s (committed)", color: "--chart1" },
                                 { label: "reads/s (here)", color: "--chart2" }], d[0]),
    makeChart($("#chart-latency"), [{ label: "write p99", color: "--chart1", digits: 2 },
                                    { label: "read p99", color: "--chart2", digits: 2 },
                                    { label: "fsync p99", color: "--chart3", digits: 2 }], d[1]),
    makeChart($("#chart-sessions"), [{ label: "sessions", color: "--chart1", digits: 0 },
                                     { label: "connections (here)", color: "--chart2", digits: 0 }], d[2]),
  ];
}

async function refreshHistory() {
  let body;
  try {
    body = await getJSON(`/api/history?since=${lastSampleT}`);
  } catch (e) {
    return;
  }
  for (const s of body.samples) {
    history.t.push(s.t); history.commits.push(s.commits); history.reads.push(s.reads); history.writes.push(s.writes);
    history.pw.push(s.p99_write_ms); history.pr.push(s.p99_read_ms); history.pf.push(s.p99_fsync_ms);
    history.sessions.push(s.sessions); history.conns.push(s.connections);
    if (s.leader_changed) history.marks.push(s.t);
    lastSampleT = s.t;
  }
  const horizon = lastSampleT - 600;
  let drop = 0;
  while (drop < history.t.length && history.t[drop] < horizon) drop++;
  if (drop) for (const k of ["t", "commits", "reads", "writes", "pw", "pr", "pf", "sessions", "conns"]) history[k].splice(0, drop);
  history.marks = history.marks.filter((t) => t >= horizon);
  $("#charts-note").textContent = body.samples.length || history.t.length ? `(server ${body.server_id})` : "(collecting…)";
  const d = chartData();
  charts.forEach((c, i) => c.setData(d[i]));
}

// ---------------------------------------------------------------- tabs
for (const btn of document.querySelectorAll(".tabs button")) {
  btn.addEventListener("click", () => showTab(btn.dataset.tab));
}
let currentTab = "tree";
function showTab(name) {
  currentTab = name;
  for (const b of document.querySelectorAll(".tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${name}`;
  if (name === "sessions") loadSessions(true);
  if (name === "recipes") loadRecipes();
  if (name === "events" && !eventSource) followEvents($("#events-path").value);
}

// ---------------------------------------------------------------- tree
let treePath = "/";
let treeNext = null;
let treeSource = null;
let treeReload = null;

function joinPath(parent, name) { return parent === "/" ? "/" + name : parent + "/" + name; }

function renderCrumbs(path) {
  const parts = path.split("/").filter(Boolean);
  const crumbs = [h("a", { onclick: () => openNode("/") }, "/")];
  let acc = "";
  for (const p of parts) {
    acc += "/" + p;
    const target = acc;
    if (crumbs.length > 1) crumbs.push(" / ");
    crumbs.push(h("a", { onclick: () => openNode(target) }, p));
  }
  $("#crumbs").replaceChildren(...crumbs);
}

async function openNode(path, { keepChildren = false } = {}) {
  let node;
  try {
    node = await getJSON(`/api/node?path=${encodeURIComponent(path)}&limit=100`);
  } catch (e) {
    $("#data").replaceChildren(failure(e));
    $("#data").classList.toggle("is-denied", !!e.denied);
    $("#data-info").textContent = e.denied ? `${path}: no permission to read` : "";
    if (!keepChildren || e.denied) $("#children").replaceChildren();
    $("#child-count").textContent = "";
    $("#acl").textContent = "";
    $("#stat tbody").replaceChildren();
    if (e.denied) {  // show where we are, so the way back is one click
      if (treeSource) treeSource.close();
      treeSource = null;
      $("#tree-live").textContent = "";
      treePath = path;
      $("#tree-path").value = path;
      renderCrumbs(path);
      $("#children-more").hidden = true;
    }
    return;
  }
  $("#data").classList.remove("is-denied");
  const changed = path !== treePath;
  treePath = path;
  $("#tree-path").value = path;
  renderCrumbs(path);
  const d = node.data;
  $("#data-info").textContent = `${fmt(d.size)} bytes` + (d.encoding === "hex" ? " (binary, shown as hex)" : "") +
    (d.truncated ? " (preview)" : "");
  $("#data").textContent = d.encoding === "text" ? d.text : (d.hex.match(/.{1,32}/g) || []).map((l) => l.match(/.{1,2}/g).join(" ")).join("\n");
  const st = node.stat;
  const rows = Object.entries(st).map(([k, v]) => h("tr", {}, h("td", {}, k),
    h("td", {}, k === "ephemeral_owner" && v ? (st.kind === "ephemeral" ? hex(v) : `(${st.kind} marker)`)
      : (k.endsWith("time") && v ? `${v} (${new Date(v).toISOString()})` : String(v)))));
  $("#stat tbody").replaceChildren(...rows);
  $("#acl").textContent = (node.acl || []).join("\n");
  $("#child-count").textContent = `(${fmt(node.total_children)})`;
  $("#children").replaceChildren(...node.children.map(childItem));
  treeNext = node.next;
  $("#children-more").hidden = !treeNext;
  if (changed || !treeSource) watchNode(path);
}

function childItem(c) {
  return h("li", { "data-name": c.name, onclick: () => openNode(joinPath(treePath, c.name)) },
    h("span", {}, c.name + (c.num_children ? "/" : "")),
    h("span", { class: "meta" }, (c.kind && c.kind !== "persistent" ? `${c.kind} · ` : "") + `${fmt(c.data_length)} B` +
      (c.num_children ? ` · ${fmt(c.num_children)} children` : "")));
}

async function moreChildren() {
  if (!treeNext) return;
  const node = await getJSON(`/api/node?path=${encodeURIComponent(treePath)}&limit=100&after=${encodeURIComponent(treeNext)}`);
  $("#children").append(...node.children.map(childItem));
  treeNext = node.next;
  $("#children-more").hidden = !treeNext;
}

function watchNode(path) {
  // Live updates of the node being viewed: its own events (data, children, deletion).
  if (treeSource) treeSource.close();
  treeSource = new EventSource(`/api/events?path=${encodeURIComponent(path)}&recursive=0`);
  treeSource.addEventListener("change", () => {
    clearTimeout(treeReload);
    treeReload = setTimeout(() => openNode(treePath, { keepChildren: true }), 150);
  });
  treeSource.onopen = () => { $("#tree-live").textContent = "live"; };
  treeSource.onerror = () => { $("#tree-live").textContent = "reconnecting…"; };
}

$("#tree-form").addEventListener("submit", (e) => { e.preventDefault(); openNode($("#tree-path").value.trim() || "/"); });
$("#children-more").addEventListener("click", moreChildren);

// ---------------------------------------------------------------- sessions
let sessionsNext = null;

async function loadSessions(reset) {
  const after = reset ? 0 : sessionsNext;
  let body;
  try {
    body = await getJSON(`/api/sessions?after=${after || 0}&limit=100`);
  } catch (e) {
    if (reset) $("#sessions tbody").replaceChildren();
    $("#sessions-total").replaceChildren(failure(e));
    $("#sessions-more").hidden = true;
    return;
  }
  const rows = body.sessions.map((s) => h("tr", { "data-session": s.id },
    h("td", { class: "num" }, s.id), h("td", {}, s.client || "–"), h("td", {}, s.server ? `server ${s.server}` : "–"),
    h("td", { class: "num" }, `${(s.timeout_ms / 1000).toFixed(1)} s`),
    h("td", { title: s.ephemeral_paths.join("\n") }, `${s.ephemerals}` + (s.ephemerals ? ` (${s.ephemeral_paths.slice(0, 3).join(", ")}${s.ephemerals > 3 ? ", …" : ""})` : "")),
    h("td", { class: "num" }, s.watches ?? "–")));
  if (reset) $("#sessions tbody").replaceChildren(...rows); else $("#sessions tbody").append(...rows);
  sessionsNext = body.next;
  $("#sessions-more").hidden = !sessionsNext;
  $("#sessions-total").textContent = `${fmt(body.total)} sessions`;
}
$("#sessions-more").addEventListener("click", () => loadSessions(false));

// ---------------------------------------------------------------- locks & elections
async function loadRecipes() {
  let body;
  try {
    body = await getJSON("/api/recipes");
  } catch (e) {
    $("#recipes").replaceChildren(h("p", {}, failure(e)));
    return;
  }
  if (!body.recipes.length) {
    $("#recipes").replaceChildren(h("p", { class: "muted" }, "No locks, semaphores or elections in use (none of the recipes' ephemeral nodes exist)."));
    return;
  }
  $("#recipes").replaceChildren(...body.recipes.map((r) => h("div", { class: "recipe", "data-recipe": r.path },
    h("h3", {}, r.path, " ", h("span", { class: "badge" }, r.kind)),
    r.kind === "election" ? h("p", {}, "leader: ", h("b", {}, r.leader ?? "–")) : null,
    r.note ? h("p", { class: "muted" }, r.note) : null,
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["#", "state", "kind", "session", "who", "fencing token", "node"].map((c) => h("th", {}, c)))),
      h("tbody", {}, r.queue.map((q, i) => h("tr", {}, h("td", { class: "num" }, i + 1),
        h("td", { class: `state-${q.state}` }, q.state), h("td", {}, q.kind), h("td", { class: "num" }, q.session),
        h("td", {}, q.identity ?? ""), h("td", { class: "num" }, fmt(q.token)), h("td", {}, q.node))))),
    r.total > r.queue.length ? h("p", { class: "muted" }, `… ${r.total - r.queue.length} more`) : null)));
}

// ---------------------------------------------------------------- event stream
let eventSource = null;
let lastZxid = null;
const MAX_EVENT_ROWS = 500;

function followEvents(path) {
  if (eventSource) eventSource.close();
  $("#events tbody").replaceChildren();
  lastZxid = null;
  openStream(path);
}

function openStream(path) {
  // The browser resends the last id (zxid) by itself when it reconnects; if
  // the stream ends for good we reopen it from the last zxid we saw.
  const from = lastZxid !== null ? `&from=${lastZxid}` : "";
  const es = new EventSource(`/api/events?path=${encodeURIComponent(path)}${from}`);
  eventSource = es;
  es.addEventListener("hello", (e) => {
    const d = JSON.parse(e.data);
    $("#events-state").textContent = `following ${d.path} from zxid ${lastZxid ?? d.zxid}`;
    if (lastZxid === null) lastZxid = d.zxid;
  });
  es.addEventListener("change", (e) => {
    const d = JSON.parse(e.data);
    lastZxid = d.zxid;
    const body = $("#events tbody");
    for (const ev of d.events) {
      body.prepend(h("tr", { class: "fresh", "data-path": ev.path },
        h("td", { class: "num" }, d.zxid), h("td", {}, new Date().toLocaleTimeString()),
        h("td", { class: `ev-${ev.type}` }, ev.type), h("td", {}, ev.path)));
    }
    while (body.children.length > MAX_EVENT_ROWS) body.lastChild.remove();
  });
  es.addEventListener("resync", (e) => {
    const d = JSON.parse(e.data);
    lastZxid = d.zxid;
    $("#events tbody").prepend(h("tr", {}, h("td", { class: "num" }, d.zxid), h("td", {}, new Date().toLocaleTimeString()),
      h("td", { class: "health-warn" }, "resync"), h("td", {}, d.reason)));
  });
  es.addEventListener("overflow", () => { es.close(); setTimeout(() => { if (eventSource === es) openStream(path); }, 500); });
  es.onerror = () => {
    $("#events-state").textContent = `reconnecting (will resume after zxid ${lastZxid ?? "?"})…`;
    if (es.readyState === EventSource.CLOSED) setTimeout(() => { if (eventSource === es) openStream(path); }, 1000);
  };
}

$("#events-form").addEventListener("submit", (e) => { e.preventDefault(); followEvents($("#events-path").value.trim() || "/"); });

// ---------------------------------------------------------------- main loop
function tick() {
  refreshEnsemble();
  if (currentTab === "recipes") loadRecipes();
  if (Date.now() - lastEnsembleOk > 5000) $("#live").classList.add("stale");
}

buildCharts();
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", buildCharts);
addEventListener("resize", () => charts.forEach((c) => {
  const el = c.root.parentElement;
  c.setSize({ width: Math.max(300, el.clientWidth), height: 200 });
}));
refreshWhoami();
tick();
refreshHistory();
openNode("/");
setInterval(tick, 1000);
setInterval(refreshHistory, 2000);
