"""OpenAI's API shapes: request bodies (unknown fields such as ``user`` are accepted and ignored), the
log-probability objects of both endpoints, the error body ``{"error": {"message", "type", "param", "code"}}``,
and turning a validation failure into one sentence naming the field."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gristmill.errors import InputError
from gristmill.inference.engine import GenerationParams, TokenLogprob, token_bytes
from gristmill.inference.sampling import DEFAULT_STOP_IDS, MAX_SEED, SamplingParams

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # Clients often send null for "not set": every optional field accepts it and means the default.
    model: str | None = None
    """The served model's name (``GET /v1/models``); another name is a 404 ``model_not_found``."""
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    """Default 1; 0 is greedy."""
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    n: int | None = Field(None, ge=1, le=128)
    """Choices per prompt (the server refuses more than its batch holds)."""
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    """Token ids that also end generation, besides end of text and end of turn (an extension vLLM has too)."""
    ignore_eos: bool | None = False
    """Do not stop at end of text or end of turn, only at max_tokens, stop strings and ``stop_token_ids``
    (vLLM's extension; for benchmarks that need answers of a fixed length)."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop strings")
        return v

    @property
    def asked_tokens(self) -> int | None:
        """The ``max_tokens`` the client asked for (None: the server's default)."""
        return self.max_tokens

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _logprob_options(self) -> tuple[bool, int]:
        """(report log-probabilities, how many alternatives)."""
        return False, 0

    def params(self, default_max_tokens: int) -> GenerationParams:
        """The engine's parameters; without ``max_tokens``, ``default_max_tokens`` (the server caps it to the
        room left in the context)."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        logprobs, top = self._logprob_options()
        sampling = SamplingParams(max_new_tokens=self.asked_tokens or default_max_tokens,
                                  temperature=1.0 if self.temperature is None else self.temperature,
                                  top_k=self.top_k or None, top_p=self.top_p, stop=stop, seed=self.seed,
                                  stop_token_ids=(*(() if self.ignore_eos else DEFAULT_STOP_IDS),
                                                  *(self.stop_token_ids or ())))
        return GenerationParams(sampling, n=self.choices, presence_penalty=self.presence_penalty or 0.0,
                                frequency_penalty=self.frequency_penalty or 0.0, logprobs=logprobs,
                                top_logprobs=top)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    """One prompt, a list of prompts (n choices each), or one prompt as token ids."""
    logprobs: int | None = Field(None, ge=0, le=5)
    """Log-probability of each generated token and of this many alternatives (0: the token's own only)."""

    def _logprob_options(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The content as text; OpenAI's list-of-parts form is joined from its text parts."""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InputError("only text content parts ({'type': 'text', 'text': ...}) are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    """Newer name for max_tokens; wins when both are given."""
    logprobs: bool | None = False
    """Return the log-probability of each generated token."""
    top_logprobs: int | None = Field(None, ge=0, le=20)
    """With ``logprobs``, also this many most likely alternatives at each position."""

    @property
    def asked_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def _logprob_options(self) -> tuple[bool, int]:
        if self.top_logprobs and not self.logprobs:
            raise InputError("top_logprobs needs logprobs: true")
        return bool(self.logprobs), self.top_logprobs or 0


# ----------------------------------------------------------------------------------------------------
# Log-probabilities


def _token_text(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def completion_logprobs(tokenizer: Tokenizer, entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The ``logprobs`` object of a text completion choice (OpenAI's legacy shape); ``offset`` is where the
    first token's text starts in the choice's text."""
    tokens = [_token_text(tokenizer, e.token_id) for e in entries]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_token_text(tokenizer, t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer: Tokenizer, entries: list[TokenLogprob]) -> dict[str, Any]:
    """The ``logprobs`` object of a chat choice: per token its text, log-probability, UTF-8 bytes (a token
    may hold part of a character) and the alternatives."""

    def one(token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": _token_text(tokenizer, token_id), "logprob": logprob,
                "bytes": list(token_bytes(tokenizer, token_id))}

    return {"content": [{**one(e.token_id, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries],
            "refusal": None}


# ----------------------------------------------------------------------------------------------------
# Errors


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class APIError(Exception):
    """An error answered with OpenAI's body and the given HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


UNION_TYPES = {
    "prompt": "a string, a list of strings, or a list of token ids",
    "stop": "a string or a list of strings",
    "content": "a string or a list of text parts",
}
"""What a field with several accepted types takes, for the error message when none fits."""


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One sentence naming the first offending field, and the field (OpenAI's ``param``)."""
    errors = exc.errors()
    err = errors[0]
    if err.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    # pydantic reports a failed union once per member type, with the type in the location
    # (prompt.str, prompt.list[str].0 ...); cut the location at the first such part
    for i, part in enumerate(loc):
        if part in ("str", "int") or part.startswith("list["):
            union_at = ".".join(loc[:i])
            field = loc[i - 1] if i else ""
            return f"{union_at}: must be {UNION_TYPES.get(field, 'of another type')}", union_at
    param = ".".join(loc) or None
    msg = err.get("msg", "invalid request").removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param
