// The Backup center of `stowage serve`: one page over the JSON API (/api/v1,
// schemas/openapi.yaml). Plain JavaScript, no build step, no dependencies. Everything the
// server sends is put on the page with textContent (never parsed as HTML), and the page's CSP
// allows no inline script, so a name in the catalog cannot run code and read the token.
"use strict";

const TOKEN_KEY = "stowage.token";
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const TIERS = ["operational", "vault", "secondary"];

const state = {
  tab: "instances",
  instances: [],
  jobs: [],
  timer: null,
  generation: 0,
  fleet: null, // the fleet as this refresh read it
  following: null, // the restore job the wizard follows
  plan: null, // the last plan: {request, view}
};

// ---- small helpers ----

function $(id) {
  return document.getElementById(id);
}

// Builds an element: el("td", {class: "x"}, "text", child, ...). Strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren(...rows);
  if (rows.length === 0) {
    tbody.append(el("tr", { class: "empty" }, el("td", { colspan: columns }, empty)));
  }
}

function ago(iso) {
  if (!iso) return "";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const s = (Date.now() - t) / 1000;
  const abs = Math.abs(s);
  const text =
    abs < 90 ? `${Math.round(abs)} s` :
    abs < 5400 ? `${Math.round(abs / 60)} min` :
    abs < 172800 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86400)} d`;
  return s >= 0 ? `${text} ago` : `in ${text}`;
}

function when(iso) {
  return iso ? el("time", { datetime: iso, title: iso }, ago(iso)) : "";
}

function bytes(n) {
  if (n === undefined || n === null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

function seconds(s) {
  if (s === undefined || s === null) return "";
  return s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
}

function badge(status) {
  return el("span", { class: `status ${status}`, "data-status": status }, status);
}

function showError(where, e) {
  const node = $(where);
  node.textContent = e ? String(e.message || e) : "";
  node.hidden = !e;
}

// ---- the API ----

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, `cannot reach stowage serve (${e.message}); is it still running?`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    /* not JSON */
  }
  if (response.status === 401) {
    signIn(token ? "The token was refused; enter the server's API token." : "");
    throw new ApiError(401, "the API token was refused");
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || `HTTP ${response.status}`);
  }
  return data;
}

// ---- sign-in: the token lives in this tab's sessionStorage only ----

function signIn(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  stopPolling();
  $("login").hidden = false;
  $("tabs").hidden = true;
  $("sign-out").hidden = true;
  for (const t of document.querySelectorAll(".tab")) t.hidden = true;
  $("login-error").textContent = message || "";
  $("server").textContent = "this server needs its API token";
  $("token").focus();
}

async function start() {
  let info;
  try {
    info = await api("GET", "/info");
  } catch (e) {
    if (e.status !== 401) showError("banner", e);
    return;
  }
  showError("banner", null);
  $("login").hidden = true;
  $("tabs").hidden = false;
  $("sign-out").hidden = !sessionStorage.getItem(TOKEN_KEY);
  $("server").textContent =
    `stowage ${info.version} · broker ${info.broker} · vault ${info.vault}` +
    (info.secondary ? ` (secondary ${info.secondary})` : "") +
    (info.cluster ? ` · cluster ${info.cluster}` : " · no cluster");
  route();
}

// ---- tabs ----

function route() {
  const wanted = (location.hash || "#instances").slice(1);
  state.tab = document.getElementById(`tab-${wanted}`) ? wanted : "instances";
  for (const a of document.querySelectorAll("#tabs a")) {
    a.classList.toggle("active", a.dataset.tab === state.tab);
  }
  for (const t of document.querySelectorAll(".tab")) {
    t.hidden = t.id !== `tab-${state.tab}`;
  }
  refresh();
}

function stopPolling() {
  clearTimeout(state.timer);
  state.timer = null;
}

// Loads what the visible tab shows, then again: every second while a job moves, else every 5.
async function refresh() {
  stopPolling();
  if (!$("login").hidden) return;
  // A refresh started later (a click, a tab change) takes over: this one schedules nothing.
  const generation = ++state.generation;
  let busy = false;
  state.fleet = null;
  try {
    const loaders = {
      instances: loadInstances,
      jobs: loadJobs,
      "recovery-points": loadRecoveryPoints,
      restore: loadRestore,
      "dead-letters": loadDeadLetters,
      drills: loadDrills,
      fleet: loadFleet,
    };
    busy = (await loaders[state.tab]()) === true;
    await loadDeadLetterCount();
    showError("banner", null);
  } catch (e) {
    if (e.status === 401) return;
    showError("banner", e);
  }
  if (generation !== state.generation) return;
  state.timer = setTimeout(refresh, busy ? 1000 : 5000);
}

// ---- instances ----

function tierCell(protection, tier) {
  const good = protection.last_good && protection.last_good[tier];
  if (!good) return el("td", { class: "none" }, "none");
  return el(
    "td",
    { "data-tier": tier },
    el("code", {}, good.recovery_point_id),
    el("br"),
    when(good.created_at),
  );
}

async function loadInstances() {
  const [instances, fleet] = await Promise.all([api("GET", "/instances"), api("GET", "/fleet")]);
  state.instances = instances;
  state.fleet = fleet;
  const rows = instances.map(({ instance, protection }) => {
    const job = protection.last_job;
    return el(
      "tr",
      { "data-instance": instance.name },
      el("th", {}, instance.name),
      el("td", {}, instance.cluster, el("br"), el("span", { class: "muted" }, `policy ${instance.policy}`)),
      TIERS.map((t) => tierCell(protection, t)),
      el("td", {}, when(protection.next_slot)),
      el(
        "td",
        {},
        protection.rpo_breached
          ? el("span", { class: "status failed rpo" }, "RPO breached")
          : el("span", { class: "status succeeded rpo" }, "within RPO"),
        el("br"),
        el("span", { class: "muted" }, `every ${Math.round((protection.rpo_seconds || 0) / 3600)} h`),
      ),
      el("td", {}, job ? [badge(job.status), " ", el("code", {}, job.id)] : "none yet"),
      el(
        "td",
        { class: "actions" },
        el("button", { type: "button", class: "backup", onclick: () => backupNow(instance.name) }, "Back up now"),
        el("button", {
          type: "button",
          class: "secondary",
          onclick: () => {
            $("rp-instance").value = instance.name;
            location.hash = "#recovery-points";
          },
        }, "Recovery points"),
      ),
    );
  });
  fill($("instances").tBodies[0], rows, "No backup instances in this vault yet (stowage instance create).", 9);
  fillInstanceSelects();
  renderFleetSummary(fleet);
  return instances.some((i) => i.protection.last_job && !FINAL.has(i.protection.last_job.status));
}

function fillInstanceSelects() {
  for (const id of ["rp-instance", "r-instance"]) {
    const select = $(id);
    const before = select.value;
    const names = state.instances.map((i) => i.instance.name);
    if ([...select.options].map((o) => o.value).join() !== names.join()) {
      select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    }
    if (names.includes(before)) select.value = before;
  }
}

async function ensureInstances() {
  if (state.instances.length === 0) {
    state.instances = await api("GET", "/instances");
    fillInstanceSelects();
  }
}

async function backupNow(name) {
  try {
    const submitted = await api("POST", `/instances/${encodeURIComponent(name)}/backups`, {
      requested_by: "backup center",
    });
    state.highlight = submitted.job_id;
    // Rows from an earlier look at the Jobs tab lose their mark until it reloads.
    for (const r of document.querySelectorAll("#jobs tr.highlight")) r.classList.remove("highlight");
    location.hash = "#jobs";
  } catch (e) {
    showError("banner", e);
  }
}

// ---- fleet: queue depth, geo-replication lag ----

function lagText(fleet) {
  const lag = fleet.geo_replication_lag_seconds;
  if (lag === null || lag === undefined) return "not geo-redundant";
  return lag === 0 ? "none: every vault recovery point is in the secondary" : seconds(lag);
}

function renderFleetSummary(fleet) {
  let summary = $("fleet-summary");
  if (!summary) {
    summary = el("p", { id: "fleet-summary", class: "muted" });
    $("instances").before(summary);
  }
  const queued = fleet.queues.filter((q) => !q.dead_letter).reduce((a, q) => a + q.depth, 0);
  const dead = fleet.queues.filter((q) => q.dead_letter).reduce((a, q) => a + q.depth, 0);
  summary.textContent = `Queued jobs: ${queued} · dead letters: ${dead} · geo-replication lag: ${lagText(fleet)}`;
}

async function loadFleet() {
  const fleet = await api("GET", "/fleet");
  state.fleet = fleet;
  $("geo-lag").textContent = lagText(fleet);
  const rows = fleet.queues.map((q) =>
    el(
      "tr",
      { class: q.dead_letter && q.depth > 0 ? "alert" : null },
      el("td", {}, el("code", {}, q.queue)),
      el("td", {}, q.stage || "", q.dead_letter ? " (dead letters)" : ""),
      el("td", { class: "num" }, q.depth),
    ),
  );
  fill($("queues").tBodies[0], rows, "No queues.", 3);
}

async function loadDeadLetterCount() {
  // The count in the tab bar comes from the fleet (one read of queue depths), unless the tab
  // just read it.
  const fleet = state.fleet || (await api("GET", "/fleet"));
  const dead = fleet.queues.filter((q) => q.dead_letter).reduce((a, q) => a + q.depth, 0);
  $("dl-count").textContent = dead > 0 ? String(dead) : "";
}

// ---- jobs with live progress ----

function stageCell(s) {
  const p = s.progress || {};
  const parts = [el("span", { class: "stage-name" }, s.stage), " ", badge(s.status)];
  if (p.bytes_total) {
    const pct = Math.min(100, Math.round((100 * (p.bytes_done || 0)) / p.bytes_total));
    parts.push(
      el("progress", { max: 100, value: pct, title: `${pct} %` }),
      el("span", { class: "muted" }, ` ${bytes(p.bytes_done || 0)} of ${bytes(p.bytes_total)}`),
    );
  } else if (p.items_total) {
    const pct = Math.min(100, Math.round((100 * (p.items_done || 0)) / p.items_total));
    parts.push(
      el("progress", { max: 100, value: pct, title: `${pct} %` }),
      el("span", { class: "muted" }, ` ${p.items_done || 0}/${p.items_total} items`),
      p.bytes_done ? el("span", { class: "muted" }, `, ${bytes(p.bytes_done)} read`) : null,
    );
  } else if (p.bytes_done) {
    parts.push(el("span", { class: "muted" }, ` ${bytes(p.bytes_done)}`));
  } else if (s.status === "running") {
    // Started, no counts flushed to the record yet: an indeterminate bar.
    parts.push(el("progress", { title: "started" }));
  }
  if (s.attempts > 1) parts.push(el("span", { class: "muted" }, ` attempt ${s.attempts}`));
  if (s.error) parts.push(el("div", { class: "error" }, s.error));
  else if (s.summary) parts.push(el("div", { class: "muted" }, s.summary));
  return el("div", { class: "stage", "data-stage": s.stage }, parts);
}

function jobRow(job) {
  return el(
    "tr",
    { "data-job": job.id, class: state.highlight === job.id ? "highlight" : null },
    el("td", {}, el("code", {}, job.id)),
    el("td", {}, job.kind),
    el("td", {}, job.instance || ""),
    el("td", { class: "job-status" }, badge(job.status)),
    el("td", {}, (job.stages || []).map(stageCell)),
    el("td", {}, when(job.created_at)),
    el(
      "td",
      {},
      FINAL.has(job.status) || job.cancel_requested_at
        ? job.cancel_requested_at ? "cancel requested" : ""
        : el("button", { type: "button", class: "secondary", onclick: () => cancelJob(job.id) }, "Cancel"),
    ),
  );
}

async function loadJobs() {
  const jobs = await api("GET", "/jobs?limit=50");
  state.jobs = jobs;
  fill($("jobs").tBodies[0], jobs.map(jobRow), "No jobs yet.", 7);
  return jobs.some((j) => !FINAL.has(j.status));
}

async function cancelJob(id) {
  try {
    await api("POST", `/jobs/${encodeURIComponent(id)}/cancel`);
    refresh();
  } catch (e) {
    showError("banner", e);
  }
}

// ---- recovery points ----

function tierState(view, tier) {
  const t = (view.tiers || []).find((x) => x.tier === tier);
  const s = t ? t.state : "not_present";
  return el("td", {}, el("span", { class: `tier ${s}` }, s.replace("_", " ")));
}

async function loadRecoveryPoints() {
  await ensureInstances();
  const name = $("rp-instance").value;
  if (!name) {
    fill($("rps").tBodies[0], [], "No instances.", 8);
    return false;
  }
  const views = await api("GET", `/instances/${encodeURIComponent(name)}/recovery-points`);
  const rows = views.map((v) => {
    const rp = v.recovery_point;
    return el(
      "tr",
      { "data-rp": rp.id, class: v.soft_deleted ? "muted" : null },
      el("td", {}, el("code", {}, rp.id), v.soft_deleted ? " (soft-deleted)" : ""),
      el("td", {}, when(rp.created_at)),
      TIERS.map((t) => tierState(v, t)),
      el("td", { class: "num" }, v.resource_count ?? ""),
      el("td", {}, (v.warnings || []).length ? el("span", { class: "warn", title: v.warnings.join("\n") }, `${v.warnings.length}`) : ""),
      el(
        "td",
        {},
        v.soft_deleted
          ? ""
          : el("button", { type: "button", class: "restore", onclick: () => restoreFrom(name, v) }, "Restore…"),
      ),
    );
  });
  fill($("rps").tBodies[0], rows, "No recovery points yet: back the instance up.", 8);
  return views.some((v) => (v.tiers || []).some((t) => t.state === "creating"));
}

function restoreFrom(instance, view) {
  state.prefill = {
    instance,
    rp: view.recovery_point.id,
    tier: ["vault", "operational", "secondary"].find((t) =>
      (view.tiers || []).some((x) => x.tier === t && x.state === "available"),
    ),
  };
  location.hash = "#restore";
}

// ---- the restore wizard: choose, read the dry-run plan, run, follow ----

async function loadRpChoices() {
  const instance = $("r-instance").value;
  const select = $("r-rp");
  if (!instance) return;
  const views = await api("GET", `/instances/${encodeURIComponent(instance)}/recovery-points`);
  const before = select.value;
  const usable = views.filter((v) => !v.soft_deleted);
  select.replaceChildren(
    ...usable.map((v) => {
      const tiers = (v.tiers || []).filter((t) => t.state === "available").map((t) => t.tier);
      return el("option", { value: v.recovery_point.id }, `${v.recovery_point.id} (${ago(v.recovery_point.created_at)}; ${tiers.join(", ") || "no tier available"})`);
    }),
  );
  if (usable.some((v) => v.recovery_point.id === before)) select.value = before;
}

async function loadRestore() {
  await ensureInstances();
  if (state.prefill) {
    const p = state.prefill;
    state.prefill = null;
    $("r-instance").value = p.instance;
    await loadRpChoices();
    $("r-rp").value = p.rp;
    if (p.tier) $("r-tier").value = p.tier;
    showStep("choose");
  } else if ($("r-rp").options.length === 0) {
    await loadRpChoices();
  }
  if (state.following) return followRestore();
  return false;
}

function restoreRequest() {
  const list = (s) => s.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
  const mapping = {};
  for (const pair of list($("r-mapping").value)) {
    const [from, to] = pair.split("=");
    if (!from || !to) throw new Error(`namespace mapping ${pair}: write it as from=to`);
    mapping[from] = to;
  }
  const request = {
    instance: $("r-instance").value,
    recovery_point_id: $("r-rp").value,
    from: $("r-tier").value,
    existing: $("r-existing").value,
    include_volumes: $("r-volumes").checked,
  };
  const namespaces = list($("r-namespaces").value);
  if (namespaces.length) request.namespaces = namespaces;
  if (Object.keys(mapping).length) request.namespace_mapping = mapping;
  const target = $("r-target").value.trim();
  if (target) request.target_cluster = target;
  return request;
}

function showStep(step) {
  for (const s of ["choose", "plan", "run"]) {
    $(`step-${s}`).classList.toggle("current", s === step);
  }
  $("restore-form").hidden = step !== "choose";
  $("plan").hidden = step !== "plan";
  $("restore-run").hidden = step !== "run";
  if (step === "choose") {
    state.following = null;
    state.plan = null;
  }
}

async function planRestore(event) {
  event.preventDefault();
  showError("restore-error", null);
  $("plan-button").disabled = true;
  try {
    const request = restoreRequest();
    if (!request.recovery_point_id) throw new Error("choose a recovery point (back the instance up first)");
    const view = await api("POST", "/restores/plan", request);
    state.plan = { request: { ...request, restore_id: view.restore_id }, view };
    renderPlan(view);
    showStep("plan");
  } catch (e) {
    showError("restore-error", e);
  } finally {
    $("plan-button").disabled = false;
  }
}

function renderPlan(view) {
  $("plan-id").textContent = view.restore_id;
  $("plan-summary").textContent = view.summary || "";
  $("plan-note").textContent = view.note || (view.conflicts ? `${view.conflicts} conflict(s): those objects exist in the target and differ; choose "patch" or another namespace.` : "");
  const rows = view.entries.map((e) =>
    el(
      "tr",
      { class: `action-${e.action}` },
      el("td", { class: "num" }, e.wave),
      el("td", {}, el("span", { class: `action ${e.action}` }, e.action)),
      el("td", {}, e.object),
      el("td", {}, e.new_disk ? el("code", {}, e.new_disk) : ""),
      el("td", { class: "muted" }, e.reason || ""),
    ),
  );
  fill($("plan-entries").tBodies[0], rows, view.planned ? "Nothing to restore." : "No plan: see the note above.", 5);
}

async function runRestore() {
  if (!state.plan) return;
  showError("restore-error", null);
  $("run-button").disabled = true;
  try {
    // The plan's restore id, so the new disks get the names the plan showed.
    const submitted = await api("POST", "/restores", state.plan.request);
    state.following = submitted.restore_id || submitted.job_id;
    $("run-id").textContent = state.following;
    $("run-status").replaceChildren(badge("queued"));
    $("run-stages").replaceChildren();
    showStep("run");
    refresh();
  } catch (e) {
    showError("restore-error", e);
  } finally {
    $("run-button").disabled = false;
  }
}

async function followRestore() {
  const job = await api("GET", `/restores/${encodeURIComponent(state.following)}`);
  $("run-status").replaceChildren(badge(job.status));
  $("run-stages").replaceChildren(...(job.stages || []).map(stageCell));
  return !FINAL.has(job.status);
}

// ---- dead letters and drills ----

async function loadDeadLetters() {
  const letters = await api("GET", "/dead-letters?limit=200");
  const rows = letters.map((d) =>
    el(
      "tr",
      { "data-job": d.job_id || "" },
      el("td", {}, d.stage),
      el("td", {}, d.job_id ? el("code", {}, d.job_id) : el("span", { class: "muted" }, "unknown")),
      el("td", {}, d.kind || ""),
      el("td", { class: "num" }, d.attempts ?? ""),
      el("td", {}, d.dead_lettered_at ? when(d.dead_lettered_at) : ""),
      el(
        "td",
        {},
        el("div", { class: "reason" }, d.reason),
        (d.error_chain || []).filter((c) => !d.reason.includes(c)).map((c) => el("div", { class: "muted" }, c)),
      ),
    ),
  );
  fill($("dead-letters").tBodies[0], rows, "No dead letters: every job either finished or is still being tried.", 6);
  return false;
}

async function loadDrills() {
  const drills = await api("GET", "/drills");
  const rows = drills.map((d) =>
    el(
      "tr",
      { "data-drill": d.id },
      el("td", {}, el("code", {}, d.id)),
      el("td", {}, d.instance),
      el("td", {}, d.tier),
      el("td", {}, el("code", {}, d.recovery_point_id)),
      el("td", {}, badge(d.status), d.reason ? el("div", { class: "muted" }, d.reason) : ""),
      el("td", { class: "num rto" }, seconds(d.rto_seconds)),
      el("td", { class: "num" }, seconds(d.restore_seconds)),
      el("td", { class: "num" }, bytes(d.bytes_moved)),
      el("td", { class: "num" }, d.objects_verified ?? ""),
      el("td", {}, when(d.started_at)),
    ),
  );
  fill($("drills").tBodies[0], rows, "No drills yet: run one with stowage drill run.", 10);
  return false;
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("login-error").textContent = "";
    start();
  });
  $("sign-out").addEventListener("click", () => signIn("Token forgotten."));
  $("rp-instance").addEventListener("change", () => refresh());
  $("r-instance").addEventListener("change", () => loadRpChoices().catch((e) => showError("restore-error", e)));
  $("restore-form").addEventListener("submit", planRestore);
  $("run-button").addEventListener("click", runRestore);
  $("replan-button").addEventListener("click", () => showStep("choose"));
  $("another-button").addEventListener("click", () => showStep("choose"));
  window.addEventListener("hashchange", () => {
    if ($("login").hidden) route();
  });
  start();
});
