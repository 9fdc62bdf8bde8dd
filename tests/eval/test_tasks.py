"""Task files in lm-evaluation-harness's format: the keys Gristmill reads, the ones it refuses (one line
naming file and key), the prompts it builds (lm-eval's layout, few-shot draws that never show the item
itself), records it skips (counted, with a reason) and the metrics it computes. No model, no torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gristmill.errors import ConfigError
from gristmill.eval.tasks import load_task, load_tasks
from gristmill.eval.tasks.base import exact_match, token_f1

QUESTIONS = [{"q": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 7)], "label": 0}
             for a, b in [(1, 2), (2, 5), (3, 3), (4, 1), (6, 2), (7, 7)]]


def write_task(folder: Path, name: str = "sums", records: list | None = None, lines: list[str] | None = None,
               **keys) -> Path:
    """A task YAML plus its JSONL test split (records, or raw lines) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    if lines is None:
        lines = [json.dumps(r) for r in (QUESTIONS if records is None else records)]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data.name}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "Q: {{q}}\nA:",
            "doc_to_choice": "choices", "doc_to_target": "label", **keys}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def test_prompts_follow_lm_evals_layout(tmp_path: Path):
    task = load_task(write_task(tmp_path, description="Arithmetic.\n\n"))
    items = task.items()
    assert len(items) == len(QUESTIONS) and [it.doc_id for it in items] == list(range(len(QUESTIONS)))
    first = items[0]
    assert first.context == "Arithmetic.\n\nQ: What is 1 plus 2?\nA:"
    assert first.choices == ["3", "4", "9"] and first.gold == [0]
    # the continuation carries the target delimiter, as lm-eval asks it
    assert first.requests(task.spec) == [(first.context, " 3"), (first.context, " 4"), (first.context, " 9")]


def test_fewshot_examples_are_drawn_with_the_seed_and_never_include_the_item(tmp_path: Path):
    path = write_task(tmp_path, fewshot_split="test", num_fewshot=len(QUESTIONS) - 1, fewshot_delimiter="\n##\n")
    task = load_task(path)
    for it in task.items():
        shots, own = it.context.rsplit("\n##\n", 1)
        assert own == f"Q: {it.doc['q']}\nA:"
        assert it.doc["q"] not in shots  # the pool minus the item: every other question, never this one
        assert sum(q["q"] in shots for q in QUESTIONS) == len(QUESTIONS) - 1
        assert f"Q: {QUESTIONS[0]['q']}\nA: 3" in shots or it.doc_id == 0  # answers are the gold choice
    two = [it.context for it in task.items(num_fewshot=2, seed=1)]
    assert two == [it.context for it in load_task(path).items(num_fewshot=2, seed=1)]  # same seed, same draws
    assert two != [it.context for it in task.items(num_fewshot=2, seed=2)]
    assert all(it.context.count("\n##\n") == 2 for it in task.items(num_fewshot=2, seed=1))


def test_a_duplicate_of_the_item_in_the_fewshot_split_is_not_shown(tmp_path: Path):
    path = write_task(tmp_path, fewshot_split="train", num_fewshot=1)
    spec = yaml.safe_load(path.read_text())
    # the few-shot split: one copy of the first question and one other record
    (tmp_path / "train.jsonl").write_text(json.dumps(QUESTIONS[0]) + "\n" + json.dumps(QUESTIONS[1]) + "\n")
    spec["dataset_kwargs"]["data_files"]["train"] = "train.jsonl"
    path.write_text(yaml.safe_dump(spec))
    for seed in range(5):
        first = load_task(path).items(seed=seed)[0]
        assert first.context == f"Q: {QUESTIONS[1]['q']}\nA: 7\n\nQ: {QUESTIONS[0]['q']}\nA:"


def test_malformed_records_are_skipped_counted_and_kept(tmp_path: Path):
    lines = [json.dumps(QUESTIONS[0]), "{not json", "[1, 2]", json.dumps({"q": "no choices"}),
             json.dumps({**QUESTIONS[1], "label": 7}), json.dumps(QUESTIONS[2])]
    task = load_task(write_task(tmp_path, lines=lines))
    items = task.items()
    assert [it.line for it in items] == [1, 6]
    assert [(s.line, s.reason.split(":")[0]) for s in task.skipped] == [
        (2, "invalid_json"), (3, "not_an_object"), (4, "bad_record"), (5, "bad_record")]
    assert task.skipped_reasons() == {"invalid_json": 1, "not_an_object": 1, "bad_record": 2}
    assert "outside the 3 choices" in task.skipped[3].reason and task.skipped[0].record == "{not json"
    assert len(items) + len(task.skipped) == len(lines)  # every line accounted for
    task.items(num_fewshot=0, seed=5)
    assert len(task.skipped) == 4  # building again does not count twice


def test_a_task_whose_template_fits_no_record_is_an_error_naming_the_file(tmp_path: Path):
    path = write_task(tmp_path, doc_to_text="{{question}}")
    with pytest.raises(ConfigError, match=r"sums.yaml: task 'sums' has no usable records.*question"):
        load_task(path).items()


@pytest.mark.parametrize("key, value, message", [
    ("process_docs", "x", "key 'process_docs' is not supported: Python document hooks"),
    ("filter_list", [], "key 'filter_list' is not supported"),
    ("num_fewshots", 2, "unknown key 'num_fewshots'"),
    ("dataset_path", "hellaswag", "key 'dataset_path' is 'hellaswag': Gristmill reads local JSONL only"),
    ("output_type", "ranking", "key 'output_type' is 'ranking'"),
    ("metric_list", [{"metric": "bleu"}], "names metric 'bleu'"),
    ("metric_list", [{"metric": "acc", "aggregation": "median"}], "only 'mean' is supported"),
    ("test_split", "dev", "key 'test_split' names split 'dev'"),
    ("doc_to_text", "{{ q", "key 'doc_to_text' is not a valid Jinja2 template"),
    ("generation_kwargs", {"until": ["\n"]}, "only applies to output_type generate_until"),
])
def test_unsupported_or_unknown_keys_are_one_line_errors(tmp_path: Path, key, value, message):
    path = write_task(tmp_path, **{key: value})
    with pytest.raises(ConfigError) as e:
        load_task(path).items()
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_function_hooks_are_refused_naming_the_key(tmp_path: Path):
    path = write_task(tmp_path)
    path.write_text(path.read_text() + "process_results: !function utils.process\n")
    with pytest.raises(ConfigError, match=r"key 'process_results' uses `!function utils.process`: Python hooks "
                                          r"are not supported"):
        load_task(path)


@pytest.mark.parametrize("keys, message", [
    ({"generation_kwargs": {"until": ["\n"], "do_sample": True}}, "key 'generation_kwargs' asks for do_sample: true"),
    ({"generation_kwargs": {"top_p": 0.9}}, "key 'generation_kwargs' has 'top_p', which is not supported"),
    ({"metric_list": [{"metric": "exact_match", "regexes_to_ignore": ","}]}, "it takes a list of regular expressions"),
    ({"metric_list": [{"metric": "exact_match", "regexes_to_ignore": ["("]}]}, "which does not compile"),
    ({"metric_list": [{"metric": "f1", "ignore_case": True}]}, "gives f1 option 'ignore_case', which is not supported"),
])
def test_generation_tasks_are_greedy_and_their_metric_options_checked(tmp_path: Path, keys, message):
    path = write_task(tmp_path, output_type="generate_until", doc_to_choice=None, doc_to_target="{{choices[0]}}",
                      **keys)
    with pytest.raises(ConfigError, match=message):
        load_task(path)


def test_a_generation_task_reads_its_stop_strings(tmp_path: Path):
    task = load_task(write_task(tmp_path, output_type="generate_until", doc_to_choice=None,
                                doc_to_target="{{choices[0]}}", fewshot_delimiter="\n##\n",
                                metric_list=[{"metric": "exact_match", "ignore_case": True}, {"metric": "f1"}]))
    assert task.spec.generation.until == ("\n##\n",) and task.spec.generation.max_gen_toks == 256  # lm-eval's
    item = task.items()[0]
    assert item.gold == ["3"] and item.requests(task.spec) == [(item.context, task.spec.generation)]
    assert task.score(item, "3")["metrics"] == {"exact_match": 1.0, "f1": 1.0}
    assert task.score(item, " 3")["metrics"] == {"exact_match": 0.0, "f1": 1.0}


def test_folders_includes_and_relative_paths(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("\n".join(json.dumps(q) for q in QUESTIONS))
    (tmp_path / "_base.yaml").write_text(yaml.safe_dump({
        "dataset_path": "json", "output_type": "multiple_choice", "doc_to_text": "{{q}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}", "test_split": "test"}))
    sub = tmp_path / "tasks"
    sub.mkdir()
    (sub / "one.yaml").write_text(yaml.safe_dump({
        "include": "../_base.yaml", "task": "one", "dataset_kwargs": {"data_files": {"test": "../data/a.jsonl"}}}))
    (sub / "two.yml").write_text(yaml.safe_dump({
        "include": str(tmp_path / "_base.yaml"), "task": "two", "doc_to_text": "Question: {{q}}",
        "dataset_kwargs": {"data_files": {"test": str(data / "a.jsonl")}}}))
    tasks = load_tasks(tmp_path)  # the base file has no task key: a template, passed over
    assert [t.name for t in tasks] == ["one", "two"]
    assert tasks[0].items()[1].context == QUESTIONS[1]["q"]
    assert tasks[1].items()[1].context == "Question: " + QUESTIONS[1]["q"]
    assert tasks[0].items()[1].gold == [0]  # "{{label}}" renders "0": an index, as lm-eval reads it
    with pytest.raises(ConfigError, match="defined twice"):
        load_tasks([sub / "one.yaml", sub / "one.yaml"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_tasks(tmp_path / "missing.yaml")


def test_metrics_and_their_standard_errors(tmp_path: Path):
    task = load_task(write_task(tmp_path, metric_list=[{"metric": "acc"}, {"metric": "acc_norm"},
                                                       {"metric": "acc_bytes"}]))
    items = task.items()[:2]
    # item 0: choice "9" (index 2) has the highest log-likelihood; the gold is "3" (index 0)
    s0 = task.score(items[0], [(-3.0, False), (-2.2, False), (-2.0, True)])
    assert s0["metrics"] == {"acc": 0.0, "acc_norm": 0.0, "acc_bytes": 0.0} and s0["prediction"] == 2
    s1 = task.score(items[1], [(-1.0, True), (-5.0, False), (-5.0, False)])
    assert s1["metrics"]["acc"] == 1.0 and s1["correct"]
    agg = task.aggregate([s0, s1])
    assert agg["acc"]["value"] == 0.5 and agg["acc"]["stderr"] == pytest.approx(0.5)  # sd 0.7071 / sqrt(2)
    # acc_norm divides by the choice's length in characters (lm-eval), acc_bytes by its UTF-8 size
    item = items[0]
    item.choices = ["é", "ab", "xyz"]
    s = task.score(item, [(-2.0, False), (-3.0, False), (-4.4, False)])
    # per character -2, -1.5, -1.47 (picks "xyz"); per byte -1, -1.5, -1.47 (picks "é", the gold)
    assert s["prediction"] == 0 and s["prediction_norm"] == 2
    assert s["metrics"] == {"acc": 1.0, "acc_norm": 0.0, "acc_bytes": 1.0}


def test_loglikelihood_metrics(tmp_path: Path):
    task = load_task(write_task(tmp_path, output_type="loglikelihood", doc_to_choice=None,
                                doc_to_target="{{' ' + choices[0]}}", target_delimiter=""))
    items = task.items()
    assert items[0].requests(task.spec) == [("Q: What is 1 plus 2?\nA:", " 3")]
    scores = [task.score(items[0], [(-1.0, True)]), task.score(items[1], [(-3.0, False)])]
    agg = task.aggregate(scores)
    assert agg["perplexity"]["value"] == pytest.approx(math.exp(2.0))
    assert agg["acc"]["value"] == 0.5


def test_exact_match_options_and_token_f1():
    assert exact_match(" king of", "king", regexes_to_ignore=[r"^\s+", r"\W.*$"])
    assert not exact_match("King", "king") and exact_match("King!", "king", ignore_case=True, ignore_punctuation=True)
    assert token_f1("The King, dead!", "king dead") == 1.0  # articles, case, punctuation do not count
    assert token_f1("a red rose", "the white rose") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_task_modules_do_not_import_torch(tmp_path: Path):
    path = write_task(tmp_path)
    code = (f"import sys; from gristmill.eval.tasks import load_tasks; from gristmill.eval.tasks import builtin; "
            f"load_tasks([{str(path)!r}])[0].items(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
