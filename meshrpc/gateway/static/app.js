// The meshrpc gateway page: the mesh live over /events (Server-Sent Events), a page per service
// with its methods and attributes from /pyro/<name>/$meta, and forms that call them. No framework.
"use strict";

const state = {
  entries: new Map(),      // id -> row from the gateway (plus receivedAt)
  calls: {},               // service name -> {latency_ms, ok, error, at}
  realms: [], expose: "", tags: new Set(), key: sessionStorage.getItem("meshrpc-gateway-key") || "",
  source: null, metaCache: new Map(),
};
const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k.startsWith("data-")) el.setAttribute(k, v);
    else el[k] = v;
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

function headers(extra) {
  const all = Object.assign({"Accept": "application/json"}, extra || {});
  if (state.key) all["X-Pyro-Gateway-Key"] = state.key;
  return all;
}

function ageOf(row) {
  if (row.age === null || row.age === undefined) return null;
  return row.age + (performance.now() - row.receivedAt) / 1000;
}

function fmtAge(seconds) {
  if (seconds === null) return "–";
  if (seconds < 5) return "now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  return `${Math.round(seconds / 60)} min ago`;
}

function health(row) {
  const call = state.calls[row.name];
  const age = ageOf(row);
  if (call && call.reachable === false) return ["error", `unreachable: ${call.error}`];
  if (age !== null && age > 5) return ["quiet", "quiet"];
  return ["live", "live"];
}

function lastCall(name) {
  const call = state.calls[name];
  if (!call) return "–";
  return `${call.latency_ms.toFixed(1)} ms${call.ok ? "" : " · " + call.error}`;
}

// ------------------------------------------------------------------ live updates

function connect() {
  if (state.source) state.source.close();
  const url = "/events" + (state.key ? "?$key=" + encodeURIComponent(state.key) : "");
  const source = state.source = new EventSource(url);
  setStatus("connecting", "connecting…");
  source.addEventListener("snapshot", (e) => {
    const data = JSON.parse(e.data);
    state.entries.clear();
    for (const row of data.entries) state.entries.set(row.id, Object.assign(row, {receivedAt: performance.now()}));
    state.calls = data.calls || {};
    state.realms = data.realms; state.expose = data.expose;
    $("realms").textContent = "realm " + data.realms.join(", ");
    setStatus("live", "live");
    $("keybar").hidden = true;
    $("empty").textContent = EMPTY_TEXT;
    render();
  });
  for (const kind of ["added", "updated", "removed"]) {
    source.addEventListener(kind, (e) => {
      const row = JSON.parse(e.data);
      if (kind === "removed") state.entries.delete(row.id);
      else state.entries.set(row.id, Object.assign(row, {receivedAt: performance.now(), fresh: kind === "added"}));
      logActivity(kind, row);
      render();
    });
  }
  source.addEventListener("call", (e) => {
    const call = JSON.parse(e.data);
    state.calls[call.name] = call;
    render();
  });
  source.addEventListener("tick", (e) => {
    const data = JSON.parse(e.data);
    const now = performance.now();
    for (const [id, age] of Object.entries(data.ages)) {
      const row = state.entries.get(id);
      if (row) { row.age = age; row.receivedAt = now; }
    }
    state.calls = data.calls;
    render();
  });
  source.onerror = async () => {
    setStatus("down", "reconnecting…");
    const probe = await fetch("/mesh", {headers: headers()}).catch(() => null);
    if (probe && probe.status === 403) { source.close(); askForKey(); }
  };
}

function setStatus(kind, text) { const s = $("status"); s.dataset.state = kind; s.textContent = text; }

const EMPTY_TEXT = $("empty").textContent;

function askForKey() {
  setStatus("down", "key needed");
  $("empty").textContent = "This gateway shows the mesh to those who have its key.";
  $("keybar").hidden = false;
  $("keyinput").focus();
}

$("keyform").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("keyinput").value;
  sessionStorage.setItem("meshrpc-gateway-key", state.key);
  connect();
});

function logActivity(kind, row) {
  const mark = {added: "+", removed: "−", updated: "~"}[kind];
  const item = h("li", {class: kind}, `${new Date().toLocaleTimeString()}  ${mark} ${row.name}  ${row.uri}`);
  $("activity").prepend(item);
  while ($("activity").children.length > 50) $("activity").lastChild.remove();
}

// ------------------------------------------------------------------ the list

function visibleEntries() {
  const text = $("search").value.trim().toLowerCase();
  const realm = $("realm-filter").value;
  return [...state.entries.values()]
    .filter((r) => (!text || r.name.toLowerCase().includes(text)) && (!realm || r.realm === realm)
                   && [...state.tags].every((t) => r.tags.includes(t)))
    .sort((a, b) => a.name.localeCompare(b.name) || a.uri.localeCompare(b.uri));
}

function renderFilters() {
  const realms = new Set(state.realms);
  for (const r of state.entries.values()) realms.add(r.realm);
  const select = $("realm-filter");
  const chosen = select.value;
  select.replaceChildren(h("option", {value: ""}, "all realms"),
                         ...[...realms].sort().map((r) => h("option", {value: r, selected: r === chosen}, r)));
  const tags = new Set();
  for (const r of state.entries.values()) r.tags.forEach((t) => tags.add(t));
  for (const t of [...state.tags]) if (!tags.has(t)) state.tags.delete(t);
  $("tag-filter").replaceChildren(...[...tags].sort().map((t) => h("span", {
    class: "tag" + (state.tags.has(t) ? " on" : ""), "data-tag": t, title: "show only services with this tag",
    onclick: () => { state.tags.has(t) ? state.tags.delete(t) : state.tags.add(t); render(); },
  }, t)));
}

function renderList() {
  const rows = visibleEntries();
  const body = $("services").tBodies[0];
  body.replaceChildren(...rows.map((r) => {
    const [kind, text] = health(r);
    const tr = h("tr", {"data-name": r.name, "data-id": r.id, class: r.fresh ? "arrived" : "",
                        onclick: () => { location.hash = "#/s/" + encodeURIComponent(r.name); }},
      h("td", {}, h("span", {class: "name"}, r.name), r.exposed ? null : h("span", {class: "oneway", title: "not callable through this gateway"}, "  view only")),
      h("td", {}, h("div", {class: "tags"}, r.tags.map((t) => h("span", {class: "tag"}, t)))),
      h("td", {class: "mono"}, r.host),
      h("td", {"data-age": r.id}, fmtAge(ageOf(r))),
      h("td", {}, h("span", {class: "health", "data-state": kind}, text)),
      h("td", {class: "mono"}, lastCall(r.name)));
    r.fresh = false;
    return tr;
  }));
  $("empty").hidden = rows.length > 0;
  $("services").hidden = rows.length === 0;
}

// ------------------------------------------------------------------ one service

async function renderService(name) {
  $("svc-name").textContent = name;
  const providers = [...state.entries.values()].filter((r) => r.name === name);
  const tags = new Set(); providers.forEach((p) => p.tags.forEach((t) => tags.add(t)));
  $("svc-tags").replaceChildren(...[...tags].sort().map((t) => h("span", {class: "tag"}, t)));
  $("svc-providers").replaceChildren(...providers.map((p) => h("tr", {},
    h("td", {class: "mono"}, p.uri), h("td", {class: "mono"}, p.host), h("td", {}, p.realm),
    h("td", {class: "mono"}, p.node), h("td", {}, fmtAge(ageOf(p))))));
  if (!providers.length) $("svc-providers").replaceChildren(h("tr", {}, h("td", {colSpan: 5, class: "muted"}, "no provider on the mesh right now")));
  const exposed = providers.length ? providers.every((p) => p.exposed) : true;
  const note = $("svc-note");
  note.hidden = exposed;
  note.textContent = exposed ? "" : `This name is not callable through this gateway (its expose pattern is ${JSON.stringify(state.expose)}).`;
  if (state.metaCache.get("shown") === name) return;     // keep forms (and their results) while updates arrive
  state.metaCache.set("shown", name);
  $("svc-methods").replaceChildren(h("p", {class: "muted"}, "loading…"));
  $("svc-attrs").replaceChildren();
  if (!exposed) { $("svc-methods").replaceChildren(); return; }
  const res = await fetch(`/pyro/${encodeURIComponent(name)}/$meta`, {headers: headers()});
  const meta = await res.json().catch(() => null);
  if (!res.ok || !meta) {
    $("svc-methods").replaceChildren(h("pre", {class: "result", "data-state": "error"}, describeError(res.status, meta)));
    return;
  }
  const oneway = new Set(meta.oneway || []);
  $("svc-methods").replaceChildren(...meta.methods.map((m) => memberForm(name, m, false, oneway.has(m))));
  $("svc-attrs").replaceChildren(...(meta.attributes.length ? meta.attributes.map((a) => memberForm(name, a, true, false))
                                                        : [h("p", {class: "muted"}, "none")]));
}

function memberForm(service, member, isAttr, isOneway) {
  const result = h("pre", {class: "result", "data-method": member, hidden: true});
  const args = isAttr ? null : h("input", {class: "args", name: "args", placeholder: "arguments as JSON, e.g. [1, \"two\"]", value: ""});
  const kwargs = isAttr ? null : h("input", {class: "kwargs", name: "kwargs", placeholder: "keywords, e.g. {\"x\": 1}", value: ""});
  const button = h("button", {type: "submit"}, isAttr ? "Read" : "Call");
  const form = h("form", {"data-method": member, onsubmit: async (e) => {
    e.preventDefault();
    let body;
    try {
      body = isAttr ? null : {args: parseJson(args.value, [], "arguments"), kwargs: parseJson(kwargs.value, {}, "keywords")};
    } catch (err) { return showResult(result, "error", String(err.message), ""); }
    button.disabled = true;
    const started = performance.now();
    try {
      const res = await fetch(`/pyro/${encodeURIComponent(service)}/${encodeURIComponent(member)}`, isAttr
        ? {headers: headers()}
        : {method: "POST", headers: headers({"Content-Type": "application/json"}), body: JSON.stringify(body)});
      const text = await res.text();
      const ms = `${(performance.now() - started).toFixed(1)} ms · HTTP ${res.status}`;
      let value = null; try { value = text ? JSON.parse(text) : null; } catch (_) { value = text; }
      if (res.ok) showResult(result, "ok", text === "" ? "(oneway: no result)" : JSON.stringify(value, null, 2), ms);
      else showResult(result, "error", describeError(res.status, value), ms);
    } catch (err) {
      showResult(result, "error", "request failed: " + err, "");
    } finally { button.disabled = false; }
  }}, h("span", {class: "mname mono"}, member), isOneway ? h("span", {class: "oneway"}, "oneway") : null, args, kwargs, button);
  return h("div", {class: "member"}, form, result);
}

function parseJson(text, empty, what) {
  if (!text.trim()) return empty;
  try { return JSON.parse(text); } catch (err) { throw new Error(`the ${what} are not valid JSON: ${err.message}`); }
}

function describeError(status, value) {
  if (value && typeof value === "object" && value.__exception__) {
    const lines = [`${value.__class__}: ${(value.args || []).join(", ")}`];
    const tb = value.attributes && value.attributes._pyroTraceback;
    if (tb) lines.push("", "remote traceback:", Array.isArray(tb) ? tb.join("") : String(tb));
    return lines.join("\n");
  }
  return `HTTP ${status}: ${typeof value === "string" ? value : JSON.stringify(value)}`;
}

function showResult(el, kind, text, meta) {
  el.hidden = false; el.dataset.state = kind;
  el.replaceChildren(h("div", {class: "meta"}, meta), h("div", {class: "value"}, text));
}

// ------------------------------------------------------------------ routing and rendering

function route() {
  const m = location.hash.match(/^#\/s\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

function render() {
  const service = route();
  $("list-view").hidden = service !== null;
  $("service-view").hidden = service === null;
  if (service === null) { state.metaCache.delete("shown"); renderFilters(); renderList(); }
  else renderService(service);
}

window.addEventListener("hashchange", render);
$("search").addEventListener("input", render);
$("realm-filter").addEventListener("change", render);
setInterval(() => {               // ages tick between events
  for (const cell of document.querySelectorAll("[data-age]")) {
    const row = state.entries.get(cell.dataset.age);
    if (row) cell.textContent = fmtAge(ageOf(row));
  }
}, 1000);
connect();
render();
