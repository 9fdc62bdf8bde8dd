"""serve under load: a full queue answers 503 with Retry-After, and a client that hangs up (streaming or
not) gives its sequence slot back at once. The server has one slot and room for one waiting request; its
model never stops on its own, so a request runs as long as its max_tokens."""

from __future__ import annotations

import json
import socket
import time

import httpx
from serving import sse, wait_until

LONG = {"prompt": "To be", "max_tokens": 8000, "temperature": 0}
"""Greedy on the endless model: 8000 tokens, half a minute of work or more, unless cancelled."""


def test_a_full_queue_answers_503_with_retry_after(one_slot):
    url, app = one_slot
    engine = app.state.engine
    with httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as running:
            # keep the line iterator: httpcore closes the connection when an unfinished one is collected
            lines = running.iter_lines()
            assert next(lines).startswith("data: ")
            wait_until(lambda: engine.running_requests == 1, what="the first request to run")
            with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as waiting:
                assert waiting.status_code == 200  # accepted: it waits for the slot
                wait_until(lambda: engine.waiting_requests == 1, what="the second request to queue")
                r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
                assert r.json()["error"]["code"] == "server_busy" and r.json()["error"]["message"]
            lines.close()
        # both streams closed: their requests are cancelled and the server is idle again
        wait_until(lambda: engine.running_requests == 0 and engine.waiting_requests == 0, timeout=5,
                   what="the cancelled requests to leave")
        r = c.post("/v1/completions", json={"prompt": "To be", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_a_non_streaming_client_that_hangs_up_frees_its_slot_at_once(one_slot):
    url, app = one_slot
    engine = app.state.engine
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps(LONG).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    wait_until(lambda: engine.running_requests == 1, what="the request to start")
    steps = engine.steps
    sock.close()
    freed = wait_until(lambda: engine.running_requests == 0, timeout=5, what="the slot to be freed")
    assert freed < 2.0 and engine.steps - steps < 7000  # cancelled, not run to its end
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'gristmill_requests_total{path="/v1/completions",status="499"}' in metrics


def test_a_streaming_client_that_hangs_up_frees_its_slot_at_once(one_slot):
    url, app = one_slot
    engine = app.state.engine
    with httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8000, "temperature": 0,
                "stream": True}) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines)[6:])["choices"][0]["delta"]["role"] == "assistant"
            wait_until(lambda: engine.running_requests == 1, what="the request to start")
            closed = time.monotonic()
        wait_until(lambda: engine.running_requests == 0, timeout=5, what="the slot to be freed")
        assert time.monotonic() - closed < 2.0
        # the server goes on serving
        with c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 4, "temperature": 0,
                                                       "stream": True}) as r:
            events = sse(r)
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
