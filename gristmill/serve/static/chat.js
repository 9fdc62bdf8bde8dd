// Gristmill chat page: keeps the conversation in memory and streams replies from
// /v1/chat/completions (server-sent events). No external scripts; text is inserted as text, never HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];          // [{role, content}] sent with every request
let controller = null;       // AbortController of the request in flight
let modelName = null;

const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("gristmill-api-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("gristmill-api-key", keyInput.value.trim());
  loadModel();
});

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = keyInput.value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = text;
  div.append(label, body);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return body;
}

// One sentence for a failed response: the server's OpenAI-style message, plus what to do about it.
async function errorText(resp) {
  let message;
  try {
    const body = await resp.json();
    message = (body.error && body.error.message) || JSON.stringify(body);
  } catch (e) {
    message = resp.status + " " + resp.statusText;
  }
  if (resp.status === 401) {
    $("settings").open = true;
    keyInput.focus();
    return "This server needs an API key: enter it in Settings. (" + message + ")";
  }
  if (resp.status === 503) {
    const wait = resp.headers.get("Retry-After");
    return "The server is busy" + (wait ? "; try again in " + wait + " s" : "; try again shortly") + ". (" + message + ")";
  }
  return message;
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) {
      setStatus(await errorText(resp));
      return;
    }
    const body = await resp.json();
    modelName = body.data[0].id;
    $("model-name").textContent = modelName + " (context " + body.data[0].context_length + " tokens)";
    setStatus("");
  } catch (e) {
    setStatus("Cannot reach the server: " + e);
  }
}

// Read a server-sent-event stream and call onEvent(parsed JSON) for each data line until [DONE].
async function readEvents(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...history] : history.slice();
  const body = {
    model: modelName || undefined,
    messages,
    stream: true,
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Number($("max-tokens").value),
  };
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  let reply = "";
  let finish = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    await readEvents(resp, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      if (choice.delta && choice.delta.content) {
        reply += choice.delta.content;
        out.textContent = reply;
        out.parentElement.scrollIntoView({ block: "end" });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    setStatus(finish === "length" ? "stopped at the token limit" : "");
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("stopped");
    } else {
      out.parentElement.classList.add("error");
      out.textContent = reply + (reply ? "\n" : "") + "Error: " + e.message;
      setStatus("");
    }
  } finally {
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
  if (reply) {
    history.push({ role: "assistant", content: reply });
  } else {
    history.pop();  // nothing came back: let the user edit and resend the message
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => {
  history.length = 0;
  $("messages").replaceChildren();
  setStatus("");
});

loadModel();
