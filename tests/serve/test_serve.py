"""serve: real HTTP against uvicorn on a loopback port: OpenAI-shaped completions and chat, streaming, several
choices, log-probabilities, auth and metrics (the servers are in conftest.py)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx
import pytest
from serving import AUTH, sse

from gristmill.formats.chat import encode_chat
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import generate
from gristmill.serve.app import create_app
from gristmill.serve.config import ServeConfig


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
    ("/v1/completions", {"prompt": "x", "n": 0}, "n"),
    ("/v1/completions", {"prompt": "x", "logprobs": 9}, "logprobs"),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 50}, "top_logprobs"),
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


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(client: httpx.Client, base: str):
    prompts = ["To be", "HAMLET.", "Enter GHOST", "O, that this"]
    expected = {p: client.post("/v1/completions", json={"prompt": p, "max_tokens": 10, "temperature": 0}).json()
                ["choices"][0]["text"] for p in prompts}
    results: list[tuple[str, str]] = []

    def call(p: str) -> None:
        with httpx.Client(base_url=base, headers=AUTH, timeout=60) as c:
            r = c.post("/v1/completions", json={"prompt": p, "max_tokens": 10, "temperature": 0})
            results.append((p, r.json()["choices"][0]["text"]))

    threads = [threading.Thread(target=call, args=(p,)) for p in prompts * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted((p, expected[p]) for p in prompts * 2)


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
    r = client.post("/v1/completions", json={"prompt": "To be", "n": 100})
    assert r.status_code == 400 and "n=100" in r.json()["error"]["message"]


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


def test_several_choices_each_sample_with_their_own_seed(client: httpx.Client, loaded):
    model, tok = loaded
    req = {"prompt": ["To be", "HAMLET."], "n": 3, "max_tokens": 8, "temperature": 1.0, "seed": 11}
    body = client.post("/v1/completions", json=req).json()
    assert [c["index"] for c in body["choices"]] == list(range(6))
    for c in body["choices"]:
        prompt, i = req["prompt"][c["index"] // 3], c["index"] % 3
        alone = generate(model, tok, prompt, SamplingParams(max_new_tokens=8, temperature=1.0, seed=11 + i))
        assert c["text"] == alone.text
    assert body["usage"]["prompt_tokens"] == len(tok.encode("To be").ids) + len(tok.encode("HAMLET.").ids)
    # streamed: every choice gets its role, its deltas and one finish reason; then the usage
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Who is Hamlet?"}], "n": 2, "max_tokens": 6, "temperature": 0.8,
            "seed": 3, "stream": True, "stream_options": {"include_usage": True}}) as r:
        events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert [m["finish_reason"] for m in mine if m["finish_reason"]] in (["stop"], ["length"])
    assert chunks[-1]["choices"] == [] and 2 <= chunks[-1]["usage"]["completion_tokens"] <= 12
    assert all(c["usage"] is None for c in chunks[:-1])


def test_logprobs_in_both_shapes_agree_with_the_text(client: httpx.Client):
    r = client.post("/v1/completions", json={"prompt": "HAMLET.\n", "max_tokens": 6, "temperature": 0,
                                             "logprobs": 2, "stop_token_ids": []})
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"] and len(lp["token_logprobs"]) == 6
    assert all(v <= 0 for v in lp["token_logprobs"]) and all(len(t) == 2 for t in lp["top_logprobs"])
    # greedy: the chosen token is the most likely one
    assert all(max(top.values()) == pytest.approx(v) for top, v in zip(lp["top_logprobs"], lp["token_logprobs"],
                                                                       strict=True))
    assert lp["text_offset"][0] == 0 and lp["text_offset"][1] == len(lp["tokens"][0])
    chat = {"messages": [{"role": "user", "content": "Who is Hamlet?"}], "max_tokens": 6, "temperature": 0,
            "logprobs": True, "top_logprobs": 1}
    with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
        events = sse(r)[:-1]
    content = [e for ev in events for e in ((ev["choices"][0].get("logprobs") or {}).get("content") or [])]
    text = "".join(ev["choices"][0]["delta"].get("content", "") for ev in events)
    assert bytes(b for e in content for b in e["bytes"]).decode("utf-8") == text
    assert all(e["top_logprobs"][0]["logprob"] == pytest.approx(e["logprob"]) for e in content)
    whole = client.post("/v1/chat/completions", json=chat).json()["choices"][0]
    assert [e["token"] for e in whole["logprobs"]["content"]] == [e["token"] for e in content]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2})
    assert r.status_code == 400 and "logprobs" in r.json()["error"]["message"]


def test_penalties_change_greedy_output(client: httpx.Client):
    req = {"prompt": "HAMLET.\n", "max_tokens": 30, "temperature": 0, "stop_token_ids": [], "stop": []}
    plain = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    penalized = client.post("/v1/completions", json={**req, "frequency_penalty": 2, "presence_penalty": 2}).json()
    assert penalized["choices"][0]["text"] != plain


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format (0 when absent)."""
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and sorted(filter(None, (m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    return 0.0


def test_metrics_count_requests_tokens_and_first_token_times(base: str, client: httpx.Client):
    assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
    before = client.get("/metrics").text
    client.post("/v1/completions", json={"prompt": "To be", "max_tokens": 5, "temperature": 0, "stop_token_ids": []})
    with client.stream("POST", "/v1/completions", json={"prompt": "To be", "max_tokens": 5, "stream": True}) as r:
        sse(r)
    client.post("/v1/completions", json={"prompt": "x", "temperature": -1})
    after = client.get("/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    text = after.text

    def grew(name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert grew("gristmill_requests_total", path="/v1/completions", status="200") == 2
    assert grew("gristmill_requests_total", path="/v1/completions", status="400") == 1
    assert grew("gristmill_generated_tokens_total") >= 6
    assert grew("gristmill_time_to_first_token_seconds_count") == 2
    assert grew("gristmill_time_to_first_token_seconds_sum") > 0
    assert metric(text, "gristmill_requests_running") == 0 and metric(text, "gristmill_requests_waiting") == 0
    assert metric(text, "gristmill_kv_cache_bytes") > 0


def test_with_a_key_only_the_page_and_health_are_open(base: str):
    for path in ("/", "/health", "/static/chat.js", "/favicon.ico"):
        assert httpx.get(f"{base}{path}", timeout=10).status_code == 200, path
    for path in ("/v1/models", "/metrics", "/docs", "/openapi.json", "/no/such/path"):
        r = httpx.get(f"{base}{path}", timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    r = httpx.get(f"{base}/no/such/path", headers=AUTH, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_an_unmerged_lora_adapter_serves_merged_or_as_layers(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    """A LoRA fine-tune saved without merging (adapter + pointer to the base) serves either way, with the
    same greedy answer, and differs from the base model it adapts."""
    import torch
    from fastapi.testclient import TestClient

    from gristmill.model.io import load_model, save_adapter_model
    from gristmill.model.lora import apply_lora, lora_layers
    from gristmill.train.config import LoraConfig

    monkeypatch.delenv("GRISTMILL_API_KEY", raising=False)
    model = load_model(tiny_model_dir)
    cfg = LoraConfig(enabled=True, rank=4, target_modules=["wq", "wv", "w_up"])
    apply_lora(model, cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_b.normal_(0, 0.5)
    save_adapter_model(tmp_path / "adapter", model, cfg, tiny_model_dir, tiny_model_dir / "tokenizer.json")
    req = {"prompt": "To be, or not", "max_tokens": 8, "temperature": 0}
    texts = {}
    for merge in (True, False):
        with TestClient(create_app(tmp_path / "adapter", ServeConfig(device="cpu", merge_adapter=merge,
                                                                            weights="fp32"))) as c:
            texts[merge] = c.post("/v1/completions", json=req).json()["choices"][0]["text"]
    with TestClient(create_app(tiny_model_dir, ServeConfig(device="cpu"))) as c:
        base_text = c.post("/v1/completions", json=req).json()["choices"][0]["text"]
    assert texts[True] == texts[False] != base_text
