// seekforge chat page: streams /v1/chat/completions (SSE) into the DOM.
// No framework and no build step. Text is only ever inserted with textContent (never innerHTML),
// so model output cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  messages: $("messages"), input: $("input"), send: $("send"), stop: $("stop"), status: $("status"),
  temperature: $("temperature"), temperatureValue: $("temperature-value"), maxTokens: $("max-tokens"),
  system: $("system"), apiKey: $("api-key"), modelName: $("model-name"), newChat: $("new-chat"),
};
const STORE = "seekforge-chat-v1";
let history = [];      // [{role, content}] of this conversation
let model = null;      // id from /v1/models
let controller = null; // AbortController of the answer being streamed
// A random id per browser, sent as `user`: a route that splits traffic between model versions keeps
// this browser on one version (the server hashes it), without knowing who the user is.
const USER_ID = localStorage.getItem("seekforge-user") ||
  "web-" + Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
localStorage.setItem("seekforge-user", USER_ID);

function headers() {
  const h = { "Content-Type": "application/json" };
  if (els.apiKey.value) h["Authorization"] = "Bearer " + els.apiKey.value;
  return h;
}

function save() {
  localStorage.setItem(STORE, JSON.stringify({
    history, system: els.system.value, temperature: els.temperature.value, maxTokens: els.maxTokens.value,
    apiKey: els.apiKey.value,
  }));
}

function load() {
  try {
    const s = JSON.parse(localStorage.getItem(STORE) || "{}");
    history = Array.isArray(s.history) ? s.history : [];
    if (s.system) els.system.value = s.system;
    if (s.temperature) els.temperature.value = s.temperature;
    if (s.maxTokens) els.maxTokens.value = s.maxTokens;
    if (s.apiKey) els.apiKey.value = s.apiKey;
  } catch (e) { history = []; }
  els.temperatureValue.textContent = els.temperature.value;
  for (const m of history) addMessage(m.role, m.content, "done");
}

function addMessage(role, text, state) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.dataset.state = state;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  div.appendChild(content);
  els.messages.appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function fetchModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error ? j.error.message : r.statusText);
    model = j.data[0].id;
    els.modelName.textContent = model + " · ctx " + j.data[0].max_model_len;
  } catch (e) {
    els.modelName.textContent = "(" + e.message + ")";
  }
}

// Read an SSE body: yields the parsed JSON of every `data:` event until [DONE].
async function* sseEvents(body) {
  const reader = body.getReader();
  // stream: true keeps a multi-byte UTF-8 character that is split across network chunks intact.
  const decoder = new TextDecoder("utf-8");
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue; // ": ping" comments and other fields
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  if (!model) await fetchModel();
  history.push({ role: "user", content: text });
  addMessage("user", text, "done");
  const bot = addMessage("assistant", "", "streaming");
  const content = bot.querySelector(".content");
  const messages = (els.system.value.trim() ? [{ role: "system", content: els.system.value.trim() }] : [])
    .concat(history);
  controller = new AbortController();
  setBusy(true);
  const t0 = performance.now();
  let tFirst = null, tokens = 0, answer = "", finish = null, answerId = null, version = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model, messages, stream: true, stream_options: { include_usage: true }, user: USER_ID,
        temperature: parseFloat(els.temperature.value), max_tokens: parseInt(els.maxTokens.value, 10),
      }),
    });
    if (!r.ok) {
      const j = await r.json().catch(() => ({}));
      throw new Error(j.error ? j.error.message : r.status + " " + r.statusText);
    }
    version = r.headers.get("x-seekforge-model"); // the version that answered (routes split traffic)
    for await (const chunk of sseEvents(r.body)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.id) answerId = chunk.id;
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      for (const c of chunk.choices || []) {
        const piece = c.delta && c.delta.content;
        if (piece) {
          if (tFirst === null) tFirst = performance.now();
          answer += piece;
          content.textContent = answer;
          bot.scrollIntoView({ block: "end" });
        }
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    bot.dataset.state = "done";
  } catch (e) {
    if (e.name === "AbortError") {
      bot.dataset.state = "done";
      finish = "stopped";
    } else {
      bot.dataset.state = "error";
      content.textContent = answer + (answer ? "\n" : "") + "⚠ " + e.message;
    }
  } finally {
    controller = null;
    setBusy(false);
  }
  history.push({ role: "assistant", content: answer });
  const secs = (performance.now() - t0) / 1000;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${tokens} tokens · ${(tokens / Math.max(secs, 1e-3)).toFixed(1)} tok/s` +
    (tFirst !== null ? ` · first token ${((tFirst - t0) / 1000).toFixed(2)} s` : "") + (finish ? ` · ${finish}` : "") +
    (version ? ` · ${version}` : "");
  if (answerId && bot.dataset.state === "done") meta.appendChild(feedbackButtons(bot, answerId));
  bot.appendChild(meta);
  save();
}

// 👍/👎 under an answer: POST /v1/feedback, logged with the version that answered (seekforge ab-report).
function feedbackButtons(bot, answerId) {
  const box = document.createElement("span");
  box.className = "rate";
  for (const [rating, label] of [["up", "👍"], ["down", "👎"]]) {
    const b = document.createElement("button");
    b.className = "thumb";
    b.dataset.rating = rating;
    b.textContent = label;
    b.title = rating === "up" ? "good answer" : "bad answer";
    b.addEventListener("click", async () => {
      for (const other of box.querySelectorAll("button")) other.disabled = true;
      const r = await fetch("/v1/feedback", { method: "POST", headers: headers(),
        body: JSON.stringify({ id: answerId, rating }) }).catch(() => null);
      bot.dataset.rated = r && r.ok ? rating : "failed";
      if (!(r && r.ok)) for (const other of box.querySelectorAll("button")) other.disabled = false;
    });
    box.appendChild(b);
  }
  return box;
}

function setBusy(busy) {
  els.send.disabled = busy;
  els.stop.hidden = !busy;
  els.status.textContent = busy ? "generating… 生成中" : "";
}

els.temperature.addEventListener("input", () => { els.temperatureValue.textContent = els.temperature.value; save(); });
for (const el of [els.maxTokens, els.system, els.apiKey]) el.addEventListener("change", () => { save(); fetchModel(); });
els.stop.addEventListener("click", () => controller && controller.abort());
els.newChat.addEventListener("click", () => {
  if (controller) controller.abort();
  history = [];
  els.messages.textContent = "";
  save();
});
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = els.input.value.trim();
  if (!text || controller) return;
  els.input.value = "";
  send(text);
});
els.input.addEventListener("keydown", (e) => {
  // Enter sends; Shift+Enter is a newline; isComposing: Enter that confirms a Chinese IME candidate must not send.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
  if (e.key === "Escape" && controller) controller.abort();
});

load();
fetchModel();
