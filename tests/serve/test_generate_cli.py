"""`gristmill generate`: the engine behind the command line, greedy text as the single-request path gives it,
seeded sampling repeatable, a prompt longer than the window kept by its end, bad options one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import tiny_text

from gristmill.cli import main
from gristmill.formats.chat import encode_chat
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import generate
from gristmill.model.io import load_for_inference


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_for_inference(tiny_model_dir, "cpu")


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["generate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_greedy_text_is_the_prompt_and_the_models_continuation(tiny_model_dir: Path, loaded, capsys):
    model, tok = loaded
    code, out, _ = run(capsys, str(tiny_model_dir), "--prompt", "HAMLET.\nTo be", "--temperature", "0",
                       "--max-new-tokens", "12", "--weights", "fp32")
    want = generate(model, tok, "HAMLET.\nTo be", SamplingParams(max_new_tokens=12, temperature=0)).text
    assert code == 0 and out == "HAMLET.\nTo be" + want + "\n" and want.strip()
    # --chat wraps the prompt in the chat template and prints the answer only
    code, out, _ = run(capsys, str(tiny_model_dir), "--prompt", "Who is Hamlet?", "--chat", "--temperature", "0",
                       "--max-new-tokens", "8", "--weights", "fp32")
    ids, _ = encode_chat(tok, [{"role": "user", "content": "Who is Hamlet?"}], add_generation_prompt=True)
    assert code == 0 and out == generate(model, tok, ids, SamplingParams(max_new_tokens=8, temperature=0)).text + "\n"


def test_seeded_sampling_repeats_and_long_prompts_keep_their_end(tiny_model_dir: Path, capsys):
    args = [str(tiny_model_dir), "--prompt", "Enter GHOST.", "--temperature", "1", "--seed", "7",
            "--max-new-tokens", "10", "--weights", "bf16"]
    first, second = run(capsys, *args), run(capsys, *args)
    assert first[0] == 0 and first[1] == second[1]
    code, out, _ = run(capsys, str(tiny_model_dir), "--prompt", tiny_text()[:5000], "--temperature", "0",
                       "--max-new-tokens", "4")
    assert code == 0 and out.startswith(tiny_text()[:100])


def test_bad_options_are_one_line(tiny_model_dir: Path, capsys):
    code, _, err = run(capsys, str(tiny_model_dir), "--prompt", "x", "--top-p", "1.5")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "top_p" in err
    code, _, err = run(capsys, str(tiny_model_dir), "--prompt", "x", "--weights", "fp32", "--compile")
    assert code == 2 and err.strip().splitlines() == [
        "gristmill: error: compile needs weights bf16, int8 or int4 (fp32 decodes through the model's own "
        "modules); set weights, or leave compile off"]
