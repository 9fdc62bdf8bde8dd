"""The FastAPI app: OpenAI-compatible completions and chat completions, streamed or not, a chat page,
health and Prometheus metrics.

Generation runs on the continuous-batching :class:`~gristmill.inference.engine.Engine`: every request is
submitted to it and its deltas come back on the event loop, so many requests stream at once while the
loop stays free to accept connections. A client that goes away (streaming or not) has its request
cancelled at once, which frees its KV-cache slots for the next engine step.

Errors use OpenAI's body, ``{"error": {"message", "type", "param", "code"}}`` (:mod:`gristmill.serve.openai`):
400 for an invalid request (a prompt plus ``max_tokens`` beyond the context window included), 401 for a
missing or wrong API key, 404 for an unknown path or model name, 413 for a body far larger than any prompt
that fits the context window, 503 with ``Retry-After`` when the engine's waiting queue is full.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gristmill.errors import GristmillError, InputError
from gristmill.formats.chat import encode_chat
from gristmill.inference.engine import (
    Delta,
    Engine,
    EngineClosedError,
    EngineConfig,
    GenerationParams,
    QueueFullError,
    RequestHandle,
)
from gristmill.inference.stream import PromptTooLongError, encode_prompt
from gristmill.model.io import load_for_inference, resolve_model_dir
from gristmill.runtime import resolve_device
from gristmill.serve.config import ServeConfig
from gristmill.serve.openai import (
    APIError,
    ChatRequest,
    CompletionRequest,
    _validation_message,
    chat_logprobs,
    completion_logprobs,
    error_response,
)

FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" '
           'fill="#8a6d3b"/><circle cx="8" cy="8" r="2.5" fill="#f5e6c8"/></svg>')
"""A millstone: served at /favicon.ico so browsers do not log a 404."""

OPEN_PATHS = ("/", "/health", "/favicon.ico")
"""Paths served without the API key: the chat page must load so it can ask for the key, and health checks
carry no data. ``/static/`` (the page's script and style) is open too."""

ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")
"""Paths counted under their own name in the request metrics; anything else counts as ``other``."""

CLIENT_CLOSED = 499
"""Status recorded (never sent) for a request whose client went away before the answer: nginx's code."""


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


def default_model_name(model_dir: Path) -> str:
    """The run name for ``runs/<name>/<stage>/model``, else the folder's own name."""
    model_dir = Path(model_dir).resolve()
    if model_dir.name == "model" and model_dir.parent.name in ("train", "finetune", "base"):
        return model_dir.parent.parent.name
    return model_dir.name


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ----------------------------------------------------------------------------------------------------
# Metrics and the gate every request passes (API key, request counts)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps may live in one process)."""

    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        running = Gauge("gristmill_requests_running", "Requests being prefilled or decoded", registry=self.registry)
        running.set_function(lambda: engine.running_requests)
        waiting = Gauge("gristmill_requests_waiting", "Requests queued for a KV-cache slot", registry=self.registry)
        waiting.set_function(lambda: engine.waiting_requests)
        cache = Gauge("gristmill_kv_cache_bytes", "Memory held by the KV cache", registry=self.registry)
        cache.set_function(lambda: engine.cache.nbytes())
        self.ttft = Histogram("gristmill_time_to_first_token_seconds", "From request arrival to its first token",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                              registry=self.registry)
        self.tokens = Counter("gristmill_generated_tokens", "Tokens sampled (stop tokens included)",
                              registry=self.registry)
        self.requests = Counter("gristmill_requests", "Finished HTTP requests by path and status",
                                ["path", "status"], registry=self.registry)

    def first_token(self, arrived: float, handles: list[RequestHandle]) -> None:
        """Record the time to first token of a request (its earliest choice) if it produced one."""
        firsts = [h.first_token_at for h in handles if h.first_token_at is not None]
        if firsts:
            self.ttft.observe(max(0.0, min(firsts) - arrived))


class Gate:
    """ASGI middleware: checks the API key (all paths but the page and /health) and counts requests by status.

    Plain ASGI rather than an HTTP middleware class, so streamed responses and disconnects pass through
    untouched.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, metrics: Metrics):
        self.app, self.api_key, self.metrics = app, api_key, metrics

    def _allowed(self, scope: Scope) -> bool:
        path = scope["path"]
        if self.api_key is None or path in OPEN_PATHS or path.startswith("/static/"):
            return True
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in ROUTES else "other"
        # no response started and no error (Starlette answers an unhandled one with 500): the client left
        status = CLIENT_CLOSED

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self._allowed(scope):
                await self.app(scope, receive, counted_send)
            else:
                response = error_response(401, "missing or incorrect API key: send the header "
                                               "'Authorization: Bearer <key>'", code="invalid_api_key")
                await response(scope, receive, counted_send)
        finally:
            self.metrics.requests.labels(path, str(status)).inc()


BYTES_PER_TOKEN = 64
"""Request bytes allowed per token of the context window: JSON-escaped text averages well under 16 bytes a
token (``\\uXXXX`` escapes of non-Latin scripts included), so a body past this cannot be a prompt that fits."""

MIN_BODY_LIMIT = 2**20
"""The smallest body limit, whatever the window (1 MiB)."""


class BodyLimit:
    """ASGI middleware: refuses a request body over ``limit`` bytes with 413 before anything parses it.

    A body that size is a prompt far past the context window; parsing and tokenising it would hold the event
    loop (every stream stalls) and leave the allocator's memory raised. The body is read here, counting, then
    handed on whole; later messages (the disconnect) pass straight through.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    def _refuse(self, size: str) -> JSONResponse:
        return error_response(413, f"the request body is {size} bytes; this server takes at most {self.limit} "
                                   f"bytes (its model's context window holds far less text): shorten the "
                                   f"prompt", code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(declared)(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(f"more than {size}")(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ----------------------------------------------------------------------------------------------------
# Waiting for the engine while watching the client


async def _disconnected(request: Request) -> None:
    """Return when the client has gone away (the body was read already, so the next message is the end)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _unless_disconnected(request: Request, handles: list[RequestHandle], work: Awaitable[Any]) -> Any:
    """Await ``work``; if the client goes away first, cancel its requests (freeing their slots) and raise
    :class:`ClientGone`."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        for h in handles:
            h.cancel()
        task.cancel()
        # a cancelled gather() ends with CancelledError as its exception: take it, or asyncio logs it as
        # never retrieved, once for every client that hung up
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise ClientGone()
    finally:
        watch.cancel()


async def _merged(handles: list[RequestHandle]) -> AsyncIterator[tuple[int, Delta]]:
    """The deltas of several requests as they come: (request index, delta)."""
    if len(handles) == 1:
        async for d in handles[0]:
            yield 0, d
        return
    iters = [h.__aiter__() for h in handles]
    pending = {asyncio.ensure_future(anext(it)): i for i, it in enumerate(iters)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                i = pending.pop(t)
                try:
                    d = t.result()
                except StopAsyncIteration:
                    continue
                yield i, d
                pending[asyncio.ensure_future(anext(iters[i]))] = i
    finally:
        for t in pending:
            t.cancel()


# ----------------------------------------------------------------------------------------------------
# The app


def create_app(model_dir: Path, cfg: ServeConfig | None = None, model_name: str | None = None,
               api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving the model in ``model_dir`` (loaded now, on ``cfg.device``). The API key is
    ``api_key``, else read as :func:`read_api_key` says; without one the API is open."""
    cfg = cfg or ServeConfig()
    model_dir = Path(model_dir)
    model, tokenizer = load_for_inference(model_dir, resolve_device(cfg.device), merge=cfg.merge_adapter)
    engine = Engine(model, tokenizer, EngineConfig(max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                                                   prefill_chunk=cfg.prefill_chunk, max_seq_len=cfg.max_seq_len,
                                                   weights=cfg.weights, compile=cfg.compile))
    metrics = Metrics(engine)
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
    app.state.metrics = metrics
    # the last one added is the outermost: the API key is checked before a body is read
    app.add_middleware(BodyLimit, limit=max(MIN_BODY_LIMIT, BYTES_PER_TOKEN * engine.context_length))
    app.add_middleware(Gate, api_key=api_key, metrics=metrics)

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

    @app.exception_handler(QueueFullError)
    async def _busy(request: Request, exc: QueueFullError) -> JSONResponse:
        r = error_response(503, str(exc), "server_error", code="server_busy")
        r.headers["Retry-After"] = str(exc.retry_after)
        return r

    @app.exception_handler(EngineClosedError)
    async def _closed(request: Request, exc: EngineClosedError) -> JSONResponse:
        return error_response(503, str(exc), "server_error", code="shutting_down")

    @app.exception_handler(GristmillError)
    async def _user(request: Request, exc: GristmillError) -> JSONResponse:
        code = "context_length_exceeded" if isinstance(exc, PromptTooLongError) else None
        return error_response(400, str(exc), code=code)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)  # never reaches the client: the status is for the metrics

    def check_model(requested: str | None) -> None:
        if requested not in (None, "", name):
            raise APIError(404, f"the model '{requested}' does not exist; this server serves '{name}' "
                                f"(GET /v1/models)", code="model_not_found", param="model")

    def submit(prompts: list[list[int]], params: GenerationParams, asked: int | None) -> list[RequestHandle]:
        """Submit one request per prompt (each with ``params.n`` choices) to the engine, all or none.

        ``asked``: the ``max_tokens`` the client set; prompt plus that must fit the context window. Without
        it, the default is cut to the room left (the engine does that)."""
        context = engine.context_length
        for ids in prompts:
            if len(ids) >= context:
                raise PromptTooLongError(f"the prompt is {len(ids)} tokens but the model's context window is "
                                         f"{context} tokens; shorten it to at most {context - 1} tokens")
            room = context - len(ids)
            if asked is not None and asked > room:
                raise PromptTooLongError(
                    f"this model's context window is {context} tokens; the prompt has {len(ids)} and "
                    f"max_tokens asks for {asked} more: ask for at most {room}")
        return engine.submit_many(prompts, params, loop=asyncio.get_running_loop())

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
        return {"status": "ok", "model": name, "auth": api_key is not None,
                "running": engine.running_requests, "waiting": engine.waiting_requests}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "gristmill",
                "context_length": engine.context_length}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}")
    async def one_model(model_id: str) -> dict[str, Any]:
        check_model(model_id)
        return model_card()

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> Response:
        arrived = time.perf_counter()
        check_model(req.model)
        params = req.params(cfg.max_tokens)
        if isinstance(req.prompt, list) and isinstance(req.prompt[0], str):
            prompts = [encode_prompt(tokenizer, p) for p in req.prompt]
        else:
            prompts = [encode_prompt(tokenizer, req.prompt)]  # type: ignore[arg-type]
        vocab = model.config.vocab_size
        if isinstance(req.prompt, list) and isinstance(req.prompt[0], int) and not all(
                0 <= t < vocab for t in req.prompt):  # type: ignore[operator]
            raise APIError(400, f"prompt: token ids must be in [0, {vocab})")
        handles = submit(prompts, params, req.asked_tokens)
        rid, now, n = f"cmpl-{uuid.uuid4().hex}", int(time.time()), params.n

        def logprobs(entries: Any, offset: int) -> dict[str, Any] | None:
            return completion_logprobs(tokenizer, entries, offset) if params.logprobs else None

        if not req.stream:
            results = await _unless_disconnected(request, handles, asyncio.gather(*(h.aresult() for h in handles)))
            metrics.first_token(arrived, handles)
            choices = [c for r in results for c in r]
            metrics.tokens.inc(sum(c.completion_tokens for c in choices))
            return JSONResponse({
                "id": rid, "object": "text_completion", "created": now, "model": name,
                "choices": [{"index": p * n + c.index, "text": c.text, "logprobs": logprobs(c.logprobs or [], 0),
                             "finish_reason": c.finish_reason}
                            for p, r in enumerate(results) for c in r],
                "usage": _usage(sum(h.prompt_tokens for h in handles), sum(c.completion_tokens for c in choices)),
            })

        usage: dict[str, Any] = {"usage": None} if req.include_usage else {}
        offsets = [0] * (len(handles) * n)

        def chunks(p: int, d: Delta) -> list[dict[str, Any]]:
            i = p * n + d.index
            lp = logprobs(d.logprobs or [], offsets[i])
            offsets[i] += len(d.text)
            if not (d.text or d.finish_reason or (lp and lp["tokens"])):
                return []
            return [{"id": rid, "object": "text_completion", "created": now, "model": name,
                     "choices": [{"index": i, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason}],
                     **usage}]

        def last() -> list[dict[str, Any]]:
            if not req.include_usage:
                return []
            done = [c for h in handles for c in h.choices if c is not None]
            return [{"id": rid, "object": "text_completion", "created": now, "model": name, "choices": [],
                     "usage": _usage(sum(h.prompt_tokens for h in handles),
                                     sum(c.completion_tokens for c in done))}]

        return _event_stream(handles, arrived, metrics, lambda: [], chunks, last)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatRequest, request: Request) -> Response:
        arrived = time.perf_counter()
        check_model(req.model)
        params = req.params(cfg.max_tokens)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        ids, _ = encode_chat(tokenizer, messages, add_generation_prompt=True)
        handles = submit([ids], params, req.asked_tokens)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def logprobs(entries: Any) -> dict[str, Any] | None:
            return chat_logprobs(tokenizer, entries) if params.logprobs else None

        if not req.stream:
            result = await _unless_disconnected(request, handles, handles[0].aresult())
            metrics.first_token(arrived, handles)
            metrics.tokens.inc(sum(c.completion_tokens for c in result))
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": now, "model": name,
                "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                             "logprobs": logprobs(c.logprobs or []), "finish_reason": c.finish_reason}
                            for c in result],
                "usage": _usage(handles[0].prompt_tokens, sum(c.completion_tokens for c in result)),
            })

        usage: dict[str, Any] = {"usage": None} if req.include_usage else {}

        def chunk(index: int, delta: dict[str, str], lp: dict[str, Any] | None, finish: str | None) -> dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                    "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}],
                    **usage}

        def first() -> list[dict[str, Any]]:
            return [chunk(i, {"role": "assistant", "content": ""}, None, None) for i in range(params.n)]

        def chunks(p: int, d: Delta) -> list[dict[str, Any]]:
            lp = logprobs(d.logprobs) if d.logprobs else None
            out = []
            if d.text or lp:
                out.append(chunk(d.index, {"content": d.text}, lp, None))
            if d.finish_reason:
                out.append(chunk(d.index, {}, None, d.finish_reason))
            return out

        def last() -> list[dict[str, Any]]:
            if not req.include_usage:
                return []
            done = [c for c in handles[0].choices if c is not None]
            return [{"id": rid, "object": "chat.completion.chunk", "created": now, "model": name, "choices": [],
                     "usage": _usage(handles[0].prompt_tokens, sum(c.completion_tokens for c in done))}]

        return _event_stream(handles, arrived, metrics, first, chunks, last)

    return app


def _event_stream(handles: list[RequestHandle], arrived: float, metrics: Metrics,
                  first: Callable[[], list[dict[str, Any]]],
                  chunks: Callable[[int, Delta], list[dict[str, Any]]],
                  last: Callable[[], list[dict[str, Any]]]) -> StreamingResponse:
    """Server-sent events: ``first()``, then ``chunks(request index, delta)`` for every delta, ``last()`` and
    ``data: [DONE]``. If the client goes away, Starlette cancels this generator and the requests are
    cancelled with it."""

    async def events() -> AsyncIterator[str]:
        seen_first = False
        try:
            for c in first():
                yield _sse(c)
            async for p, d in _merged(handles):
                if d.token_ids:
                    metrics.tokens.inc(len(d.token_ids))
                    if not seen_first:
                        seen_first = True
                        metrics.first_token(arrived, handles)
                for c in chunks(p, d):
                    yield _sse(c)
            for c in last():
                yield _sse(c)
        except GristmillError as e:  # headers are sent already: report the failure in the stream
            yield _sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        except Exception as e:
            yield _sse({"error": {"message": f"generation failed: {e}", "type": "server_error",
                                  "param": None, "code": None}})
        finally:
            for h in handles:
                h.cancel()  # a no-op for finished requests; frees the slots of a client that went away
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
    engine = app.state.engine
    if engine.compiles:
        print("compiling the decode step (half a minute the first time) ...", flush=True)
    engine.start()
    print(f"weights {engine.weights}{', compiled decode step' if engine.compiles else ''}", flush=True)
    print(f"serving {model_dir} as '{app.state.model_name}' on http://{cfg.host}:{cfg.port}/ "
          f"(chat page at /, OpenAI API at /v1{', API key required' if key else ''})", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
