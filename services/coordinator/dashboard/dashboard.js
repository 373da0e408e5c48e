// The coordinator's dashboard: polls the JSON API once a second and re-renders in place.
// Every piece of data goes in through textContent or text nodes, never as HTML.
// The API wants the team's token: it comes in the URL fragment (#token=..., which browsers
// never send to the server, so it stays out of its logs), is kept in sessionStorage and taken
// out of the address bar at once, and goes with every request as `Authorization: Bearer`.
"use strict";

const POLL_MS = 1000;
const MAX_SPANS = 2000; // a waterfall row per span stops being readable long before this
const TERMINAL = new Set(["completed", "completed_with_failures", "failed"]);
const SVG_NS = "http://www.w3.org/2000/svg";

const view = { job: null, task: "", chosen: false }; // chosen: picked by a click or the hash
const rendered = new Map(); // element id -> key of what it shows, so unchanged data is not redrawn
const traces = new Map(); // trace url -> {trace, at, final}: a running job's is read again
const TRACE_EVERY_MS = 5000; // every few seconds (a trace can be large)
const TOKEN_KEY = "gristmill.token";
const REFUSED = new Set([401, 403]);
let lastOk = null;
let tokenInMemory = null; // where sessionStorage cannot be used

const $ = (sel) => document.querySelector(sel);

/** An HTML element; string children become text nodes. */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children.flat().filter((c) => c != null && c !== false));
  return node;
}

/** An SVG element with `text` as its text content. */
function s(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}

/** Run `render(element)` only when `key` differs from what the element last showed. */
function once(id, key, render) {
  const k = JSON.stringify(key);
  if (rendered.get(id) === k) return;
  rendered.set(id, k);
  render(document.getElementById(id));
}

const num = (n) => (n ?? 0).toLocaleString("en-US");
const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");
const empty = (text) => h("div", { class: "empty" }, text);

function dur(sec) {
  if (sec <= 0) return "0";
  if (sec < 1) return `${(sec * 1000).toFixed(sec < 0.01 ? 2 : 0)} ms`;
  if (sec < 60) return `${sec.toFixed(sec < 10 ? 2 : 1)} s`;
  const m = Math.floor(sec / 60);
  return m < 60 ? `${m}m ${Math.round(sec % 60)}s` : `${Math.floor(m / 60)}h ${m % 60}m`;
}

/** 1, 2 or 5 times a power of ten, at least `v`: a tidy axis maximum. */
function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((c) => c >= v);
}

const badge = (state) => h("span", { class: `state ${state}` }, state.replaceAll("_", " "));

/** A progress bar: done in one colour, failed in another, out of published. */
function progress(step) {
  const pct = (n) => `${step.published ? (100 * n) / step.published : 0}%`;
  const title = `${step.name}: ${step.done}/${step.published} done, ${step.failed} failed`;
  return h("div", { class: "progress", title },
    h("span", { class: "done", style: { width: pct(step.done) } }),
    h("span", { class: "failed", style: { width: pct(step.failed) } }));
}

// ---- the token ----

function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? tokenInMemory;
  } catch {
    return tokenInMemory;
  }
}

function keepToken(value) {
  tokenInMemory = value;
  try {
    sessionStorage.setItem(TOKEN_KEY, value);
  } catch {
    // storage is off (a sandboxed frame, some private modes): the token lasts as long as the page
  }
  traces.clear(); // another token may be another team's: nothing read with the old one stays
  rendered.clear();
}

// ---- selection, kept in the URL hash (#job=ID&task=ID; #token=... is taken out at once) ----

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  if (p.has("token")) {
    keepToken(p.get("token"));
    p.delete("token");
    history.replaceState(null, "", p.toString() ? `#${p}` : location.pathname + location.search);
  }
  view.chosen = p.has("job");
  view.job = p.get("job") ?? view.job;
  view.task = p.get("task") ?? "";
}

function writeHash() {
  const p = new URLSearchParams();
  if (view.job && view.chosen) p.set("job", view.job);
  if (view.task) p.set("task", view.task);
  history.replaceState(null, "", p.toString() ? `#${p}` : location.pathname);
}

function chooseJob(job) {
  Object.assign(view, { job, task: "", chosen: true });
  writeHash();
  poll();
}

function chooseTask(task) {
  view.task = task;
  writeHash();
  poll();
}

// ---- fetching ----

class HttpError extends Error {
  constructor(url, status, reason) {
    super(`${url}: HTTP ${status}${reason ? ` (${reason})` : ""}`);
    this.status = status;
    this.reason = reason;
  }
}

const refused = (err) => err instanceof HttpError && REFUSED.has(err.status);

async function getJSON(url) {
  const key = token();
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const r = await fetch(url, { cache: "no-store", headers });
  if (!r.ok) {
    const reason = REFUSED.has(r.status) ? (await r.json().catch(() => ({}))).error : null;
    throw new HttpError(url, r.status, reason);
  }
  return r.json();
}

/** A job's trace (only `task`'s spans when given); null when the API has none to give. */
async function getTrace(job, task, finished) {
  const url = `/api/jobs/${encodeURIComponent(job)}/trace${task ? `?task=${encodeURIComponent(task)}` : ""}`;
  const kept = traces.get(url);
  if (kept && (kept.final || Date.now() - kept.at < TRACE_EVERY_MS)) return kept.trace;
  try {
    const trace = await getJSON(url);
    traces.set(url, { trace, at: Date.now(), final: finished });
    return trace;
  } catch (err) {
    if (err instanceof HttpError && !refused(err)) return null;
    throw err;
  }
}

let timer = null;
let inflight = false;
let again = false;

/** Fetch everything and render; a call during a poll makes that poll run once more. A refused
 * token stops the polling (each refusal is a warning in the service's log) until the hash
 * brings another. */
async function poll() {
  if (inflight) { again = true; return; }
  inflight = true;
  clearTimeout(timer);
  let refusal = null;
  try {
    await update();
    lastOk = Date.now() / 1000;
    $("#offline").hidden = true;
    $("#conn").className = "conn live";
    $("#conn").textContent = `live · updated ${clock(lastOk)}`;
  } catch (err) {
    if (refused(err)) refusal = err;
    else {
      const since = lastOk ? `showing data from ${clock(lastOk)}` : "no data yet";
      $("#offline").hidden = false;
      $("#offline").textContent = `Cannot reach the coordinator API (${err.message}). Retrying every second; ${since}.`;
      $("#conn").className = "conn down";
      $("#conn").textContent = "API unreachable";
    }
  }
  showRefusal(refusal);
  inflight = false;
  if (again) { again = false; poll(); } else if (!refusal) timer = setTimeout(poll, POLL_MS);
}

/** In place of the panels, what to do when the API refuses the token (null: it did not). */
function showRefusal(err) {
  $("#auth").hidden = !err;
  $("main").hidden = Boolean(err);
  if (!err) return;
  $("#offline").hidden = true;
  const printed = `open the URL \`gristmill up\` printed (${location.origin}/#token=…)`;
  const where = "the token is the http_token in the team's credentials file";
  let text;
  if (err.status === 403) text = `The service refused this dashboard's token: ${err.reason ?? "HTTP 403"}. To see this team, ${printed}; ${where}.`;
  else if (token()) text = `The service does not know this dashboard's token. To see a team, ${printed}; ${where}.`;
  else text = `This dashboard needs the team's token: ${printed}; ${where}.`;
  $("#auth").textContent = text;
  $("#conn").className = "conn down";
  $("#conn").textContent = err.status === 403 ? "token refused" : "token needed";
}

async function update() {
  const [{ jobs }, { workers }] = await Promise.all([getJSON("/api/jobs"), getJSON("/api/workers")]);
  if (!view.chosen) view.job = jobs.length ? jobs[jobs.length - 1].job : null;
  renderJobs(jobs);
  once("workers", workers, (el) => renderWorkers(el, workers));
  $("#job-detail").classList.toggle("none", !view.job);
  if (!view.job) return renderMissing("No jobs yet.");
  let detail;
  try {
    detail = await getJSON(`/api/jobs/${encodeURIComponent(view.job)}`);
  } catch (err) {
    if (err instanceof HttpError && err.status === 404) return renderMissing(`Job ${view.job} not found.`);
    throw err;
  }
  const finished = TERMINAL.has(detail.state);
  const [whole, sub] = await Promise.all([
    getTrace(detail.job, "", finished),
    view.task ? getTrace(detail.job, view.task, finished) : null,
  ]);
  renderDetail(detail, whole, view.task ? sub : whole);
}

// ---- jobs and workers ----

function renderJobs(jobs) {
  const body = $("#jobs tbody");
  const rows = new Map([...body.querySelectorAll("tr.job")].map((tr) => [tr.dataset.job, tr]));
  const ordered = jobs.slice().reverse().map((j) => {
    const tr = rows.get(j.job) ?? h("tr", { class: "job", "data-job": j.job, onclick: () => chooseJob(j.job) });
    const key = JSON.stringify(j);
    if (tr.gmKey !== key || !TERMINAL.has(j.state)) tr.replaceChildren(...jobCells(j));
    tr.gmKey = key;
    tr.classList.toggle("selected", j.job === view.job);
    return tr;
  });
  if (ordered.length) body.replaceChildren(...ordered);
  else body.replaceChildren(h("tr", {}, h("td", { colspan: 11, class: "empty" }, "No jobs yet.")));
}

function jobCells(j) {
  const elapsed = (j.finished_at ?? Date.now() / 1000) - j.submitted_at;
  const td = (text, cls) => h("td", { class: cls }, text);
  return [
    h("td", { class: "id", title: j.trace_id ? `trace ${j.trace_id}` : null }, j.job),
    td(j.pipeline),
    h("td", { title: j.error || null }, badge(j.state)),
    td(`${num(j.tasks_done)} / ${num(j.tasks_published)}`, "num"),
    td(num(j.tasks_failed), j.tasks_failed ? "num bad" : "num"),
    td(num(j.retries), "num"),
    td(num(j.items_in), "num"),
    td(num(j.items_out), "num"),
    td(num(j.items_dropped), "num"),
    h("td", { class: "mini" }, j.steps.map(progress)),
    h("td", { class: "num", title: `submitted ${clock(j.submitted_at)}` }, dur(elapsed)),
  ];
}

function renderWorkers(el, workers) {
  if (!workers.length) return el.replaceChildren(empty("No workers reporting."));
  const now = Date.now() / 1000;
  el.replaceChildren(h("table", { class: "small" },
    h("thead", {}, h("tr", {}, ["Worker", "Pool", "Slots", "Running", "Actors busy / idle", "Steps", "Seen"]
      .map((t, i) => h("th", { class: i >= 2 && i <= 4 ? "num" : null }, t)))),
    h("tbody", {}, workers.map((w) => h("tr", {},
      h("td", { class: "id" }, w.worker),
      h("td", {}, h("span", { class: `pool ${w.pool}` }, w.pool)),
      h("td", { class: "num" }, num(w.slots)),
      h("td", { class: "num" }, num(w.running)),
      h("td", { class: "num" }, `${num(w.actors_busy)} / ${num(w.actors_idle)}`),
      h("td", { class: "steps-list" }, w.steps.join(", ") || "–"),
      h("td", { class: "num" }, `${Math.max(0, Math.round(now - w.at))} s ago`))))));
}

// ---- the selected job ----

function renderMissing(text) {
  $("#job-title").textContent = text;
  rendered.clear(); // the panels are hidden; draw them afresh when a job appears
  for (const id of ["job-meta", "steps", "backlog", "failures", "waterfall"]) $(`#${id}`).replaceChildren();
  $("#job-error").hidden = true;
}

function renderDetail(d, whole, sub) {
  once("job-title", [d.job, d.state], (el) => el.replaceChildren(h("span", { class: "id" }, d.job), " ", badge(d.state)));
  once("job-meta", [d.pipeline, d.trace_id, d.submitted_at, d.finished_at], (el) => el.replaceChildren(
    `pipeline ${d.pipeline} · submitted ${clock(d.submitted_at)}`,
    d.finished_at ? ` · finished ${clock(d.finished_at)} after ${dur(d.finished_at - d.submitted_at)}` : " · running",
    ` · trace ${d.trace_id || "–"}`));
  $("#job-error").hidden = !d.error;
  $("#job-error").textContent = d.error || "";
  once("steps", d.steps, (el) => renderSteps(el, d.steps));
  once("throughput", d.history, (el) => drawThroughput(el, d.history ?? []));
  once("backlog", d.backlog, (el) => renderBacklog(el, d.backlog ?? []));
  once("drops", d.steps.map((st) => st.dropped_by), (el) => drawDrops(el, d.steps));
  once("failures", [d.failures, view.task], (el) => renderFailures(el, d.failures ?? []));
  once("trace-task", [whole?.spans.length, d.failures, view.task], (el) => renderTaskChoice(el, whole, d.failures ?? []));
  $("#trace-task").value = view.task;
  $("#trace-id").textContent = whole ? whole.trace_id : "";
  once("waterfall", [sub, view.task], (el) => renderWaterfall(el, sub));
}

function renderSteps(el, steps) {
  if (!steps.length) return el.replaceChildren(empty("No steps planned yet."));
  el.replaceChildren(...steps.map((st, i) => h("div", { class: "step" },
    h("div", { class: "step-head" },
      h("span", { class: "name" }, `${i}. ${st.name}`),
      h("span", { class: "num" }, `${num(st.done)} / ${num(st.published)}`,
        st.failed ? h("span", { class: "bad" }, ` · ${num(st.failed)} failed`) : null)),
    progress(st),
    h("div", { class: "step-docs" },
      `docs ${num(st.items_in)} in → ${num(st.items_out)} out · ${num(st.items_dropped)} dropped`))));
}

function renderBacklog(el, backlog) {
  if (!backlog.length) return el.replaceChildren(empty("No backlog."));
  el.replaceChildren(h("table", { class: "small" },
    h("thead", {}, h("tr", {}, h("th", {}, "Step"), h("th", { class: "num" }, "Pending"), h("th", { class: "num" }, "Unacked"))),
    h("tbody", {}, backlog.map((b) => h("tr", {},
      h("td", {}, `${b.step}. ${b.name}`),
      h("td", { class: "num" }, num(b.pending)),
      h("td", { class: "num" }, num(b.ack_pending)))))));
}

function renderFailures(el, failures) {
  const open = new Set([...el.querySelectorAll("details[open]")].map((d) => d.dataset.task));
  if (!failures.length) return el.replaceChildren(empty("No failed tasks."));
  el.replaceChildren(...failures.map((f) => h("div", {
    class: f.task_id === view.task ? "failure selected" : "failure",
    "data-task": f.task_id,
    title: "Show this task's trace",
    onclick: (e) => { if (!e.target.closest("details")) chooseTask(f.task_id); },
  },
  h("div", { class: "failure-head" },
    h("span", { class: "id" }, f.task_id),
    h("span", { class: "meta" }, `step ${f.step} · ${f.attempts} attempt${f.attempts === 1 ? "" : "s"} · worker ${f.worker || "–"}`)),
  h("div", { class: "error" }, f.error),
  f.traceback ? h("details", { "data-task": f.task_id, open: open.has(f.task_id) ? "" : null },
    h("summary", {}, "traceback"), h("pre", {}, f.traceback)) : null)));
}

function renderTaskChoice(el, trace, failures) {
  const tasks = new Map(); // task id -> step name, in order of first appearance
  for (const sp of (trace?.spans ?? []).slice().sort((a, b) => a.start_ns - b.start_ns)) {
    const a = sp.attributes ?? {};
    if (a["gm.task"] && !tasks.has(a["gm.task"])) tasks.set(a["gm.task"], a["gm.step_name"] ?? "");
  }
  for (const f of failures) if (!tasks.has(f.task_id)) tasks.set(f.task_id, `step ${f.step}`);
  if (view.task && !tasks.has(view.task)) tasks.set(view.task, "");
  el.replaceChildren(h("option", { value: "" }, "whole job"),
    ...[...tasks].map(([id, step]) => h("option", { value: id }, step ? `${id} (${step})` : id)));
}

// ---- charts ----

function drawThroughput(svg, history) {
  const W = 640, H = 180, L = 48, R = 12, T = 12, B = 26;
  const pts = [];
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1], b = history[i], dt = b.t - a.t;
    if (dt > 0) pts.push([b.t - history[0].t, Math.max(0, (b.items_out - a.items_out) / dt)]);
  }
  svg.replaceChildren();
  if (!pts.length) return svg.append(s("text", { x: W / 2, y: H / 2, class: "muted", "text-anchor": "middle" }, "No samples yet"));
  const xMax = Math.max(pts[pts.length - 1][0], 1);
  const yMax = niceCeil(Math.max(...pts.map((p) => p[1]), 1));
  const x = (v) => L + (v / xMax) * (W - L - R);
  const y = (v) => H - B - (v / yMax) * (H - T - B);
  for (const f of [0, 0.5, 1]) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(f * yMax), y2: y(f * yMax), class: "grid" }),
      s("text", { x: L - 6, y: y(f * yMax) + 4, "text-anchor": "end", class: "axis" }, num(f * yMax)),
      s("text", { x: x(f * xMax), y: H - 8, "text-anchor": ["start", "middle", "end"][f * 2], class: "axis" }, dur(f * xMax)));
  }
  const line = pts.map(([px, py]) => `${x(px).toFixed(1)},${y(py).toFixed(1)}`).join(" ");
  svg.append(s("polygon", { points: `${x(pts[0][0])},${y(0)} ${line} ${x(xMax)},${y(0)}`, class: "area" }),
    s("polyline", { points: line, class: "line" }),
    s("text", { x: L + 4, y: T + 2, class: "axis" }, "docs/s"));
}

function drawDrops(svg, steps) {
  const totals = new Map();
  for (const st of steps) for (const [name, n] of Object.entries(st.dropped_by ?? {})) totals.set(name, (totals.get(name) ?? 0) + n);
  const rows = [...totals].filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  const W = 640, ROW = 24, L = 200, R = 70;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${Math.max(rows.length, 1) * ROW + 6}`);
  if (!rows.length) return svg.append(s("text", { x: W / 2, y: 20, class: "muted", "text-anchor": "middle" }, "No documents dropped"));
  const max = rows[0][1];
  rows.forEach(([name, n], i) => {
    const top = 3 + i * ROW, w = Math.max(2, (n / max) * (W - L - R));
    const g = s("g", { class: "drop" });
    g.append(s("title", {}, `${name}: ${num(n)} dropped`),
      s("text", { x: L - 8, y: top + ROW / 2 + 4, "text-anchor": "end", class: "label" }, name.length > 28 ? `${name.slice(0, 27)}…` : name),
      s("rect", { x: L, y: top + 3, width: w, height: ROW - 6, rx: 2, class: "bar" }),
      s("text", { x: L + w + 6, y: top + ROW / 2 + 4, class: "count" }, num(n)));
    svg.append(g);
  });
}

// ---- trace waterfall ----

/** [span, depth] in tree order; spans whose parent is absent from the list are roots. */
function spanTree(spans) {
  const ids = new Set(spans.map((sp) => sp.span_id));
  const kids = new Map();
  for (const sp of spans) {
    const parent = ids.has(sp.parent_span_id) ? sp.parent_span_id : null;
    kids.set(parent, [...(kids.get(parent) ?? []), sp]);
  }
  const out = [];
  const walk = (parent, depth) => {
    for (const sp of (kids.get(parent) ?? []).sort((a, b) => a.start_ns - b.start_ns)) {
      out.push([sp, depth]);
      walk(sp.span_id, depth + 1);
    }
  };
  walk(null, 0);
  return out;
}

function renderWaterfall(el, trace) {
  if (!trace || !trace.spans.length) return el.replaceChildren(empty(trace ? "No spans recorded." : "No trace available for this job."));
  const spans = trace.spans;
  const t0 = Math.min(...spans.map((sp) => sp.start_ns));
  const t1 = Math.max(...spans.map((sp) => Math.max(sp.end_ns || 0, sp.start_ns)));
  const total = Math.max(t1 - t0, 1);
  const tree = spanTree(spans);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => h("span", { style: { left: `${f * 100}%` } }, dur((f * total) / 1e9)));
  el.replaceChildren(
    h("div", { class: "span-axis" }, h("div", { class: "label" }, "span"), h("div", { class: "track" }, ticks), h("div", { class: "dur" }, "duration")),
    ...tree.slice(0, MAX_SPANS).map(([sp, depth]) => spanRow(sp, depth, t0, t1, total)),
    ...(tree.length > MAX_SPANS ? [empty(`Showing ${MAX_SPANS} of ${tree.length} spans; choose a task to see its spans.`)] : []));
}

function spanRow(sp, depth, t0, t1, total) {
  const a = sp.attributes ?? {};
  const end = sp.end_ns > sp.start_ns ? sp.end_ns : t1; // an unfinished span runs to the trace's end
  const exc = (sp.events ?? []).find((e) => e.attributes?.["exception.message"] != null)?.attributes;
  const meta = [
    a["gm.step"] != null ? `step ${a["gm.step"]}` : null,
    a["gm.task"] ? `task ${a["gm.task"]}` : null,
    a["gm.attempt"] != null ? `attempt ${a["gm.attempt"]}` : null,
    a["gm.worker"] ? `on ${a["gm.worker"]}` : null,
  ].filter(Boolean).join(" · ");
  const links = (sp.links ?? []).map((l) => `${l.attributes?.["gm.link"] ?? "link"} → ${l.span_id}`).join("\n");
  const cls = ["span", sp.status === "error" && "error", sp.critical && "critical"].filter(Boolean).join(" ");
  const excText = exc ? [exc["exception.type"], exc["exception.message"]].filter(Boolean).join(": ") : null;
  return h("div", {
    class: cls,
    "data-span": sp.span_id,
    title: [`${sp.name} (${sp.span_id})`, links].filter(Boolean).join("\n"),
    onclick: a["gm.task"] && a["gm.task"] !== view.task ? () => chooseTask(a["gm.task"]) : null,
  },
  h("div", { class: "label", style: { paddingLeft: `${depth * 14 + 6}px` } },
    h("span", { class: "name" }, sp.name), meta ? h("span", { class: "meta" }, meta) : null,
    excText ? h("div", { class: "exc" }, excText) : null),
  h("div", { class: "track" }, h("div", {
    class: "bar",
    style: { left: `${((sp.start_ns - t0) / total) * 100}%`, width: `${Math.max(((end - sp.start_ns) / total) * 100, 0.3)}%` },
  })),
  h("div", { class: "dur" }, dur((end - sp.start_ns) / 1e9)));
}

// ---- start ----

document.addEventListener("DOMContentLoaded", () => {
  readHash();
  $("#trace-task").addEventListener("change", (e) => chooseTask(e.target.value));
  window.addEventListener("hashchange", () => { readHash(); poll(); });
  poll();
});
