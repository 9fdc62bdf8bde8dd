"""Helpers the serve tests share: uvicorn on a loopback port in a thread, an SSE reader, a waiting loop and
a model that never stops on its own."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a background thread, stopped (and joined) on exit."""

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


def sse(response: httpx.Response) -> list:
    """The parsed data lines of a server-sent-event stream, ending with the literal '[DONE]'."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> float:
    """Poll ``cond`` until true; the seconds it took (fails after ``timeout``)."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - start


def build_endless_model_dir(tiny_model_dir: Path, out: Path) -> Path:
    """An untrained model with the tiny tokenizer and an 8192-token context whose head gives the special tokens
    logit 0, so greedy decoding never picks a stop token: a request runs as long as max_tokens says."""
    import torch

    from gristmill.model.config import ModelConfig
    from gristmill.model.gpt import GPT
    from gristmill.model.io import save_model
    from gristmill.tokenizer.bpe import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.get_vocab_size(), block_size=8192, n_layer=6, n_head=2, n_embd=64))
    with torch.no_grad():
        model.lm_head.weight[:4] = 0.0
    save_model(out, model.eval(), tiny_model_dir / "tokenizer.json")
    return out
