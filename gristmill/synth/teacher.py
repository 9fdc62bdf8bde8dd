"""Teacher models for synthetic data: a local Gristmill model or an OpenAI-compatible endpoint.

Both are backends of :class:`~gristmill.synth.cache.TeacherSession` (which caches every output and keeps the
budget): ``generate(conversations, sampling) -> [Output]``, one assistant reply per conversation.

* :class:`LocalBackend` renders each conversation with the model's chat template and hands the whole chunk
  to the one inference engine (:meth:`gristmill.inference.engine.Engine.generate_batch`: continuous
  batching), so a chunk of prompts decodes together rather than one by one.
* :class:`HTTPBackend` posts ``/chat/completions`` requests, ``concurrency`` at a time, retrying 429, 5xx
  and connection errors with exponential back-off.

This is the one module of ``gristmill.synth`` that reaches torch (through the engine), and only inside
:func:`open_backend` and the local backend.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gristmill.core.paths import resolve
from gristmill.errors import ConfigError, InputError
from gristmill.synth.cache import Messages, Output, OutputCache, TeacherSession

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class LocalBackend:
    """A Gristmill model (``model`` and ``tokenizer`` already loaded) generating through the engine."""

    def __init__(self, model: Any, tokenizer: Any, identity: dict[str, Any], max_batch: int,
                 weights: str = "fp32") -> None:
        from gristmill.inference.engine import Engine, EngineConfig

        self.tokenizer = tokenizer
        # a few batches' worth per call: the engine refills finished slots from the queue at once
        self.chunk = max_batch * 4
        # a teacher wants throughput, not a quick first token: whole prompts are fed many at a time (the
        # serving default of 64 tokens a step makes 16 prompts of 200 tokens take 50 steps)
        self.engine = Engine(model, tokenizer, EngineConfig(max_batch=max_batch, max_queue=self.chunk,
                                                            prefill_chunk=max(64, 256 * max_batch), weights=weights))
        self.identity = {**identity, "weights": self.engine.weights}  # "auto" resolved

    def generate(self, conversations: Sequence[Messages], sampling: dict[str, Any]) -> list[Output]:
        from gristmill.formats.chat import encode_chat
        from gristmill.inference.sampling import SamplingParams

        params = SamplingParams(max_new_tokens=sampling["max_new_tokens"], temperature=sampling["temperature"],
                                top_p=sampling["top_p"], seed=sampling["seed"])
        prompts = [encode_chat(self.tokenizer, c, add_generation_prompt=True)[0] for c in conversations]
        # a prompt that leaves no room to answer is not truncated (that would cut the instructions off)
        fits = [i for i, p in enumerate(prompts) if len(p) + 8 <= self.engine.context_length]
        out = [Output("", 0, "too_long")] * len(prompts)
        if fits:
            results = self.engine.generate_batch([prompts[i] for i in fits], params)
            for i, choices in zip(fits, results, strict=True):
                c = choices[0]
                out[i] = Output(c.text.strip(), c.completion_tokens, c.finish_reason)
        return out

    def close(self) -> None:
        self.engine.close()


class HTTPBackend:
    """An OpenAI-compatible endpoint (``cfg``: :class:`~gristmill.synth.config.OpenAITeacher`)."""

    def __init__(self, cfg: Any) -> None:
        from gristmill.core.extras import require

        httpx = require("httpx", "teacher", "synth.teacher type openai")
        self.cfg = cfg
        self.identity = {"type": "openai", "base_url": cfg.base_url, "model": cfg.model}
        self.chunk = cfg.concurrency * 4
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ConfigError(f"synth.teacher.api_key_env names {cfg.api_key_env}, which is not set; export "
                                  f"the API key in it, or set api_key_env: null for an open endpoint")
            headers["Authorization"] = f"Bearer {key}"
        self.httpx = httpx
        self.client = httpx.Client(base_url=cfg.base_url, headers=headers, timeout=cfg.timeout)
        self.url = f"{cfg.base_url}/chat/completions"

    def generate(self, conversations: Sequence[Messages], sampling: dict[str, Any]) -> list[Output]:
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(lambda c: self.one(c, sampling), conversations))

    def one(self, messages: Messages, sampling: dict[str, Any]) -> Output:
        """One chat completion, retried with back-off on 429, 5xx and connection errors."""
        cfg = self.cfg
        body: dict[str, Any] = {"model": cfg.model, "messages": messages, "max_tokens": sampling["max_new_tokens"],
                                "temperature": sampling["temperature"], "seed": sampling["seed"]}
        if sampling["top_p"] is not None:
            body["top_p"] = sampling["top_p"]
        last = ""
        for attempt in range(cfg.max_retries + 1):
            wait = cfg.retry_delay * 2**attempt
            try:
                r = self.client.post("/chat/completions", json=body)
            except self.httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    return self._parse(r)
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code not in RETRY_STATUS:
                    raise InputError(f"the teacher endpoint {self.url} refused the request ({last.splitlines()[0]}); "
                                     f"check synth.teacher.model and api_key_env")
                try:  # the server's own estimate, within reason
                    wait = max(wait, min(float(r.headers.get("retry-after", 0)), 60.0))
                except ValueError:
                    pass
            if attempt < cfg.max_retries:
                time.sleep(wait)
        raise InputError(f"the teacher endpoint {self.url} did not answer after {cfg.max_retries + 1} tries "
                         f"(last: {last.splitlines()[0] if last else 'no response'}); check that it is running "
                         f"and synth.teacher.base_url")

    def _parse(self, r: Any) -> Output:
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
            finish = choice.get("finish_reason") or "stop"
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise InputError(f"the teacher endpoint {self.url} sent a reply that is not a chat completion "
                             f"({type(e).__name__}: {e}); is base_url an OpenAI-compatible API root (…/v1)?") from e
        return Output(text.strip(), tokens, finish)

    def close(self) -> None:
        self.client.close()


def local_model_path(cfg: Any, run_dir: Path) -> Path:
    """The model a local teacher loads: the run's base model, a model or run directory, or a GGUF file."""
    if cfg.model == "base":
        path = Path(run_dir) / "base" / "model"
        if not path.is_dir():
            raise InputError(f"synth.teacher.model is base but {path} does not exist; set base.source and run "
                             f"`gristmill base` first, or name a model directory or .gguf file")
        return path
    path = Path(resolve(cfg.model))
    if not path.exists():
        raise InputError(f"synth.teacher.model {cfg.model} does not exist ({path}); name a model directory, a run "
                         f"directory or a .gguf file")
    return path


def open_backend(cfg: Any, run_dir: Path) -> LocalBackend | HTTPBackend:
    """The backend for ``synth.teacher`` (model loaded, or client ready)."""
    if cfg.type == "openai":
        return HTTPBackend(cfg)
    from gristmill.core.workspace import sha256_file
    from gristmill.model.io import load_for_inference, resolve_model_dir
    from gristmill.runtime import resolve_device

    device = resolve_device(cfg.device)
    path = local_model_path(cfg, run_dir)
    if path.is_file() and path.suffix == ".gguf":
        from gristmill.model.convert.gguf import import_gguf

        model, tokenizer, info = import_gguf(path)
        model = model.to(device).eval()
        identity = {"type": "local", "gguf_sha256": info.get("sha256") or sha256_file(path)}
    else:
        model_dir = resolve_model_dir(path)
        model, tokenizer = load_for_inference(model_dir, device)
        # the weights (and an adapter's) name the model wherever the folder lives
        files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
        identity = {"type": "local", "files": {p.name: sha256_file(p) for p in files}}
    return LocalBackend(model, tokenizer, identity, cfg.max_batch, cfg.weights)


def open_session(cfg: Any, run_dir: Path, seed: int) -> TeacherSession:
    """A cached, budgeted session on ``synth.teacher`` (the cache under ``<run>/cache/teacher/``); close its
    ``backend`` when done."""
    from gristmill.core.workspace import sha256_json

    backend = open_backend(cfg, run_dir)
    sampling = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "seed": cfg.seed if cfg.seed is not None else seed}
    cache = OutputCache(Path(run_dir) / "cache" / "teacher" / f"{sha256_json(backend.identity)[:16]}.jsonl")
    return TeacherSession(backend, cache, sampling, cfg.budget, cfg.max_line_tokens)
