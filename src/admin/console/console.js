// The airbag console: reads this admin listener's JSON API with the token kept in
// sessionStorage (this tab only) and redraws every few seconds. No framework, no build
// step, nothing loaded from elsewhere.
"use strict";

const REFRESH_MS = 3000;
const TOKEN_KEY = "airbag-admin-token";
const FAULTS = ["status:503", "hang", "latency:5s", "error_rate:0.3", "broken_key"];

const $ = (selector) => document.querySelector(selector);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

// One admin API call. Throws {status, body} for anything but 2xx.
async function api(method, path, body, extraHeaders) {
  const headers = Object.assign({}, extraHeaders || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch (_) { parsed = { error: text }; }
  if (!response.ok) {
    throw { status: response.status, body: parsed || {}, etag: response.headers.get("ETag") };
  }
  return { body: parsed, etag: response.headers.get("ETag") };
}

function element(tag, attributes, children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children || []) node.append(child);
  return node;
}

function row(cells) {
  return element("tr", {}, cells.map((cell) =>
    cell instanceof Node ? element("td", {}, [cell]) : element("td", { text: cell == null ? "–" : String(cell) })));
}

function fillTable(selector, rows) {
  const body = $(selector + " tbody");
  body.replaceChildren(...rows);
}

function percent(share) {
  if (share === 0) return "0%";
  const value = share * 100;
  return (value < 0.1 ? value.toFixed(2) : value.toFixed(1)) + "%";
}

function errorText(failure) {
  if (failure && failure.body && failure.body.error) return failure.body.error;
  return String(failure && failure.message ? failure.message : failure);
}

// ---------------------------------------------------------------------------------
// Login.

async function start() {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  wireCanned();
  wireCache();
  try {
    await api("GET", "/admin/status");
    openConsole();
  } catch (failure) {
    if (failure.status === 401) showLogin(token() ? "The saved token was refused." : "");
    else showLogin(errorText(failure));
  }
}

function showLogin(message) {
  $("#login").classList.remove("hidden");
  $("#console").classList.add("hidden");
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

async function login(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  try {
    await api("GET", "/admin/status");
    openConsole();
  } catch (failure) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(failure.status === 401 ? "That token was refused." : errorText(failure));
  }
}

let refreshTimer = null;

function openConsole() {
  $("#login").classList.add("hidden");
  $("#console").classList.remove("hidden");
  if (token()) $("#logout").classList.remove("hidden");
  refresh();
  if (!refreshTimer) refreshTimer = setInterval(refresh, REFRESH_MS);
}

async function refresh() {
  try {
    const [status, traffic, requests, tokens, canned] = await Promise.all([
      api("GET", "/admin/status"),
      api("GET", "/admin/traffic"),
      api("GET", "/admin/requests"),
      api("GET", "/admin/tokens"),
      api("GET", "/admin/canned"),
    ]);
    drawHealth(traffic.body, status.body);
    drawTraffic(traffic.body);
    drawTargets(status.body);
    drawCanned(canned.body);
    drawCache(status.body.cache);
    drawTokens(tokens.body);
    drawRequests(requests.body);
    $("#refreshed").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (failure) {
    if (failure.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("The token was refused; enter it again.");
    } else {
      $("#refreshed").textContent = "refresh failed: " + errorText(failure);
    }
  }
}

// ---------------------------------------------------------------------------------
// Health and traffic.

function drawHealth(traffic, status) {
  const minute = traffic.last_minute;
  const windowTotals = traffic.window;
  const open = status.targets.filter((target) => target.breaker.state !== "closed").length;
  setHeadline("#degraded-minute", percent(minute.degraded_share), minute.degraded > 0);
  setHeadline("#degraded-window", percent(windowTotals.degraded_share), windowTotals.degraded > 0);
  setHeadline("#requests-minute", String(minute.requests), false);
  setHeadline("#open-breakers", String(open), open > 0);
}

function setHeadline(selector, text, alarming) {
  const node = $(selector);
  node.textContent = text;
  node.parentElement.classList.toggle("alarm", alarming);
}

const RUNG_ORDER = ["cache", "provider", "degraded", "none"];

function drawTraffic(traffic) {
  const svg = $("#traffic-chart");
  const buckets = traffic.buckets;
  const peak = Math.max(1, ...buckets.map((bucket) => bucket.requests));
  const width = 900 / buckets.length;
  const bars = [];
  buckets.forEach((bucket, index) => {
    // Stale cache hits, fallbacks and canned answers are degraded; errors are `none`.
    const none = bucket.by_rung.none || 0;
    const parts = {
      cache: (bucket.by_rung.cache || 0) - (bucket.by_served_by["cache:stale"] || 0),
      degraded: bucket.degraded - none,
      none,
    };
    parts.provider = Math.max(0, bucket.requests - parts.cache - parts.degraded - none);
    let y = 120;
    for (const rung of RUNG_ORDER) {
      const height = (parts[rung] / peak) * 118;
      if (height <= 0) continue;
      y -= height;
      const bar = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      bar.setAttribute("x", String(index * width));
      bar.setAttribute("y", String(y));
      bar.setAttribute("width", String(Math.max(1, width - 1)));
      bar.setAttribute("height", String(height));
      bar.setAttribute("class", "rung-" + rung);
      const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = new Date(bucket.start_unix * 1000).toLocaleTimeString() + ": " + parts[rung] + " " + rung;
      bar.append(title);
      bars.push(bar);
    }
  });
  svg.replaceChildren(...bars);
  const rungs = Object.entries(traffic.window.by_rung).sort((a, b) => b[1] - a[1]);
  fillTable("#rungs", rungs.map(([rung, count]) => row([rung, count])));
  const servedBy = Object.entries(traffic.window.by_served_by).sort((a, b) => b[1] - a[1]);
  fillTable("#served-by", servedBy.map(([name, count]) => row([name, count])));
}

// ---------------------------------------------------------------------------------
// Targets: breakers, drills, faults.

function drawTargets(status) {
  const rows = status.targets.map((target) => {
    const breaker = target.breaker;
    const state = element("span", { class: "state state-" + breaker.state, text: breaker.state });
    const drilling = breaker.reason === "drill" && breaker.state === "open";
    const drill = drilling
      ? element("button", { type: "button", text: "End drill", "data-target": target.target,
          onclick: () => act("DELETE", "/admin/drills/" + target.target) })
      : element("button", { type: "button", text: "Drill 60s", "data-target": target.target,
          onclick: () => act("POST", "/admin/drills", { target: target.target, duration: "60s" }) });
    const faultSelect = element("select", { "aria-label": "fault for " + target.target },
      FAULTS.map((fault) => element("option", { value: fault, text: fault })));
    const faultDuration = element("input", { value: "60s", size: "5", "aria-label": "fault duration for " + target.target });
    const inject = element("button", { type: "button", text: "Inject",
      onclick: () => act("POST", "/admin/faults",
        { target: target.target, fault: faultSelect.value, duration: faultDuration.value.trim() }) });
    const faultCell = target.fault
      ? element("span", {}, [
          target.fault.fault + " (" + Math.round(target.fault.seconds_left || 0) + "s) ",
          element("button", { type: "button", text: "End",
            onclick: () => act("DELETE", "/admin/faults/" + target.target) }),
        ])
      : "none";
    const probeIn = breaker.reopens_in_seconds == null ? null : Math.ceil(breaker.reopens_in_seconds) + "s";
    const quality = target.quality && target.quality.mean != null ? target.quality.mean.toFixed(2) : null;
    const tr = row([
      target.target, state, breaker.reason, breaker.window_requests + " / " + breaker.window_failures,
      quality, probeIn, faultCell, drill, element("span", {}, [faultSelect, faultDuration, inject]),
    ]);
    tr.setAttribute("data-target", target.target);
    return tr;
  });
  fillTable("#targets", rows);
}

async function act(method, path, body) {
  try {
    await api(method, path, body);
    $("#targets-message").textContent = "";
  } catch (failure) {
    $("#targets-message").textContent = errorText(failure);
  }
  refresh();
}

// ---------------------------------------------------------------------------------
// Canned answers.

let editing = null; // {id, etag} of the entry in the editor; null for a new one

function drawCanned(canned) {
  const rows = canned.entries.map((entry) => {
    const matches = entry.patterns.length + " patterns, " + entry.examples.length + " examples";
    const buttons = element("span", {}, [
      element("button", { type: "button", text: "Edit", onclick: () => openEditor(entry.id) }),
      element("button", { type: "button", text: "Delete", onclick: () => deleteEntry(entry) }),
    ]);
    const tr = row([entry.id, entry.routes.join(", "), matches, entry.priority, entry.text, buttons]);
    tr.setAttribute("data-entry", entry.id);
    return tr;
  });
  fillTable("#canned", rows);
  $("#canned-problems").textContent = canned.problems
    .map((problem) => problem.file + ": " + problem.problem).join("\n");
}

function wireCanned() {
  $("#canned-new").addEventListener("click", () => showEditor(null, {
    routes: ["*"], patterns: [], examples: [], example_similarity: 0.8, priority: 0, text: "",
  }));
  $("#editor-cancel").addEventListener("click", hideEditor);
  $("#editor-reload").addEventListener("click", () => openEditor(editing.id));
  $("#canned-editor").addEventListener("submit", saveEntry);
  $("#preview-form").addEventListener("submit", preview);
}

async function openEditor(id) {
  try {
    const { body, etag } = await api("GET", "/admin/canned/" + encodeURIComponent(id));
    showEditor({ id, etag }, body);
  } catch (failure) {
    $("#canned-problems").textContent = errorText(failure);
  }
}

function showEditor(target, entry) {
  editing = target;
  const form = $("#canned-editor");
  form.classList.remove("hidden");
  $("#editor-title").textContent = target ? "Edit " + target.id : "New entry";
  $("#editor-conflict").classList.add("hidden");
  clearFieldErrors();
  $("#field-id").value = target ? target.id : "";
  $("#field-id").disabled = Boolean(target);
  $("#field-routes").value = (entry.routes || []).join("\n");
  $("#field-patterns").value = (entry.patterns || []).join("\n");
  $("#field-examples").value = (entry.examples || []).join("\n");
  $("#field-example-similarity").value = String(entry.example_similarity);
  $("#field-priority").value = String(entry.priority);
  $("#field-text").value = entry.text || "";
  $("#field-text").focus();
}

function hideEditor() {
  editing = null;
  $("#canned-editor").classList.add("hidden");
}

function clearFieldErrors() {
  document.querySelectorAll(".field-error").forEach((node) => { node.textContent = ""; });
  document.querySelectorAll(".invalid").forEach((node) => node.classList.remove("invalid"));
}

function lines(selector) {
  return $(selector).value.split("\n").map((line) => line.trim()).filter((line) => line);
}

// A number when the field holds one; the text as typed otherwise, so the server names
// the field and the problem.
function numberOrText(selector) {
  const text = $(selector).value.trim();
  return text !== "" && !Number.isNaN(Number(text)) ? Number(text) : text;
}

async function saveEntry(event) {
  event.preventDefault();
  clearFieldErrors();
  const entry = {
    routes: lines("#field-routes"),
    patterns: lines("#field-patterns"),
    examples: lines("#field-examples"),
    example_similarity: numberOrText("#field-example-similarity"),
    priority: numberOrText("#field-priority"),
    text: $("#field-text").value,
  };
  try {
    if (editing) {
      await api("PUT", "/admin/canned/" + encodeURIComponent(editing.id), entry, { "If-Match": editing.etag });
    } else {
      entry.id = $("#field-id").value.trim();
      await api("POST", "/admin/canned", entry);
    }
    hideEditor();
    refresh();
  } catch (failure) {
    if (failure.status === 412) {
      $("#editor-conflict").classList.remove("hidden");
      return;
    }
    showFieldError(failure.body && failure.body.field ? failure.body.field : "body", errorText(failure));
  }
}

function showFieldError(field, message) {
  // `patterns[1]` belongs to the patterns field.
  const name = String(field).replace(/\[.*$/, "").replace(/\..*$/, "");
  const slot = document.querySelector('.field-error[data-field="' + name + '"]')
    || document.querySelector('.field-error[data-field="body"]');
  slot.textContent = message;
  const input = document.querySelector('#canned-editor [name="' + name + '"]');
  if (input) input.classList.add("invalid");
}

async function deleteEntry(entry) {
  if (!confirm("Delete the canned entry " + entry.id + "?")) return;
  try {
    await api("DELETE", "/admin/canned/" + encodeURIComponent(entry.id), undefined, { "If-Match": entry.etag });
  } catch (failure) {
    $("#canned-problems").textContent = errorText(failure);
  }
  refresh();
}

async function preview(event) {
  event.preventDefault();
  const result = $("#preview-result");
  try {
    const { body } = await api("POST", "/admin/canned/_preview",
      { model: $("#preview-model").value.trim(), message: $("#preview-message").value });
    result.textContent = body.entry
      ? body.entry + " (by " + body.matched_by + (body.similarity != null ? ", similarity " + body.similarity.toFixed(2) : "") + "): " + body.text
      : "No entry would answer: the client would get a 503.";
  } catch (failure) {
    result.textContent = errorText(failure);
  }
}

// ---------------------------------------------------------------------------------
// Cache.

function drawCache(cache) {
  const stats = $("#cache-stats");
  if (!cache || !cache.enabled) {
    stats.replaceChildren(element("dt", { text: "cache" }), element("dd", { text: "off" }));
    return;
  }
  const pairs = [
    ["entries", cache.entries == null ? "unknown (store unreachable)" : cache.entries],
    ["store", cache.store],
    ["exact hit ratio", percent(cache.exact.hit_ratio) + " of " + cache.exact.lookups],
    ["semantic hit ratio", percent(cache.semantic_lookups.hit_ratio) + " of " + cache.semantic_lookups.lookups],
    ["in memory", cache.memory.entries + " entries"],
  ];
  stats.replaceChildren(...pairs.flatMap(([name, value]) => [
    element("dt", { text: name }), element("dd", { text: String(value), "data-stat": name }),
  ]));
}

function wireCache() {
  $("#purge-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const purge = {};
    for (const field of ["tenant", "route", "namespace"]) {
      const value = $("#purge-" + field).value.trim();
      if (value) purge[field] = value;
    }
    const result = $("#purge-result");
    if (Object.keys(purge).length === 0) {
      result.textContent = "Name a tenant, a route or a namespace to purge.";
      return;
    }
    if (!confirm("Purge the cache entries of " + JSON.stringify(purge) + "?")) return;
    try {
      const { body } = await api("POST", "/admin/cache/purge", purge);
      result.textContent = "Purged " + JSON.stringify(body.purged) + ".";
    } catch (failure) {
      result.textContent = errorText(failure);
    }
    refresh();
  });
}

// ---------------------------------------------------------------------------------
// Tokens and requests.

function drawTokens(tokens) {
  fillTable("#tokens", tokens.targets.map((target) => row([
    target.target, target.input, target.cached, target.output,
    target.cost_usd == null ? "not priced" : target.cost_usd.toFixed(4),
  ])));
  const saved = tokens.cache_saved;
  $("#cache-saved").textContent = "The cache saved " + saved.input + " input and " + saved.output
    + " output tokens" + (saved.usd == null ? "." : " (" + saved.usd.toFixed(4) + " USD).");
}

function drawRequests(requests) {
  fillTable("#requests", requests.requests.slice(0, 50).map((request) => {
    const tr = row([
      new Date(request.time_unix_ms).toLocaleTimeString(), request.protocol, request.model,
      request.rung, request.served_by, request.attempts, request.latency_ms.toFixed(1),
      request.request_id,
    ]);
    if (request.degraded) tr.classList.add("degraded");
    return tr;
  }));
}

document.addEventListener("DOMContentLoaded", start);
