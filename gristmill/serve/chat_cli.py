"""A conversation with a model in the terminal: type a message, watch the answer stream in.

Lines are read from stdin (line editing where the terminal has it); the conversation is kept and sent with
every turn, its oldest turns dropped when it would no longer fit the context window. ``/reset`` starts
over, ``/exit`` (or end of input, Ctrl-D) quits. Ctrl-C while an answer streams stops that answer; at
the prompt it quits.

Generation runs on the same :class:`~gristmill.inference.engine.Engine` the server uses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from gristmill.errors import GristmillError, InputError
from gristmill.formats.chat import encode_chat
from gristmill.inference.engine import Engine, EngineConfig
from gristmill.inference.sampling import SamplingParams
from gristmill.model.io import load_for_inference, resolve_model_dir
from gristmill.runtime import resolve_device

if TYPE_CHECKING:
    from tokenizers import Tokenizer

HELP = "/reset starts a new conversation, /exit quits (or Ctrl-D); Ctrl-C stops an answer"


def fit_history(tokenizer: Tokenizer, messages: list[dict[str, str]], room: int) -> tuple[list[int], int]:
    """Token ids of the conversation (with the assistant prompt) in at most ``room`` tokens, dropping the
    oldest turns after the system message; also how many messages were dropped. InputError when even the
    last user message alone does not fit."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = 0
    while True:
        ids, _ = encode_chat(tokenizer, system + turns, add_generation_prompt=True)
        if len(ids) <= room:
            return ids, dropped
        if len(turns) <= 1:
            raise InputError(f"the message is {len(ids)} tokens with the chat template but at most {room} fit "
                             f"the context window with room for an answer; shorten it")
        # drop the oldest exchange (the conversation must still start with a user message)
        cut = 2 if len(turns) > 2 and turns[1]["role"] == "assistant" else 1
        turns, dropped = turns[cut:], dropped + cut


def _read(prompt: str, stdin: TextIO, stdout: TextIO) -> str | None:
    """A line from the user without its newline; None at end of input."""
    if stdin is sys.stdin and stdout is sys.stdout and stdin.isatty():
        try:
            import readline  # noqa: F401  (imported for its side effect: line editing and history for input())
        except ImportError:
            pass
        try:
            return input(prompt)
        except EOFError:
            return None
    stdout.write(prompt)
    stdout.flush()
    line = stdin.readline()
    return line.rstrip("\n") if line else None


def chat(run_or_model_dir: Path, device: str = "auto", system: str | None = None, *, model: str = "auto",
         max_tokens: int = 256, temperature: float = 0.7, top_p: float | None = 0.95, seed: int | None = None,
         weights: str = "auto", compile: bool = False, stdin: TextIO | None = None,
         stdout: TextIO | None = None) -> int:
    """Talk with the model of a run (or a model directory) until /exit or end of input; returns 0.

    ``max_tokens`` caps each answer; ``temperature``, ``top_p`` and ``seed`` are the sampler's; ``weights`` and
    ``compile`` the engine's weight format and compiled decode step (:class:`~gristmill.inference.engine.EngineConfig`).
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model_dir = resolve_model_dir(Path(run_or_model_dir), model)
    try:
        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    except ValueError as e:
        raise InputError(str(e)) from None
    gpt, tokenizer = load_for_inference(model_dir, resolve_device(device))
    base: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    history = list(base)
    with Engine(gpt, tokenizer, EngineConfig(max_batch=1, max_queue=1, weights=weights, compile=compile)) as engine:
        engine.start()  # compiles the decode step now (with compile), not inside the first answer
        context = engine.context_length
        answer_room = min(max_tokens, context // 2)  # always leave half the window (at most) for the answer
        stdout.write(f"chatting with {model_dir} (context {context} tokens); {HELP}\n")
        while True:
            try:
                line = _read("you> ", stdin, stdout)
            except KeyboardInterrupt:
                line = None
            if line is None:
                stdout.write("\n")
                return 0
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                history = list(base)
                stdout.write("(new conversation)\n")
                continue
            if text.startswith("/"):
                stdout.write(f"unknown command {text.split()[0]}: {HELP}\n")
                continue
            messages = history + [{"role": "user", "content": text}]
            try:
                ids, dropped = fit_history(tokenizer, messages, context - answer_room)
            except GristmillError as e:
                stdout.write(f"error: {e}\n")
                continue
            if dropped:
                stdout.write(f"(the {dropped} oldest messages no longer fit the context window and were left out)\n")
            handle = engine.submit(ids, SamplingParams(**{**vars(params), "max_new_tokens": min(
                params.max_new_tokens, context - len(ids))}))
            stdout.write("assistant> ")
            stdout.flush()
            reply = ""
            try:
                for delta in handle:
                    reply += delta.text
                    stdout.write(delta.text)
                    stdout.flush()
            except KeyboardInterrupt:
                handle.cancel()
                stdout.write(" [stopped]")
            stdout.write("\n")
            if reply.strip():  # an empty answer is not kept, so the user may rephrase
                history = messages + [{"role": "assistant", "content": reply}]

