"""Decode speed and quality of the engine's weight formats on SmolLM2-135M-Instruct (CPU), beside
transformers and llama.cpp on the same weights (issue #14).

    .venv/bin/python benchmarks/decode_speed.py [--model-dir /tmp/smol] [--tokens 64] [--threads 2]
                                                [--batch 16] [--formats fp32,bf16,int8,int4,auto] [--skip-peers]

For each Gristmill weight format (fp32, bf16, int8, int4, and what ``auto`` picks; see
gristmill/inference/quant.py):

* single-stream decode tok/s through the engine (greedy, ``--tokens`` new tokens after a chat prompt), and
  for the formats in ``--compiled`` (default: what ``auto`` picks) also with the compiled decode step
  (``EngineConfig.compile``; its start-up time, compilation included, is printed),
* aggregate decode tok/s of ``--batch`` different chat prompts decoded together,
* perplexity on a fixed Macbeth passage (``--ppl-tokens`` tokens, one window), and its % above fp32's.

Peers on the same weights and thread count: transformers' ``generate`` in fp32 (single stream and batch
``--batch``, loaded from the GGUF), and llama-cpp-python on the Q4_1 GGUF itself in a subprocess when
``llama_cpp`` is importable (a crash in its native code is reported, not fatal; the build of this venv
died with SIGSEGV (exit -11) on this machine, so the peers environment serve_load.py builds is used when present). Decode tokens/s =
streams * (tokens - 1) / (time for all - time for one): prompt processing is left out; best of two runs.
Figures depend on what else the machine runs: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from _smol import QUESTIONS, decode_rate, gguf_path, smol_model_dir, uptime, validation_text

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".bench" / "peers" / "bin" / "python"
"""The peers' environment serve_load.py builds (llama-cpp-python compiled without AMX), used if present."""


def llama_rate(gguf: str, ids: list[int], threads: int, tokens: int) -> float:
    """Decode tokens/s of llama-cpp-python on the Q4_1 GGUF (run in its own process)."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_threads=threads, n_ctx=1024, verbose=False)

    def llama_generate(n: int) -> None:
        llm.reset()
        for i, _ in enumerate(llm.generate(ids, temp=0.0, reset=True)):
            if i + 1 >= n:
                break

    return decode_rate(llama_generate, tokens)


def llama_subprocess(python: str, ids: list[int], threads: int, tokens: int) -> float | str:
    """llama.cpp's rate (this file run by ``python`` in a subprocess: a crash in native code is reported,
    not fatal), or why there is none."""
    proc = subprocess.run([python, __file__, "--_llama", str(gguf_path()), json.dumps(ids), str(threads),
                           str(tokens)], capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout.strip():
        return float(proc.stdout.split()[-1])
    if "No module named 'llama_cpp'" in proc.stderr:
        return "llama_cpp is not importable (pip install llama-cpp-python)"
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    return f"failed (exit code {proc.returncode}): {last}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/smol"),
                    help="Gristmill model directory of SmolLM2 (imported from the GGUF if missing)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per stream")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="streams decoded together for the aggregate rate")
    ap.add_argument("--formats", default="fp32,bf16,int8,int4,auto", help="Gristmill weight formats, comma-separated")
    ap.add_argument("--compiled", default="auto",
                    help="formats whose single stream is also timed with the compiled decode step (EngineConfig."
                         "compile), comma-separated; empty for none")
    ap.add_argument("--ppl-tokens", type=int, default=1024, help="tokens of the validation passage")
    ap.add_argument("--skip-peers", action="store_true", help="measure Gristmill only")
    ap.add_argument("--llama-python", help="the Python that has llama_cpp (default: serve_load.py's peers "
                                           "environment if built, else this one)")
    ap.add_argument("--_llama", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._llama:
        gguf, ids, threads, tokens = args._llama
        print(llama_rate(gguf, json.loads(ids), int(threads), int(tokens)))
        return

    import torch

    from gristmill.formats.chat import encode_chat
    from gristmill.inference.engine import Engine, EngineConfig
    from gristmill.inference.sampling import SamplingParams
    from gristmill.model.io import load_for_inference

    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}\n"
          f"uptime before: {uptime()}", flush=True)
    model, tok = load_for_inference(smol_model_dir(args.model_dir), "cpu")
    prompts = [encode_chat(tok, [{"role": "user", "content": q}], add_generation_prompt=True)[0]
               for q in (QUESTIONS * args.batch)[:args.batch]]
    ids = prompts[0]
    val = tok.encode(validation_text()).ids[:args.ppl_tokens]

    def params(n: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=n, temperature=0, stop_token_ids=())  # every answer n tokens

    rows: dict[str, tuple[float | str, float | str]] = {}  # name -> (single stream, batch aggregate)
    ppl: dict[str, float] = {}
    for fmt in args.formats.split(","):
        with Engine(model, tok, EngineConfig(max_batch=args.batch, max_queue=args.batch, weights=fmt)) as engine:
            if fmt == "auto":
                fmt = f"auto={engine.weights}"
            ppl[fmt] = engine.perplexity(val)
            single = decode_rate(lambda n: engine.submit(ids, params(n)).result(), args.tokens)
            print(f"  gristmill {fmt}: single stream {single:.1f} tok/s", flush=True)

            def batch(n: int) -> None:
                for h in engine.submit_many(prompts, params(n)):
                    h.result()

            rows[f"gristmill engine ({fmt})"] = (single, decode_rate(batch, args.tokens, args.batch))
            print(f"  gristmill {fmt}: batch {args.batch} {rows[f'gristmill engine ({fmt})'][1]:.1f} tok/s, "
                  f"perplexity {ppl[fmt]:.3f}", flush=True)
        asked, name = fmt.split("=")[0], fmt.split("=")[-1]  # "auto=int4": asked for auto, runs int4
        if asked in args.compiled.split(","):
            with Engine(model, tok, EngineConfig(max_batch=args.batch, max_queue=args.batch, weights=name,
                                                 compile=True)) as engine:
                t = time.perf_counter()
                engine.start()
                started = time.perf_counter() - t
                single = decode_rate(lambda n: engine.submit(ids, params(n)).result(), args.tokens)
            rows[f"gristmill engine ({name}, compiled)"] = (single, "(eager)")
            print(f"  gristmill {name} compiled: single stream {single:.1f} tok/s (start-up with compilation "
                  f"{started:.0f} s)", flush=True)

    if not args.skip_peers:
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            rows["transformers"] = ("not installed", "")
        else:
            gguf = gguf_path()
            hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
            width = max(len(p) for p in prompts)
            pad = [[2] * (width - len(p)) + p for p in prompts]  # left padding, as generate wants
            mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]

            def hf_generate(n: int, rows_: list[list[int]], attn: list[list[int]]) -> None:
                with torch.inference_mode():
                    hf.generate(torch.tensor(rows_), attention_mask=torch.tensor(attn), max_new_tokens=n,
                                min_new_tokens=n, do_sample=False, pad_token_id=2)

            single = decode_rate(lambda n: hf_generate(n, [ids], [[1] * len(ids)]), args.tokens)
            print(f"  transformers fp32: single stream {single:.1f} tok/s", flush=True)
            rows["transformers generate (fp32)"] = (single, decode_rate(lambda n: hf_generate(n, pad, mask),
                                                                         args.tokens, args.batch))
            del hf
        python = args.llama_python or (str(PEER_PYTHON) if PEER_PYTHON.is_file() else sys.executable)
        rate = llama_subprocess(python, ids, args.threads, args.tokens)
        rows["llama.cpp (llama-cpp-python, Q4_1)"] = (rate, "")
        print(f"  llama.cpp: {rate} (python {python})", flush=True)

    ref = rows.get("transformers generate (fp32)", (None,))[0]
    ref = ref if isinstance(ref, float) else None
    print(f"\ndecode tok/s, {args.tokens} new tokens per stream, greedy, {args.threads} threads "
          f"(x = vs transformers fp32 single stream):")
    print(f"  {'':40s} {'single':>8s} {'x':>6s} {f'batch {args.batch}':>10s} {'x':>6s}")
    for name, (one, many) in rows.items():
        cells = []
        for v in (one, many):
            if isinstance(v, float):
                cells.append(f"{v:8.1f} {v / ref:5.1f}x" if ref else f"{v:8.1f} {'':>6s}")
            else:
                cells.append(f"{v!s:>15s}" if v else f"{'':>15s}")
        print(f"  {name:40s} {cells[0]} {cells[1]:>17s}")
    if "fp32" in ppl:
        print(f"\nperplexity on {len(val)} tokens of Macbeth (one window):")
        for fmt, p in ppl.items():
            print(f"  {fmt:5s} {p:8.3f}  {100 * (p / ppl['fp32'] - 1):+.2f}% vs fp32")
    print(f"uptime after: {uptime()}", flush=True)


if __name__ == "__main__":
    main()
