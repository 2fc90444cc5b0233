// The inspector page (/_voice/ui): what the inspection API says, for a person looking at what
// their app just did. Plain script, no build step, nothing from another host. Every request goes
// to this server's /_voice API with the admin key from the field as `Authorization: Bearer`
// (an EventSource cannot send that header, so the live journal is read with fetch streaming).
// Data is only ever put on the page as text (textContent), never as HTML.
"use strict";

const inspector = {
  key: "",
  journal: [], // newest last, as the API sends it
  tokens: [],
  sessions: [],
  faults: null, // null: this server has no faults API
  hasFaults: undefined, // unknown until the first refresh
  selected: null, // call id whose timeline is shown
  timeline: [],
  live: false,
  errors: [],
  refreshes: 0,
};
window.inspector = inspector;

const JOURNAL_SHOWN = 500;
const PAGE = 1000;
const $ = (selector) => document.querySelector(selector);

class ApiError extends Error {
  constructor(status, code, detail) {
    super(`${status} ${code}: ${detail}`);
    this.status = status;
    this.code = code;
  }
}

function headers() {
  return inspector.key ? { Authorization: `Bearer ${inspector.key}` } : {};
}

async function api(path) {
  const response = await fetch(`/_voice${path}`, { headers: headers(), cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const code = (body && body.code) || "http_error";
    throw new ApiError(response.status, code, (body && body.detail) || response.statusText);
  }
  return body;
}

async function all(path) {
  // Every page of a list (after=/next_after), oldest first.
  const items = [];
  let after = 0;
  for (let pages = 0; pages < 20; pages += 1) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=${PAGE}&after=${after}`);
    items.push(...page.items);
    if (page.next_after === null || page.next_after === undefined || page.items.length === 0) break;
    after = page.next_after;
  }
  return items;
}

// -- formatting ---------------------------------------------------------------------------------
function clock(at) {
  if (at === null || at === undefined) return "-";
  const d = new Date(at * 1000);
  return d.toISOString().slice(11, 23);
}

function details(item, skip) {
  return Object.entries(item)
    .filter(([name, value]) => !skip.includes(name) && value !== null && value !== undefined)
    .map(([name, value]) => `${name}=${typeof value === "string" ? value : JSON.stringify(value)}`)
    .join(" ");
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined || text === "" ? "-" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fill(table, rows, columns, empty) {
  const body = $(`${table} tbody`);
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(tr, empty);
    td.colSpan = 12;
    body.appendChild(tr);
    return [];
  }
  return rows.map((item) => {
    const tr = document.createElement("tr");
    for (const column of columns) column(tr, item);
    body.appendChild(tr);
    return tr;
  });
}

function status(text) {
  $("#status").textContent = text;
}

function failed(where, error) {
  const text = error instanceof ApiError ? error.message : `${where}: ${error}`;
  inspector.errors.push(text);
  if (error instanceof ApiError && (error.code === "admin_key_required" || error.code === "invalid_admin_key")) {
    status(`${text} — enter an admin key above`);
  } else {
    status(text);
  }
}

// -- the four panels ------------------------------------------------------------------------------
function renderTokens() {
  const rows = [...inspector.tokens].reverse();
  $("#tokens-count").textContent = `(${rows.length})`;
  fill("#tokens", rows, [
    (tr, t) => cell(tr, t.seq),
    (tr, t) => cell(tr, t.jti),
    (tr, t) => cell(tr, t.channel),
    (tr, t) => cell(tr, (t.agents || []).join(",")),
    (tr, t) => cell(tr, t.state, `state-${t.state}`),
    (tr, t) => cell(tr, clock(t.minted_at)),
    (tr, t) => cell(tr, clock(t.consumed_at)),
    (tr, t) => cell(tr, t.consumed_by),
    (tr, t) => cell(tr, t.node),
  ], "no tokens minted");
}

function renderSessions() {
  const rows = [...inspector.sessions].reverse();
  $("#sessions-count").textContent = `(${rows.length})`;
  const trs = fill("#sessions", rows, [
    (tr, s) => cell(tr, s.call_id),
    (tr, s) => cell(tr, s.transport),
    (tr, s) => cell(tr, s.agent_id),
    (tr, s) => cell(tr, s.state, `state-${s.state}`),
    (tr, s) => cell(tr, clock(s.started_at)),
    (tr, s) => cell(tr, clock(s.ended_at)),
    (tr, s) => cell(tr, s.end_reason),
    (tr, s) => cell(tr, s.node),
  ], "no sessions");
  trs.forEach((tr, index) => {
    const callId = rows[index].call_id;
    tr.dataset.callId = callId;
    if (callId === inspector.selected) tr.classList.add("selected");
    tr.addEventListener("click", () => select(callId));
  });
}

function renderTimeline() {
  $("#timeline-panel").hidden = inspector.selected === null;
  $("#timeline-call").textContent = inspector.selected || "";
  fill("#timeline", inspector.timeline, [
    (tr, t) => cell(tr, clock(t.at)),
    (tr, t) => cell(tr, t.direction),
    (tr, t) => cell(tr, t.event),
    (tr, t) => cell(tr, details(t, ["at", "direction", "event"]), "details"),
  ], "nothing yet");
}

function renderFaults() {
  if (inspector.faults === null) {
    $("#faults-count").textContent = "(not available on this server)";
    fill("#faults", [], [], "no faults API");
    return;
  }
  $("#faults-count").textContent = `(${inspector.faults.length})`;
  fill("#faults", inspector.faults, [
    (tr, f) => cell(tr, f.id),
    (tr, f) => cell(tr, f.target),
    (tr, f) => cell(tr, f.kind),
    (tr, f) => cell(tr, JSON.stringify(f.params || {}), "details"),
    (tr, f) => cell(tr, f.remaining === null ? "-" : f.remaining),
    (tr, f) => cell(tr, clock(f.expires_at)),
    (tr, f) => cell(tr, f.applied),
  ], "no active faults");
}

function renderJournal() {
  const rows = inspector.journal.slice(-JOURNAL_SHOWN).reverse();
  $("#journal-count").textContent = `(${inspector.journal.length})`;
  fill("#journal", rows, [
    (tr, e) => cell(tr, e.seq),
    (tr, e) => cell(tr, clock(e.at)),
    (tr, e) => cell(tr, e.kind, /refus/.test(e.kind) ? "kind-refused" : ""),
    (tr, e) => cell(tr, e.node),
    (tr, e) => cell(tr, details(e, ["seq", "at", "kind", "node"]), "details"),
  ], "the journal is empty");
}

// -- loading ------------------------------------------------------------------------------------
async function select(callId) {
  inspector.selected = callId;
  await loadTimeline();
  renderSessions();
}

async function loadTimeline() {
  if (inspector.selected === null) return renderTimeline();
  try {
    const session = await api(`/sessions/${encodeURIComponent(inspector.selected)}`);
    inspector.timeline = session.timeline || [];
  } catch (error) {
    inspector.timeline = [];
    failed("timeline", error);
  }
  renderTimeline();
}

async function refresh() {
  try {
    const [tokens, sessions] = await Promise.all([all("/tokens"), all("/sessions")]);
    inspector.tokens = tokens;
    inspector.sessions = sessions;
    if (inspector.hasFaults !== false) {
      // Asked once per start: a server without the faults API answers 404, and is not asked again.
      try {
        inspector.faults = (await api("/faults")).items;
        inspector.hasFaults = true;
      } catch (error) {
        if (!(error instanceof ApiError && error.status === 404)) throw error;
        inspector.faults = null;
        inspector.hasFaults = false;
      }
    }
    renderTokens();
    renderSessions();
    renderFaults();
    await loadTimeline();
    inspector.refreshes += 1;
    status("");
  } catch (error) {
    failed("refresh", error);
  }
}

let pending = null;
function soon() {
  // Journal entries come in bursts (a mint, a consume, a session start): one refresh per burst.
  if (pending !== null) return;
  pending = setTimeout(() => {
    pending = null;
    refresh();
  }, 200);
}

function add(entry) {
  const last = inspector.journal.length ? inspector.journal[inspector.journal.length - 1].seq : 0;
  if (entry.seq <= last) return;
  inspector.journal.push(entry);
  if (inspector.journal.length > 5 * JOURNAL_SHOWN) inspector.journal.splice(0, JOURNAL_SHOWN);
  renderJournal();
  soon();
}

let stream = null;
async function follow() {
  // GET /_voice/journal/stream, read as server-sent events by hand; reconnects from the last seq.
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  while (!controller.signal.aborted) {
    const last = inspector.journal.length ? inspector.journal[inspector.journal.length - 1].seq : 0;
    try {
      const response = await fetch(`/_voice/journal/stream?after=${last}`, {
        headers: headers(),
        signal: controller.signal,
        cache: "no-store",
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new ApiError(response.status, body.code || "http_error", body.detail || response.statusText);
      }
      setLive(true);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of block.split("\n")) {
            if (line.startsWith("data:")) add(JSON.parse(line.slice(5)));
          }
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      setLive(false);
      failed("journal stream", error);
      if (error instanceof ApiError && error.status < 500) return; // a key problem: wait for a new key
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function setLive(on) {
  inspector.live = on;
  const live = $("#live");
  live.className = on ? "on" : "off";
  live.textContent = on ? "journal: live" : "journal: not connected";
}

async function start() {
  status("");
  try {
    const health = await api("/health");
    $("#health").textContent = `node ${health.node} · store ${health.store}`;
    inspector.journal = await all("/journal");
  } catch (error) {
    $("#health").textContent = "";
    failed("start", error);
    return;
  }
  renderJournal();
  await refresh();
  follow();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    inspector.key = $("#admin-key").value.trim();
    inspector.journal = [];
    inspector.hasFaults = undefined;
    start();
  });
  renderTokens();
  renderSessions();
  renderFaults();
  renderJournal();
  start();
});
