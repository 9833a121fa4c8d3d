// tokenbus status page: polls status.json and renders the providers, a live
// countdown to each token's expiry, the leader, and a chart of recent
// refreshes. Plain JavaScript, no dependencies.
"use strict";

const POLL_MS = 2000;
const STATES = { ok: "OK", failing: "Failing", no_token: "No token" };
const CONDITIONS = { ok: "OK", retrying: "Retrying", credentials_rejected: "Credentials rejected", expired: "Expired", starting: "Starting" };
let data = null;      // last status.json
let offset = 0;       // server clock − browser clock, in ms
let lastOK = 0;       // browser time of the last successful poll
let after = "";       // the page shown starts after this provider ("" first page)
const PAGE = 100;     // providers per page

// query returns status.json's filter and page for the form's values.
function query() {
  const p = new URLSearchParams({ limit: PAGE });
  const search = document.getElementById("search").value.trim();
  const state = document.getElementById("state").value;
  const condition = document.getElementById("condition").value;
  if (search) p.set("search", search);
  if (state) p.set("state", state);
  if (condition) p.set("condition", condition);
  if (after) p.set("after", after);
  return "status.json?" + p.toString();
}

function now() { return Date.now() + offset; }

function duration(ms) {
  const s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60, sec = s % 60;
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${String(m).padStart(2, "0")}m ${String(sec).padStart(2, "0")}s`;
  if (m > 0) return `${m}m ${String(sec).padStart(2, "0")}s`;
  return `${sec}s`;
}

function ago(iso) {
  if (!iso) return "never";
  return duration(now() - Date.parse(iso)) + " ago";
}

function plural(n, one, many) { return n + " " + (n === 1 ? one : (many || one + "s")); }

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderReplica(st) {
  const leader = document.getElementById("leader");
  if (st.leader) {
    leader.textContent = "Leader: this replica (" + st.instance + ")";
    leader.className = "leader self";
  } else if (st.leader_instance) {
    leader.textContent = "Standby · leader is " + st.leader_instance;
    leader.className = "leader other";
  } else {
    leader.textContent = "Standby · no leader seen";
    leader.className = "leader unknown";
  }
  let who = "replica " + st.instance + " · version " + st.version;
  if (st.term) who += " · term " + st.term;
  document.getElementById("instance").textContent = who;
}

// names lists up to 10 names of the page's providers in state, with "…"
// when the summary counts more.
function names(ps, state, total) {
  const n = ps.filter(p => p.state === state).map(p => p.name).slice(0, 10);
  return n.join(", ") + (total > n.length ? ", …" : "");
}

function renderOverall(st) {
  const ps = st.providers || [];
  const sum = st.summary || { total: ps.length, states: {} };
  const count = s => sum.states[s] !== undefined ? sum.states[s] : ps.filter(p => p.state === s).length;
  const bad = count("no_token"), failing = count("failing");
  const o = document.getElementById("overall");
  if (bad > 0) {
    o.textContent = `${plural(bad, "provider has", "providers have")} no valid token: ${names(ps, "no_token", bad)}`;
    o.className = "overall bad";
  } else if (failing > 0) {
    o.textContent = `Tokens valid, but refreshes are failing for ${names(ps, "failing", failing)}`;
    o.className = "overall warn";
  } else {
    o.textContent = sum.total === 1 ? "The provider has a valid token"
      : sum.total === 2 ? "Both providers have a valid token"
      : `All ${sum.total} providers have a valid token`;
    o.className = "overall ok";
  }
  const c = document.getElementById("counts");
  c.replaceChildren();
  for (const s of ["ok", "failing", "no_token"]) {
    const b = el("button", "badge " + s, `${STATES[s]}: ${count(s)}`);
    b.type = "button";
    b.onclick = () => { document.getElementById("state").value = s; after = ""; poll(); };
    c.append(b);
  }
  document.getElementById("pageinfo").textContent =
    `${plural(ps.length, "provider")} shown of ${sum.total}` + (after ? ` (after ${after})` : "");
  const next = document.getElementById("next");
  next.disabled = !st.next;
  next.onclick = () => { after = st.next; poll(); };
  document.getElementById("first").disabled = !after;
}

function renderProviders(st) {
  renderOverall(st);
  const body = document.querySelector("#providers tbody");
  body.replaceChildren();
  for (const p of st.providers || []) {
    const tr = el("tr");
    tr.dataset.provider = p.name;
    tr.append(el("td", "name", p.name), el("td", "kind", p.kind));
    const state = el("td", "state");
    state.append(el("span", "badge " + p.state, STATES[p.state] || p.state));
    tr.append(state);
    // The refresh loop's view: what is wrong, since when, and why.
    const cond = el("td", "condition");
    if (p.condition) {
      cond.append(el("span", "badge cond-" + p.condition, CONDITIONS[p.condition] || p.condition));
      const since = el("div", "muted when");
      if (p.condition_since) since.dataset.at = p.condition_since;
      cond.append(since);
      if (p.cause) cond.append(el("div", "muted cause", "cause: " + p.cause));
    } else {
      cond.append(el("span", "muted", "—"));
    }
    tr.append(cond);
    const exp = el("td", "expires");
    if (p.expires_at) {
      exp.dataset.expires = p.expires_at;
      if (p.last_refresh) exp.dataset.life = Date.parse(p.expires_at) - Date.parse(p.last_refresh);
    }
    else if (p.pool !== undefined && p.pool !== null) exp.textContent = p.pool + " single-use ready";
    else exp.textContent = "—";
    tr.append(exp);
    const last = el("td", "last-refresh");
    if (p.last_refresh) { last.dataset.at = p.last_refresh; last.title = p.last_refresh; } else last.textContent = "never";
    tr.append(last);
    const err = el("td", "last-error");
    if (p.last_error) {
      err.append(el("div", "", p.last_error));
      const when = el("div", "muted when");
      if (p.last_error_at) when.dataset.at = p.last_error_at;
      err.append(when);
    } else {
      err.append(el("span", "muted", "—"));
    }
    tr.append(err);
    body.append(tr);
  }
  tick();
}

// soonMs is how close to expiry a token of lifetime lifeMs (0 if unknown)
// shows amber: half the default refresh margin (a fifth of the lifetime, at
// most 5 minutes), so a healthy token, refreshed a full margin ahead, never
// does; one that shows amber is overdue for a refresh.
function soonMs(lifeMs) {
  if (!(lifeMs > 0)) return 30000;
  return Math.min(lifeMs / 5, 300000) / 2;
}

// tick updates every countdown and "… ago" in place; it runs 4 times a second.
function tick() {
  for (const td of document.querySelectorAll("td.expires[data-expires]")) {
    const left = Date.parse(td.dataset.expires) - now();
    td.textContent = left > 0 ? duration(left) : "expired " + duration(left) + " ago";
    td.classList.toggle("expired", left <= 0);
    td.classList.toggle("soon", left > 0 && left < soonMs(Number(td.dataset.life)));
  }
  for (const e of document.querySelectorAll("[data-at]")) e.textContent = ago(e.dataset.at);
  const upd = document.getElementById("updated");
  if (lastOK) upd.textContent = "Updated " + duration(Date.now() - lastOK) + " ago · every " + POLL_MS / 1000 + "s";
}

function renderChart(history) {
  const svg = document.getElementById("chart");
  const NS = "http://www.w3.org/2000/svg";
  const W = Math.max(320, Math.round(svg.clientWidth || 720)), H = 180, L = 52, R = 12, T = 10, B = 24;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const mk = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  const counts = { ok: 0, transient: 0, permanent: 0 };
  for (const a of history) counts[a.outcome] = (counts[a.outcome] || 0) + 1;
  document.getElementById("summary").textContent = history.length === 0
    ? "No refreshes yet."
    : `${plural(history.length, "recent refresh", "recent refreshes")}: ${counts.ok} ok, ${plural(counts.transient, "transient failure")}, ${plural(counts.permanent, "permanent failure")}`;
  mk("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
  mk("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
  if (history.length === 0) return;
  const t1 = now(), t0 = Math.min(Date.parse(history[0].at), t1 - 60000);
  const maxMs = Math.max(10, ...history.map(a => a.seconds * 1000)) * 1.1;
  const x = t => L + (W - L - R) * (t - t0) / Math.max(1, t1 - t0);
  const y = ms => H - B - (H - B - T) * ms / maxMs;
  mk("text", { x: L - 6, y: T + 8, "text-anchor": "end" }, Math.round(maxMs) + " ms");
  mk("text", { x: L - 6, y: H - B, "text-anchor": "end" }, "0");
  mk("text", { x: L, y: H - 6 }, duration(t1 - t0) + " ago");
  mk("text", { x: W - R, y: H - 6, "text-anchor": "end" }, "now");
  for (const a of history) {
    const c = mk("circle", { cx: x(Date.parse(a.at)).toFixed(1), cy: y(a.seconds * 1000).toFixed(1), r: 4, class: a.outcome });
    const title = document.createElementNS(NS, "title");
    title.textContent = `${a.provider} ${a.outcome} ${(a.seconds * 1000).toFixed(1)} ms at ${a.at}`;
    c.append(title);
  }
}

async function poll() {
  const banner = document.getElementById("banner");
  try {
    const t = Date.now();
    const resp = await fetch(query(), { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    data = await resp.json();
    offset = Date.parse(data.now) - (t + Date.now()) / 2;
    lastOK = Date.now();
    banner.hidden = data.ready !== false;
    if (data.ready === false) banner.textContent = "Not ready: " + data.not_ready;
    renderReplica(data.status);
    renderProviders(data.status);
    renderChart(data.history || []);
  } catch (e) {
    banner.hidden = false;
    banner.textContent = "Cannot reach the refresher (" + e.message + ")" + (lastOK ? "; showing data from " + duration(Date.now() - lastOK) + " ago" : "");
  }
}

document.getElementById("first").onclick = () => { after = ""; poll(); };
let typing = 0;
document.getElementById("search").oninput = () => { clearTimeout(typing); typing = setTimeout(() => { after = ""; poll(); }, 250); };
document.getElementById("state").onchange = () => { after = ""; poll(); };
document.getElementById("condition").onchange = () => { after = ""; poll(); };

poll();
setInterval(poll, POLL_MS);
setInterval(tick, 250);
