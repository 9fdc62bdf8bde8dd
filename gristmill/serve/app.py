"""The FastAPI app: OpenAI-compatible completions and chat completions, streamed or not, and a chat page.

One model, one worker thread: every generation runs on a single-thread executor, so requests never use
the model at the same time and the event loop stays free to accept connections and stream tokens.
A streamed response hands the worker's text deltas to the event loop through a queue; if the client
goes away the worker stops at its next token.

Errors use OpenAI's body, ``{"error": {"message", "type", "param", "code"}}`` (:mod:`gristmill.serve.openai`):
400 for an invalid request (a prompt plus ``max_tokens`` beyond the context window included), 401 for a
missing or wrong API key, 404 for an unknown path or model name.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from gristmill.errors import GristmillError, InputError
from gristmill.formats.chat import encode_chat
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import PromptTooLongError, TextStream, encode_prompt, fit_prompt
from gristmill.model.io import load_for_inference, resolve_model_dir
from gristmill.runtime import resolve_device
from gristmill.serve.config import ServeConfig
from gristmill.serve.openai import (
    APIError,
    ChatRequest,
    CompletionRequest,
    _validation_message,
    error_response,
)

FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" '
           'fill="#8a6d3b"/><circle cx="8" cy="8" r="2.5" fill="#f5e6c8"/></svg>')
"""A millstone: served at /favicon.ico so browsers do not log a 404."""


def read_api_key(cfg: ServeConfig, key: str | None = None) -> str | None:
    """The API key: given directly, else the first line of ``api_key_file``, else ``$api_key_env``."""
    if key:
        return key
    if cfg.api_key_file:
        path = Path(cfg.api_key_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise InputError(f"cannot read the API key file {path}: {e.strerror}") from None
        if not lines or not lines[0].strip():
            raise InputError(f"the API key file {path} is empty; put the key on its first line")
        return lines[0].strip()
    return os.environ.get(cfg.api_key_env) or None


# ----------------------------------------------------------------------------------------------------
# The engine: the model behind a single worker thread


class Engine:
    """A loaded model, its tokenizer, and the one thread that runs generations."""

    def __init__(self, model_dir: Path, device: str):
        self.model, self.tokenizer = load_for_inference(model_dir, resolve_device(device))
        self.block_size = self.model.config.block_size
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gristmill-generate")

    def start(self, prompt_ids: list[int], params: SamplingParams, asked: int | None = None) -> TextStream:
        """Check the prompt fits (PromptTooLongError otherwise) and return an unstarted stream.

        ``asked``: the ``max_tokens`` the client set; prompt plus that must fit the context window. Without
        it, the default is cut to the room left."""
        ids = fit_prompt(prompt_ids, self.block_size, False)
        room = self.block_size - len(ids)
        if asked is not None and asked > room:
            raise PromptTooLongError(
                f"this model's context window is {self.block_size} tokens; the prompt has {len(ids)} and "
                f"max_tokens asks for {asked} more: ask for at most {room}")
        params.max_new_tokens = min(params.max_new_tokens, room)
        return TextStream(self.model, self.tokenizer, ids, params)

    async def run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def iterate(self, make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
        """Run the iterator ``make()`` on the worker thread and yield its items on the event loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def put(kind: str, item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))
            except RuntimeError:  # the event loop has closed (server shutting down)
                cancelled.set()

        def work() -> None:
            try:
                for item in make():
                    if cancelled.is_set():
                        return
                    put("item", item)
            except Exception as e:  # handed to the event loop, which reports it to the client
                put("error", e)
            finally:
                put("end", None)

        loop.run_in_executor(self.executor, work)
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            cancelled.set()  # the client went away, or we are done: stop the worker at its next token

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def default_model_name(model_dir: Path) -> str:
    """The run name for ``runs/<name>/<stage>/model``, else the folder's own name."""
    model_dir = Path(model_dir).resolve()
    if model_dir.name == "model" and model_dir.parent.name in ("train", "finetune"):
        return model_dir.parent.parent.name
    return model_dir.name


# ----------------------------------------------------------------------------------------------------
# The app


def create_app(model_dir: Path, cfg: ServeConfig | None = None, model_name: str | None = None,
               api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving the model in ``model_dir`` (loaded now, on ``cfg.device``). The API key is
    ``api_key``, else read as :func:`read_api_key` says; without one the API is open."""
    cfg = cfg or ServeConfig()
    model_dir = Path(model_dir)
    engine = Engine(model_dir, cfg.device)
    name = model_name or default_model_name(model_dir)
    api_key = read_api_key(cfg, api_key)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="Gristmill", summary=f"OpenAI-compatible API for model '{name}'", lifespan=lifespan)
    app.state.engine = engine
    app.state.model_name = name

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc)
        return error_response(400, msg, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, param=exc.param, code=exc.code)

    @app.exception_handler(GristmillError)
    async def _user(request: Request, exc: GristmillError) -> JSONResponse:
        code = "context_length_exceeded" if isinstance(exc, PromptTooLongError) else None
        return error_response(400, str(exc), code=code)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    auth = [Depends(check_key)]

    def check_model(requested: str | None) -> None:
        if requested not in (None, "", name):
            raise APIError(404, f"the model '{requested}' does not exist; this server serves '{name}' "
                                f"(GET /v1/models)", code="model_not_found", param="model")

    static = resources.files("gristmill.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "auth": api_key is not None}

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": created, "owned_by": "gristmill",
                "context_length": engine.block_size}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", dependencies=auth, response_model=None)
    async def completions(req: CompletionRequest) -> JSONResponse | StreamingResponse:
        check_model(req.model)
        params = req.params(cfg.max_tokens)
        prompts = req.prompt if isinstance(req.prompt, list) and isinstance(req.prompt[0], str) else [req.prompt]
        vocab = engine.model.config.vocab_size
        if isinstance(req.prompt, list) and isinstance(req.prompt[0], int) and not all(
                0 <= t < vocab for t in req.prompt):
            raise APIError(400, f"prompt: token ids must be in [0, {vocab})")
        streams = [engine.start(encode_prompt(engine.tokenizer, p), SamplingParams(**vars(params)), req.asked_tokens)
                   for p in prompts]
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": now, "model": name,
                    "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]}

        if not req.stream:
            results = await engine.run(lambda: [s.result() for s in streams])
            return JSONResponse({
                "id": rid, "object": "text_completion", "created": now, "model": name,
                "choices": [{"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                            for i, r in enumerate(results)],
                "usage": _usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)),
            })

        def produce() -> Iterator[dict[str, Any]]:
            for i, s in enumerate(streams):
                for delta in s:
                    yield chunk(i, delta, None)
                yield chunk(i, "", s.finish_reason)
            if req.stream_options and req.stream_options.include_usage:
                yield {"id": rid, "object": "text_completion", "created": now, "model": name, "choices": [],
                       "usage": _usage(sum(s.prompt_tokens for s in streams),
                                       sum(s.completion_tokens for s in streams))}

        return _event_stream(engine, produce)

    @app.post("/v1/chat/completions", dependencies=auth, response_model=None)
    async def chat_completions(req: ChatRequest) -> JSONResponse | StreamingResponse:
        check_model(req.model)
        params = req.params(cfg.max_tokens)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        ids, _ = encode_chat(engine.tokenizer, messages, add_generation_prompt=True)
        s = engine.start(ids, params, req.asked_tokens)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        if not req.stream:
            r = await engine.run(s.result)
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": now, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                             "logprobs": None, "finish_reason": r.finish_reason}],
                "usage": _usage(r.prompt_tokens, r.completion_tokens),
            })

        def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        def produce() -> Iterator[dict[str, Any]]:
            yield chunk({"role": "assistant", "content": ""}, None)
            for delta in s:
                yield chunk({"content": delta}, None)
            yield chunk({}, s.finish_reason)
            if req.stream_options and req.stream_options.include_usage:
                yield {"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                       "choices": [], "usage": _usage(s.prompt_tokens, s.completion_tokens)}

        return _event_stream(engine, produce)

    return app


def _event_stream(engine: Engine, produce: Callable[[], Iterator[dict[str, Any]]]) -> StreamingResponse:
    """Server-sent events: one ``data: {chunk}`` per item, then ``data: [DONE]``."""

    async def events() -> AsyncIterator[str]:
        try:
            async for item in engine.iterate(produce):
                yield _sse(item)
        except Exception as e:  # headers are sent already: report the failure in the stream
            yield _sse({"error": {"message": f"generation failed: {e}", "type": "server_error",
                                  "param": None, "code": None}})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def serve(run_or_model_dir: Path, cfg: ServeConfig | None = None, api_key: str | None = None) -> None:
    """Serve a model directory, or the model of a run directory (``cfg.model`` picks which), until stopped."""
    import uvicorn

    cfg = cfg or ServeConfig()
    model_dir = resolve_model_dir(Path(run_or_model_dir), cfg.model)
    key = read_api_key(cfg, api_key)
    app = create_app(model_dir, cfg, api_key=key)
    print(f"serving {model_dir} as '{app.state.model_name}' on http://{cfg.host}:{cfg.port}/ "
          f"(chat page at /, OpenAI API at /v1{', API key required' if key else ''})", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
