"""The lm-evaluation-harness adapter: lm-eval runs local task files on a Gristmill model directory and
gets what Gristmill's own harness gets, prompt for prompt and metric for metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from support import tiny_text

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager  # noqa: E402

from gristmill.eval.harness import GPTScorer, run_tasks  # noqa: E402
from gristmill.eval.lm_eval import GristmillLM, register  # noqa: E402
from gristmill.eval.tasks import load_tasks  # noqa: E402
from gristmill.eval.tasks.builtin import write_builtin_tasks  # noqa: E402
from gristmill.model.io import load_for_inference  # noqa: E402


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in tasks (cloze, continuation, cloze by generation) from Hamlet, a 2-shot multiple-choice task
    with a separate few-shot split, and a rolling log-likelihood (perplexity) task: every output type."""
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    docs = [p for p in tiny_text().split("\n\n") if len(p.split()) >= 16]
    write_builtin_tasks(docs, d, seed=2, n_items=12, generation=True, context_words=10, ending_words=3)
    words = " ".join(tiny_text()[:4000].split()).split()
    recs = [{"line": " ".join(words[i:i + 6]), "options": [words[i + 6], words[i + 20], words[i + 40]],
             "answer": 0} for i in range(0, 360, 12)]
    for split, part in (("test", recs[:18]), ("train", recs[18:])):
        (d / f"shots_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (d / "shots.yaml").write_text(yaml.safe_dump({
        "task": "gm_shots", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(d / "shots_test.jsonl"), "train": str(d / "shots_train.jsonl")}},
        "test_split": "test", "fewshot_split": "train", "num_fewshot": 2, "output_type": "multiple_choice",
        "doc_to_text": "Line: {{line}}\nNext:", "doc_to_choice": "{{options}}", "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}))
    texts = [{"text": " ".join(words[i:i + 90])} for i in range(0, 600, 90)]  # longer than the context window
    (d / "rolling.jsonl").write_text("".join(json.dumps(r) + "\n" for r in texts))
    (d / "rolling.yaml").write_text(yaml.safe_dump({
        "task": "gm_rolling", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(d / "rolling.jsonl")}},
        "test_split": "test", "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}"}))
    return d


TASKS = ["gristmill_cloze", "gristmill_continuation", "gristmill_cloze_gen", "gm_shots", "gm_rolling"]


def test_lm_eval_on_a_gristmill_model_matches_the_harness(tiny_model_dir: Path, task_dir: Path, tmp_path: Path):
    assert register() is GristmillLM and register() is GristmillLM  # registering twice is harmless
    out = lm_eval.simple_evaluate(
        model="gristmill", model_args=f"pretrained={tiny_model_dir}", tasks=TASKS, batch_size=4,
        task_manager=TaskManager(include_path=str(task_dir)), bootstrap_iters=0, log_samples=True)
    model, tok = load_for_inference(tiny_model_dir)
    ours = run_tasks(model, tok, load_tasks(task_dir), batch_size=3, samples_dir=tmp_path)
    for name in TASKS:
        theirs = out["results"][name]
        for metric, got in ours[name]["metrics"].items():
            assert theirs[f"{metric},none"] == pytest.approx(got["value"], rel=1e-6), (name, metric)
        assert len(out["samples"][name]) == ours[name]["items"]
    # the prompts (two few-shot examples from the train split, drawn with seed 1234) are the same strings
    items = load_tasks(task_dir / "shots.yaml")[0].items()
    contexts = {s["doc_id"]: s["arguments"][0][0] for s in out["samples"]["gm_shots"]}
    assert [contexts[i] for i in range(len(items))] == [it.context for it in items]
    assert all(it.context.count("\nNext: ") == 2 for it in items)
    # log-likelihoods, answer by answer, and generations
    theirs = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in out["samples"]["gristmill_continuation"]}
    mine = [json.loads(x) for x in (tmp_path / "gristmill_continuation.jsonl").read_text().splitlines()]
    for s in mine:
        assert theirs[s["doc_id"]] == pytest.approx(s["loglikelihoods"], abs=1e-5)
    theirs = {s["doc_id"]: s["resps"][0][0] for s in out["samples"]["gristmill_cloze_gen"]}
    mine = [json.loads(x) for x in (tmp_path / "gristmill_cloze_gen.jsonl").read_text().splitlines()]
    assert [theirs[s["doc_id"]] for s in mine] == [s["generation"] for s in mine]


def test_the_adapter_answers_lm_evals_requests(tiny_model_dir: Path):
    from lm_eval.api.instance import Instance

    model, tok = load_for_inference(tiny_model_dir)
    lm = GristmillLM(model=model, tokenizer=tok, batch_size="auto")
    ll = [Instance("loglikelihood", {}, ("To be, or not to", " be"), 0),
          Instance("loglikelihood", {}, ("To be, or not to", " sleep"), 1)]
    got = lm.loglikelihood(ll)
    assert got == GPTScorer(model, tok).loglikelihood([r.args for r in ll])
    assert len(lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("Hamlet speaks.",), 0)])) == 1
    gen = lm.generate_until([Instance("generate_until", {}, ("HAMLET.", {"until": ["\n"], "max_gen_toks": 5}), 0)])
    assert isinstance(gen[0], str) and "\n" not in gen[0]
    with pytest.raises(ValueError, match="only greedy decoding"):
        lm.generate_until([Instance("generate_until", {}, ("x", {"do_sample": True}), 0)])
    with pytest.raises(ValueError, match="pretrained"):
        GristmillLM()
