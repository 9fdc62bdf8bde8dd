"""serve: real HTTP against uvicorn on a loopback port: OpenAI-shaped completions and chat, streaming, auth."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from gristmill.formats.chat import encode_chat
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import generate
from gristmill.model.io import load_for_inference
from gristmill.serve.app import create_app
from gristmill.serve.config import ServeConfig

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a background thread, stopped (and joined) when the test module ends."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.time() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path) -> Iterator[str]:
    app = create_app(tiny_model_dir, ServeConfig(max_tokens=16, device="cpu"), api_key=KEY)
    with Server(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_for_inference(tiny_model_dir, "cpu")


def sse(response: httpx.Response) -> list:
    """The parsed data lines of a server-sent-event stream, ending with the literal '[DONE]'."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_is_open_and_models_need_the_key(base: str):
    h = httpx.get(f"{base}/health", timeout=10)
    assert h.status_code == 200 and h.json()["status"] == "ok"
    r = httpx.get(f"{base}/v1/models", timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["message"]
    wrong = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    ok = httpx.get(f"{base}/v1/models", headers=AUTH, timeout=10).json()
    # the model is named after its run: runs/<name>/train/model
    assert ok["object"] == "list" and ok["data"][0]["id"] == "tiny"
    assert httpx.post(f"{base}/v1/completions", json={"prompt": "x"}, timeout=10).status_code == 401


def test_chat_page_is_served_without_external_resources(base: str):
    page = httpx.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/chat.js" in page.text and "http" not in page.text.replace("http-equiv", "")
    js = httpx.get(f"{base}/static/chat.js", timeout=10).text
    assert "/v1/chat/completions" in js and "Authorization" in js
    assert httpx.get(f"{base}/static/chat.css", timeout=10).status_code == 200


def test_completion_matches_library_generation(client: httpx.Client, loaded):
    model, tok = loaded
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "HAMLET.\n", "max_tokens": 10,
                                             "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = generate(model, tok, "HAMLET.\n", SamplingParams(max_new_tokens=10, temperature=0))
    choice = body["choices"][0]
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert choice["text"] == expected.text and choice["finish_reason"] == expected.finish_reason
    assert body["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": expected.completion_tokens,
                             "total_tokens": expected.prompt_tokens + expected.completion_tokens}
    # no max_tokens: the server default (16) applies
    r = client.post("/v1/completions", json={"prompt": "To be", "temperature": 0, "stop": [], "top_p": None,
                                             "n": None, "max_tokens": None, "user": "ignored-field"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 16


def test_completion_prompt_list_gives_one_choice_each(client: httpx.Client):
    r = client.post("/v1/completions", json={"prompt": ["To be", "HAMLET."], "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]


def test_streamed_completion_equals_the_non_streamed_one(client: httpx.Client):
    req = {"prompt": "HAMLET.\n", "max_tokens": 12, "temperature": 0.9, "seed": 7, "stop": ["\n\n"]}
    whole = client.post("/v1/completions", json=req).json()
    with client.stream("POST", "/v1/completions", json={**req, "stream": True,
                                                         "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert text == whole["choices"][0]["text"]
    assert finishes[-1] == whole["choices"][0]["finish_reason"] and not any(finishes[:-1])
    assert chunks[-1]["usage"] == whole["usage"]


def test_chat_completion_uses_the_chat_template(client: httpx.Client, loaded):
    model, tok = loaded
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who is Hamlet?"}]
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    ids, _ = encode_chat(tok, messages, add_generation_prompt=True)
    expected = generate(model, tok, ids, SamplingParams(max_new_tokens=8, temperature=0))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected.text}
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_streamed_chat_sends_role_then_content_deltas(client: httpx.Client):
    req = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Who is Hamlet?"}]}],
           "max_tokens": 8, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=req).json()
    with client.stream("POST", "/v1/chat/completions", json={**req, "stream": True}) as r:
        events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": "x", "stop": [1, 2]}, "stop"),
    ("/v1/completions", {"prompt": [99999]}, None),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "<|im_end|>"}]}, None),
])
def test_bad_requests_get_openai_error_bodies(client: httpx.Client, path: str, body: dict, param: str | None):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if param:
        assert err["param"] == param and param in err["message"]


def test_invalid_json_and_too_long_prompt_are_400(client: httpx.Client, tiny_model_dir: Path):
    r = client.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    block = json.loads((tiny_model_dir / "config.json").read_text())["block_size"]
    r = client.post("/v1/completions", json={"prompt": list(range(10, 10 + block + 5))})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_concurrent_requests_are_served_one_at_a_time_correctly(client: httpx.Client, base: str):
    req = {"prompt": "To be", "max_tokens": 10, "temperature": 0}
    expected = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    results: list[str] = []

    def call() -> None:
        with httpx.Client(base_url=base, headers=AUTH, timeout=60) as c:
            results.append(c.post("/v1/completions", json=req).json()["choices"][0]["text"])

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


def test_closing_a_stream_early_leaves_the_server_usable(client: httpx.Client):
    req = {"prompt": "HAMLET.\n", "max_tokens": 40, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/completions", json=req) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    r = client.post("/v1/completions", json={**req, "stream": False, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


def test_api_key_from_environment_and_open_server(tiny_model_dir: Path, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("GRISTMILL_API_KEY", "env-key")
    with TestClient(create_app(tiny_model_dir, ServeConfig(device="cpu"))) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer env-key"}).status_code == 200
    monkeypatch.delenv("GRISTMILL_API_KEY")
    with TestClient(create_app(tiny_model_dir, ServeConfig(device="cpu"), model_name="named")) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "named"


def test_api_key_from_a_file(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.delenv("GRISTMILL_API_KEY", raising=False)
    (tmp_path / "key").write_text("file-key\n")
    with TestClient(create_app(tiny_model_dir, ServeConfig(device="cpu", api_key_file=str(tmp_path / "key")))) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer file-key"}).status_code == 200


def test_out_of_range_seed_unknown_model_and_too_many_tokens_are_client_errors(client: httpx.Client):
    r = client.post("/v1/completions", json={"prompt": "To be", "max_tokens": 4, "seed": 10**30})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    r = client.post("/v1/chat/completions", json={"model": "gpt-4", "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found" and r.json()["error"]["param"] == "model"
    # the context window is 64 tokens: asking for more than the room left is refused, not silently cut
    r = client.post("/v1/completions", json={"prompt": "To be", "max_tokens": 500})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "ask for at most" in r.json()["error"]["message"]
    # without max_tokens the server's default is cut to the room left
    r = client.post("/v1/completions", json={"prompt": "To be", "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] <= 64


def test_the_chat_page_gets_a_favicon(base: str):
    r = httpx.get(f"{base}/favicon.ico", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and b"<svg" in r.content


def test_serve_names_a_missing_run(tmp_path: Path):
    from gristmill.errors import InputError
    from gristmill.serve.app import serve

    with pytest.raises(InputError, match="does not exist"):
        serve(tmp_path / "nope")
    with pytest.raises(InputError, match="no model found"):
        serve(tmp_path)


PAGE_HARNESS = r"""
// Runs the chat page's script in Node against the live server, with just enough of a DOM for it.
const fs = require("fs");
const [base, script, key] = process.argv.slice(2);
class El {
  constructor(id) { this.id = id; this.value = ""; this.textContent = ""; this.disabled = false;
                    this.className = ""; this.children = []; this.listeners = {}; this.parentElement = null;
                    this.classList = { add: (c) => { this.className += " " + c; } }; }
  addEventListener(ev, fn) { (this.listeners[ev] = this.listeners[ev] || []).push(fn); }
  append(...els) { for (const e of els) { e.parentElement = this; this.children.push(e); } }
  replaceChildren() { this.children = []; }
  scrollIntoView() {}
  requestSubmit() { for (const fn of this.listeners.submit || []) fn({ preventDefault() {} }); }
}
const els = {};
global.document = { getElementById: (id) => (els[id] = els[id] || new El(id)), createElement: () => new El() };
const store = {};
global.sessionStorage = { getItem: (k) => store[k] ?? null, setItem: (k, v) => { store[k] = v; } };
const realFetch = fetch;
global.fetch = (url, opts) => realFetch(base + url, opts);
const $ = document.getElementById;
$("temperature").value = "0"; $("top-p").value = "1"; $("max-tokens").value = "12";
$("system").value = "";
eval(fs.readFileSync(script, "utf8"));
(async () => {
  await new Promise((r) => setTimeout(r, 300));  // the first loadModel(), refused without the key
  const refused = $("status").textContent;
  $("api-key").value = key;  // the user types the key into Settings
  for (const fn of $("api-key").listeners.change) fn();
  await new Promise((r) => setTimeout(r, 300));
  $("input").value = "Who is Hamlet?";
  $("composer").requestSubmit();
  for (let i = 0; i < 200 && ($("send").disabled || !$("messages").children.length); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const msgs = $("messages").children.map((d) => ({ cls: d.className, text: d.children[1].textContent }));
  console.log(JSON.stringify({ refused, model: $("model-name").textContent, status: $("status").textContent,
                               msgs }));
})();
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run the page's script")
def test_chat_page_script_streams_a_reply(base: str, client: httpx.Client, tmp_path: Path):
    from importlib import resources

    harness = tmp_path / "harness.js"
    harness.write_text(PAGE_HARNESS)
    script = resources.files("gristmill.serve") / "static" / "chat.js"
    proc = subprocess.run(["node", str(harness), base, str(script), KEY], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    page = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Who is Hamlet?"}], "max_tokens": 12, "temperature": 0,
    }).json()["choices"][0]["message"]["content"]
    assert "API key" in page["refused"]
    assert page["model"].startswith("tiny")
    assert [m["cls"].split()[:2] for m in page["msgs"]] == [["msg", "user"], ["msg", "assistant"]]
    assert page["msgs"][0]["text"] == "Who is Hamlet?"
    assert page["msgs"][1]["text"] == expected
