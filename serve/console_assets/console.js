// The probe console (serve/console.py): 2 to 4 served candidates side by side, each column with or
// without the suite's system prompt; typed messages go to every column at once and continue each
// column's own conversation, suite probes run as conversations of their own; replies stream in
// and get the rule checks of `yard probe` (computed by the server); "Save" stores the session as
// a probe run. The API key lives in `state.key` only: never in the URL, never in storage.
"use strict";

const MIN_COLUMNS = 2, MAX_COLUMNS = 4;
// Rule -> [label when it passes, label when it fails] (serve/probes/probe_rules.py RULES)
const RULE_LABELS = {
  empty: ["has text", "empty reply"], think_leak: ["no think tag", "think-tag leak"],
  claims_ai: ["no AI claim", "claims to be an AI"], refusal: ["no refusal", "refusal boilerplate"],
  fact_mismatch: ["fact right", "wrong fact"],
};
const state = { key: "", models: [], suite: null, columns: [], startedAt: null, busy: false };
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// fetch with the key; a non-2xx answer throws its one-line reason (the API's error.message)
async function api(path, body) {
  const init = { headers: { Authorization: "Bearer " + state.key } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try { message = (await resp.json()).error.message || message; } catch (e) { /* not JSON */ }
    const err = new Error(message);
    err.status = resp.status;
    throw err;
  }
  return resp;
}

// --- connecting -------------------------------------------------------------------------------

async function connect(event) {
  event.preventDefault();
  state.key = $("key").value;
  showError("");
  try {
    const models = await (await api("/v1/models")).json();
    state.models = models.data.map((m) => m.id);
    state.suite = await (await api("/console/suite")).json();
  } catch (err) {
    $("app").hidden = true;
    showError(err.status === 401 ? `Wrong API key: ${err.message}` : `Cannot reach the app: ${err.message}`);
    return;
  }
  const suite = state.suite;
  const params = suite.params || {};
  $("max-tokens").max = suite.max_tokens_limit;
  $("max-tokens").value = Math.min(params.max_tokens || 128, suite.max_tokens_limit);
  $("temperature").value = params.temperature ?? 0;
  const pick = $("probe-pick");
  pick.replaceChildren(new Option(`all ${suite.probes.length} probes`, ""));
  for (const p of suite.probes) pick.append(new Option(`${p.group}: ${p.id}`, p.id));
  $("status").textContent = `${state.models.length} models` +
    (suite.suite ? ` · suite ${suite.suite} (${suite.persona})` : " · no probe suite configured");
  if (!state.columns.length) newSession();
  $("app").hidden = false;
  update();
}

// --- columns ----------------------------------------------------------------------------------

function addColumn(model) {
  const col = { model, system: false, history: [], exchanges: [] };
  col.node = el("div", "column");
  const head = el("div", "column-head");
  col.select = el("select", "model");
  for (const id of state.models) col.select.append(new Option(id, id));
  col.select.value = model;
  col.select.addEventListener("change", () => { col.model = col.select.value; });
  const label = el("label");
  col.toggle = el("input", "system-toggle");
  col.toggle.type = "checkbox";
  col.toggle.addEventListener("change", () => { col.system = col.toggle.checked; });
  label.append(col.toggle, " system prompt");
  const remove = el("button", "remove", "×");
  remove.type = "button";
  remove.title = "remove this column";
  remove.addEventListener("click", () => {
    state.columns = state.columns.filter((c) => c !== col);
    col.node.remove();
    update();
  });
  col.remove = remove;
  head.append(col.select, label, remove);
  col.log = el("div", "log");
  col.node.append(head, col.log);
  $("columns").append(col.node);
  state.columns.push(col);
  update();
}

function newSession() {
  for (const col of state.columns) col.node.remove();
  state.columns = [];
  state.startedAt = new Date().toISOString();
  $("saved").textContent = "";
  delete $("saved").dataset.run;
  for (let i = 0; i < MIN_COLUMNS; i++) addColumn(state.models[i % state.models.length]);
}

// Buttons follow the state: nothing is sent while replies stream; a column's model is fixed once
// it has a conversation (a new session frees it).
function update() {
  const hasSuite = Boolean(state.suite && state.suite.suite);
  for (const col of state.columns) {
    col.select.disabled = state.busy || col.exchanges.length > 0;
    col.toggle.disabled = !hasSuite;
    col.remove.disabled = state.busy || state.columns.length <= MIN_COLUMNS;
  }
  $("add-column").disabled = state.busy || state.columns.length >= MAX_COLUMNS;
  $("send").disabled = state.busy;
  $("run-probes").disabled = state.busy || !hasSuite;
  $("probe-pick").disabled = !hasSuite;
  $("save").disabled = state.busy || !hasSuite || !state.columns.some((c) => c.exchanges.length);
  $("clear").disabled = state.busy;
}

// --- asking -----------------------------------------------------------------------------------

function newBlock(col, probeId, condition) {
  const block = el("div", "block");
  block.dataset.probe = probeId || "";
  block.append(el("div", "tag", `${probeId ? "probe " + probeId : "message"} · ` +
    (condition === "with_system" ? "with system prompt" : "no system prompt")));
  col.log.append(block);
  return block;
}

function bubble(block, role, text) {
  const node = el("div", `bubble ${role}`, text);
  block.append(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

// One streamed reply: SSE `data:` lines from /v1/chat/completions, read with a ReadableStream.
async function streamReply(col, messages, node) {
  const body = { model: col.model, messages, stream: true,
                 max_tokens: Number($("max-tokens").value), temperature: Number($("temperature").value) };
  const resp = await api("/v1/chat/completions", body);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "";
  node.classList.add("streaming");
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return text;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return text;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices.length ? chunk.choices[0].delta : null;
          if (delta && delta.content) {
            text += delta.content;
            node.textContent = text;
          }
        }
      }
    }
  } finally {
    node.classList.remove("streaming");
  }
}

function systemMessages(col) {
  return col.system && state.suite.system_prompt ? [{ role: "system", content: state.suite.system_prompt }] : [];
}

// The rule checks of one exchange, as marks under it (data-rule / data-passed for tests and CSS).
async function mark(block, replies, probeId) {
  const check = await (await api("/console/check", { replies, probe: probeId })).json();
  const marks = el("div", "marks");
  for (const [rule, result] of Object.entries(check.rules)) {
    const labels = RULE_LABELS[rule] || [rule, rule];
    const node = el("span", `mark ${result.passed ? "pass" : "fail"}`, (result.passed ? "✓ " : "✗ ") +
      labels[result.passed ? 0 : 1]);
    node.dataset.rule = rule;
    node.dataset.passed = String(result.passed);
    node.title = result.reason || labels[0];
    marks.append(node);
  }
  block.append(marks);
  block.dataset.passed = String(check.passed);
}

// A typed message: the next turn of the column's own conversation.
async function sendMessage(col, text) {
  const condition = col.system ? "with_system" : "without_system";
  const block = newBlock(col, null, condition);
  bubble(block, "user", text);
  const node = bubble(block, "assistant", "");
  const messages = [...systemMessages(col), ...col.history, { role: "user", content: text }];
  const reply = await guarded(node, () => streamReply(col, messages, node));
  if (reply === null) return;
  col.history.push({ role: "user", content: text }, { role: "assistant", content: reply });
  col.exchanges.push({ probe: null, condition, turns: [{ user: text, reply }], at: new Date().toISOString() });
  await guarded(node, () => mark(block, [reply], null));
}

// A suite probe: a conversation of its own, its turns answered in order.
async function runProbe(col, probe) {
  const condition = col.system ? "with_system" : "without_system";
  const block = newBlock(col, probe.id, condition);
  const messages = systemMessages(col), turns = [];
  for (const user of probe.turns) {
    bubble(block, "user", user);
    const node = bubble(block, "assistant", "");
    messages.push({ role: "user", content: user });
    const reply = await guarded(node, () => streamReply(col, messages, node));
    if (reply === null) return false;
    messages.push({ role: "assistant", content: reply });
    turns.push({ user, reply });
  }
  col.exchanges.push({ probe: probe.id, condition, turns, at: new Date().toISOString() });
  await guarded(block, () => mark(block, turns.map((t) => t.reply), probe.id));
  return true;
}

// A failed request shows its reason in place and leaves the exchange out of the session.
async function guarded(node, work) {
  try {
    return await work();
  } catch (err) {
    const note = el("div", "bubble failed", `failed: ${err.message}`);
    node.after(note);
    return null;
  }
}

async function busyWhile(work) {
  state.busy = true;
  update();
  try {
    await work();
  } finally {
    state.busy = false;
    update();
  }
}

function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || state.busy) return;
  $("message").value = "";
  busyWhile(() => Promise.all(state.columns.map((col) => sendMessage(col, text))));
}

function runProbes() {
  const id = $("probe-pick").value;
  const probes = state.suite.probes.filter((p) => !id || p.id === id);
  busyWhile(() => Promise.all(state.columns.map(async (col) => {
    for (const probe of probes) if (!(await runProbe(col, probe))) return;
  })));
}

// --- saving -----------------------------------------------------------------------------------

async function save() {
  const session = {
    started_at: state.startedAt,
    settings: { max_tokens: Number($("max-tokens").value), temperature: Number($("temperature").value) },
    columns: state.columns.map((c) => ({ model: c.model, system_prompt: c.system, exchanges: c.exchanges })),
  };
  showError("");
  try {
    const saved = await (await api("/console/save", session)).json();
    $("saved").textContent = `saved ${saved.run} (${saved.records} records, ${saved.failed} failing a rule)`;
    $("saved").dataset.run = saved.run;
    $("saved").title = $("saved").textContent;
  } catch (err) {
    showError(`Save failed: ${err.message}`);
  }
}

$("auth").addEventListener("submit", connect);
$("composer").addEventListener("submit", send);
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) send(event);
});
$("run-probes").addEventListener("click", runProbes);
$("add-column").addEventListener("click", () => addColumn(state.models[state.columns.length % state.models.length]));
$("save").addEventListener("click", () => busyWhile(save));
$("clear").addEventListener("click", () => {
  if (state.columns.some((c) => c.exchanges.length) && !$("saved").dataset.run &&
      !window.confirm("Start a new session? This one is not saved.")) return;
  newSession();
});
