"""Built-in tasks made from held-out documents (the evaluate stage passes prepare's validation documents).

- ``gristmill_cloze`` (LAMBADA-style): a passage of ``context_words`` words; the model should give its
  next word. Scored as ``loglikelihood``: the word's log-likelihood (perplexity) and whether it is the
  greedy continuation (acc). ``generation=True`` adds ``gristmill_cloze_gen``, the same items scored by
  exact match of a greedy generation.
- ``gristmill_continuation`` (HellaSwag-style): a passage and four endings of ``ending_words`` words,
  the true one and three taken from *other* documents. Scored as ``multiple_choice`` (acc, acc_norm).

Whitespace in passages and endings is collapsed to single spaces. Items are a pure function of the
documents (in order), the seed and the sizes: the same inputs give the same files, byte for byte.
:func:`write_builtin_tasks` writes each task as a YAML file and its JSONL items, loadable by
:func:`gristmill.eval.tasks.load_tasks` and by lm-evaluation-harness (``--include_path``): the data file
paths in the YAML are absolute, because lm-eval reads relative ones from its working directory.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gristmill.core.jsonl import write_jsonl
from gristmill.core.workspace import atomic_open
from gristmill.errors import InputError

CLOZE_TASK = "gristmill_cloze"
CLOZE_GEN_TASK = "gristmill_cloze_gen"
CONTINUATION_TASK = "gristmill_continuation"
_CLOZE_WORD = re.compile(r"(\w+)[^\w\s]*")
"""A word that may end in punctuation (dropped from the target); the word itself must be letters."""


def _words(documents: Sequence[str]) -> list[list[str]]:
    return [d.split() for d in documents]


def cloze_items(documents: Sequence[str], *, seed: int, n_items: int, context_words: int = 40,
                min_word_chars: int = 3) -> list[dict[str, Any]]:
    """Up to ``n_items`` passages of ``context_words`` words, each followed in its document by a word of at
    least ``min_word_chars`` letters (the target; trailing punctuation dropped). Passages are spread over
    the documents (in a shuffled cycle), at seeded random places, never twice the same."""
    words = _words(documents)
    eligible = [i for i, w in enumerate(words) if len(w) > context_words]
    if not eligible:
        raise InputError(f"the cloze task needs a document of more than {context_words} words; none of the "
                         f"{len(documents)} given is that long")
    rnd = random.Random(f"gristmill-cloze:{seed}")
    order = eligible[:]
    rnd.shuffle(order)
    items: list[dict[str, Any]] = []
    used: set[tuple[int, int]] = set()
    for attempt in range(max(n_items, 1) * 20):
        if len(items) >= n_items:
            break
        d = order[attempt % len(order)]
        w = words[d]
        at = rnd.randrange(context_words, len(w))
        target = None
        for j in range(at, len(w)):  # the first usable word from a random place on
            m = _CLOZE_WORD.fullmatch(w[j])
            if m and m.group(1).isalpha() and len(m.group(1)) >= min_word_chars:
                at, target = j, m.group(1)
                break
        if target is None or (d, at) in used:
            continue
        used.add((d, at))
        items.append({"id": len(items), "doc": d, "context": " ".join(w[at - context_words:at]), "word": target})
    return items


def continuation_items(documents: Sequence[str], *, seed: int, n_items: int, context_words: int = 40,
                       ending_words: int = 10, n_choices: int = 4) -> list[dict[str, Any]]:
    """Up to ``n_items`` passages with ``n_choices`` endings: the true one (the next ``ending_words`` words of
    the passage's document) at a seeded random position ``label``, and ``n_choices - 1`` spans of as many
    words from other documents (``distractor_docs``), all different."""
    words = _words(documents)
    sources = [i for i, w in enumerate(words) if len(w) >= context_words + ending_words]
    donors = [i for i, w in enumerate(words) if len(w) >= ending_words]
    if not sources or len(donors) < n_choices:
        raise InputError(f"the continuation task needs a document of at least {context_words + ending_words} "
                         f"words and {n_choices} documents of at least {ending_words} words; got "
                         f"{len(sources)} and {len(donors)} of {len(documents)}")
    rnd = random.Random(f"gristmill-continuation:{seed}")
    order = sources[:]
    rnd.shuffle(order)
    items: list[dict[str, Any]] = []
    used: set[tuple[int, int]] = set()
    for attempt in range(max(n_items, 1) * 20):
        if len(items) >= n_items:
            break
        d = order[attempt % len(order)]
        w = words[d]
        start = rnd.randrange(0, len(w) - context_words - ending_words + 1)
        others = [i for i in donors if i != d]
        if (d, start) in used or len(others) < n_choices - 1:
            continue
        true_end = " ".join(w[start + context_words:start + context_words + ending_words])
        endings, picked = [true_end], []
        for donor in rnd.sample(others, len(others)):  # other documents in a seeded order, until enough
            dw = words[donor]
            s = rnd.randrange(0, len(dw) - ending_words + 1)
            ending = " ".join(dw[s:s + ending_words])
            if ending not in endings:
                endings.append(ending)
                picked.append(donor)
            if len(picked) == n_choices - 1:
                break
        if len(picked) < n_choices - 1:
            continue
        used.add((d, start))
        label = rnd.randrange(n_choices)
        distractors = endings[1:]
        choices = distractors[:label] + [true_end] + distractors[label:]
        items.append({"id": len(items), "doc": d, "context": " ".join(w[start:start + context_words]),
                      "endings": choices, "label": label, "distractor_docs": picked})
    return items


def task_yaml(name: str, data_file: Path, body: dict[str, Any], note: str) -> str:
    """A task file's text: a comment saying what made it, then the keys."""
    spec = {"task": name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
            "test_split": "test", **body}
    return f"# {note}\n" + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=1000)


def write_builtin_tasks(documents: Sequence[str], out_dir: Path, *, seed: int = 1234, n_items: int = 200,
                        generation: bool = False, context_words: int = 40, ending_words: int = 10) -> list[Path]:
    """Write the built-in tasks made from ``documents`` into ``out_dir`` (``<task>.yaml`` + ``<task>.jsonl``
    each, atomically) and return the YAML paths: cloze, continuation (and the cloze generation task).

    ``context_words``: passage length of both tasks; ``ending_words``: length of the continuation task's
    endings (a passage and its ending must fit the model's context window)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    note = f"written by gristmill from {len(documents)} held-out documents, seed {seed}"
    cloze = cloze_items(documents, seed=seed, n_items=n_items, context_words=context_words)
    cont = continuation_items(documents, seed=seed, n_items=n_items, context_words=context_words,
                              ending_words=ending_words)
    mean = {"aggregation": "mean", "higher_is_better": True}
    tasks: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [
        (CLOZE_TASK, cloze, {
            "output_type": "loglikelihood", "doc_to_text": "{{context}}", "doc_to_target": "{{' ' + word}}",
            "target_delimiter": "",
            "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                            {"metric": "acc", **mean}]}),
        (CONTINUATION_TASK, cont, {
            "output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "endings",
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", **mean}, {"metric": "acc_norm", **mean}]}),
    ]
    if generation:
        tasks.append((CLOZE_GEN_TASK, cloze, {
            "output_type": "generate_until", "doc_to_text": "{{context}}", "doc_to_target": "{{word}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False, "temperature": 0.0},
            # the generation's first word only: drop leading spaces, then everything from the next non-word
            "metric_list": [{"metric": "exact_match", **mean, "regexes_to_ignore": [r"^\s+", r"\W.*$"]}]}))
    paths = []
    for name, items, body in tasks:
        data = out_dir / f"{name}.jsonl"
        write_jsonl(data, items)
        path = out_dir / f"{name}.yaml"
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(task_yaml(name, data, {**body, "metadata": {"version": 1}}, note))
        paths.append(path)
    return paths
