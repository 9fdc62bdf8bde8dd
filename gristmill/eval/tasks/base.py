"""A task's records turned into prompts and requests, and its per-item scores into metrics (no torch).

The prompt of an item follows lm-evaluation-harness exactly, so both tools score the same strings::

    description + (example text + target_delimiter + example answer + fewshot_delimiter) * num_fewshot
                + item text

and a multiple-choice item asks for the log-likelihood of ``target_delimiter + choice`` after it. Few-shot
examples are drawn with ``random.Random(seed)`` from the few-shot split, one draw per item in item order
(lm-eval's default sampler, seed 1234 as its default), and never include the item itself.

Records that cannot be used (not JSON, not an object, a template that fails on them, a gold label that is
not one of the choices) are skipped with a reason: :attr:`Task.skipped` counts and keeps them, and the
harness writes them to a quarantine file, so every line of the data is accounted for.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2

from gristmill.errors import ConfigError
from gristmill.eval.tasks.spec import MetricSpec, TaskSpec

FEWSHOT_SEED = 1234
"""lm-eval's default few-shot seed."""


@dataclass
class Skipped:
    """A record that was not scored, and why."""

    split: str
    file: str
    line: int
    reason: str
    record: Any
    """The parsed record, or the raw line when it was not JSON."""

    def quarantine(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "split": self.split, "record": self.record}


@dataclass
class Item:
    """One scored record: its prompt and what the model is asked."""

    doc_id: int
    """Position among the eval split's usable records (lm-eval's doc_id when no record is skipped)."""
    line: int
    doc: dict[str, Any]
    context: str
    """The prompt: description, few-shot examples and the item's own text."""
    choices: list[str] | None = None
    """multiple_choice: the choices (without the target delimiter)."""
    target: str | None = None
    """loglikelihood(_rolling): the scored text; generate_until: the first reference."""
    gold: list[Any] = field(default_factory=list)
    """multiple_choice: indices of the right choices; generate_until: the reference strings."""

    def requests(self, spec: TaskSpec) -> list[Any]:
        """What the scorer is asked, in lm-eval's shapes: (context, continuation) pairs for log-likelihoods,
        the text for rolling log-likelihoods, (context, GenerationSpec) for generation."""
        if spec.output_type == "multiple_choice":
            return [(self.context, spec.target_delimiter + c) for c in self.choices or []]
        if spec.output_type == "loglikelihood":
            return [(self.context, self.target)]
        if spec.output_type == "loglikelihood_rolling":
            return [self.target]
        return [(self.context, spec.generation)]


class _Templates:
    """lm-eval's reading of doc_to_text / doc_to_target / doc_to_choice: a field name, a Jinja2 template
    (undefined names are errors), or a literal."""

    def __init__(self, features: set[str]):
        self.features = features
        self.env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                      autoescape=False)
        self.env.filters["regex_replace"] = lambda s, pattern, repl, count=0: re.sub(pattern, repl, s, count=count)
        self._compiled: dict[str, Any] = {}

    def compile(self, source: str) -> Any:
        t = self._compiled.get(source)
        if t is None:
            t = self._compiled[source] = self.env.from_string(source)
        return t

    def render(self, source: str, doc: dict[str, Any]) -> str:
        return self.compile(source).render(**doc)

    def text(self, source: str, doc: dict[str, Any], has_choices: bool) -> str:
        if source in self.features:
            value = doc[source]
        else:
            value = self.render(source, doc)
            if has_choices and value.isdigit():
                raise ValueError("doc_to_text gives a number: multiple-input tasks are not supported")
        if not isinstance(value, str):
            raise ValueError(f"doc_to_text gives a {type(value).__name__}, not text")
        return value

    def target(self, source: str | int | list[Any], doc: dict[str, Any], has_choices: bool) -> Any:
        if isinstance(source, (int, list)):
            return source
        if source in self.features:
            return doc[source]
        value = self.render(source, doc)
        if value.isdigit() and has_choices:
            return ast.literal_eval(value)
        if len(value) >= 2 and value[0] == "[" and value[-1] == "]":
            try:
                return ast.literal_eval(value)
            except (SyntaxError, ValueError):
                return value
        return value

    def choices(self, source: str | list[Any] | dict[str, Any], doc: dict[str, Any]) -> list[str]:
        if isinstance(source, dict):
            value: Any = list(source.values())
        elif isinstance(source, list):
            value = source
        elif source in self.features:
            value = doc[source]
        else:
            value = ast.literal_eval(self.render(source, doc))
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise ValueError("doc_to_choice must give a non-empty list of non-empty strings")
        return value


RECORD_ERRORS = (ValueError, TypeError, KeyError, IndexError, SyntaxError, jinja2.TemplateError)
"""What a template or literal raises on a record it does not fit: the record is skipped with the reason."""


@dataclass
class _Usable:
    line: int
    doc: dict[str, Any]
    text: str
    item: Item


class Task:
    """A task file's spec and records. ``items()`` builds the prompts; ``score`` and ``aggregate`` turn the
    scorer's answers into metrics."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.skipped: list[Skipped] = []
        self._skipped_at: set[tuple[str, str, int]] = set()
        self._splits: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
        self._tpl: _Templates | None = None
        self._usable: list[_Usable] | None = None
        self._pool: list[tuple[dict[str, Any], str]] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"Task({self.spec.name!r}, {self.spec.output_type}, {self.spec.path})"

    # --- records

    def records(self, split: str) -> list[tuple[str, int, dict[str, Any]]]:
        """(file, line number, record) of a split's JSON objects; other lines are skipped with a reason."""
        if split not in self._splits:
            out = []
            for path in self.spec.data_files[split]:
                out += self._read(split, Path(path))
            self._splits[split] = out
        return self._splits[split]

    def _read(self, split: str, path: Path) -> list[tuple[str, int, dict[str, Any]]]:
        out = []
        try:
            f = open(path, encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{self.spec.path}: cannot read {path} ({e.strerror})") from e
        with f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    self._skip(split, str(path), lineno, f"invalid_json: {e}", line.rstrip("\n"))
                    continue
                if not isinstance(rec, dict):
                    self._skip(split, str(path), lineno, f"not_an_object: a JSON {type(rec).__name__}", rec)
                    continue
                out.append((str(path), lineno, rec))
        return out

    def _skip(self, split: str, file: str, line: int, reason: str, record: Any) -> None:
        if (split, file, line) not in self._skipped_at:
            self._skipped_at.add((split, file, line))
            self.skipped.append(Skipped(split, file, line, reason, record))

    # --- prompts

    def _templates(self) -> _Templates:
        if self._tpl is None:
            spec = self.spec
            features = {k for _, _, rec in self.records(spec.eval_split) for k in rec}
            tpl = _Templates(features)
            for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "description"):
                source = getattr(spec, key)
                if isinstance(source, str) and source:
                    try:
                        tpl.compile(source)
                    except jinja2.TemplateSyntaxError as e:
                        raise ConfigError(f"{spec.path}: key '{key}' is not a valid Jinja2 template ({e})") from e
            self._tpl = tpl
        return self._tpl

    def _eval_records(self) -> list[_Usable]:
        """The eval split's records that render, in order (each rendered once; the others skipped)."""
        if self._usable is None:
            spec, tpl = self.spec, self._templates()
            has_choices = spec.doc_to_choice is not None
            usable, first_error = [], None
            for file, lineno, doc in self.records(spec.eval_split):
                try:
                    text = tpl.text(spec.doc_to_text, doc, has_choices) if spec.doc_to_text is not None else ""
                    item = self._item(tpl, doc, lineno, text)
                except RECORD_ERRORS as e:
                    reason = f"bad_record: {type(e).__name__}: {e}"
                    first_error = first_error or reason
                    self._skip(spec.eval_split, file, lineno, reason, doc)
                    continue
                usable.append(_Usable(lineno, doc, text, item))
            if not usable:
                why = f" (first: {first_error})" if first_error else ""
                raise ConfigError(f"{spec.path}: task '{spec.name}' has no usable records in split "
                                  f"'{spec.eval_split}'{why}; check the templates against the JSONL fields")
            self._usable = usable
        return self._usable

    def _fewshot_pool(self) -> list[tuple[dict[str, Any], str]]:
        """(record, its few-shot text) of the few-shot split's records that render; in the eval split's
        case its usable records, else the others are skipped with the reason."""
        if self._pool is None:
            spec, tpl = self.spec, self._templates()
            split = spec.fewshot_split
            if split is None:
                raise ConfigError(f"{spec.path}: num_fewshot > 0 needs a fewshot_split (or a training or "
                                  f"validation split)")
            has_choices = spec.doc_to_choice is not None
            pool = []
            if split == spec.eval_split:
                records = [("", u.line, u.doc) for u in self._eval_records()]
            else:
                records = self.records(split)
            for file, lineno, doc in records:
                try:
                    pool.append((doc, self._shot(tpl, doc, has_choices)))
                except RECORD_ERRORS as e:
                    if split != spec.eval_split:
                        self._skip(split, file, lineno, f"bad_record: {type(e).__name__}: {e}", doc)
            self._pool = pool
        return self._pool

    def items(self, num_fewshot: int | None = None, seed: int = FEWSHOT_SEED) -> list[Item]:
        """The eval split's usable records as items, with few-shot prompts drawn with ``seed``
        (``num_fewshot`` None = the task file's)."""
        spec = self.spec
        n_shot = spec.num_fewshot if num_fewshot is None else num_fewshot
        usable = self._eval_records()
        pool: list[tuple[dict[str, Any], str]] = []
        same_split = spec.fewshot_split == spec.eval_split
        if n_shot > 0:
            pool = self._fewshot_pool()
            need = n_shot + 1 if same_split else n_shot
            if len(pool) < need:
                raise ConfigError(f"{spec.path}: num_fewshot {n_shot} needs {need} usable examples in split "
                                  f"'{spec.fewshot_split}', which has {len(pool)}; lower num_fewshot")
        rnd = random.Random(seed)
        description = self._description()
        items = []
        for doc_id, u in enumerate(usable):
            shots = self._draw(rnd, pool, u.doc, n_shot, same_split) if n_shot else []
            prefix = description(u.doc) if description else ""
            items.append(replace(u.item, doc_id=doc_id, context=prefix + "".join(shots) + u.text))
        return items

    def _item(self, tpl: _Templates, doc: dict[str, Any], lineno: int, text: str) -> Item:
        spec = self.spec
        target = tpl.target(spec.doc_to_target, doc, spec.doc_to_choice is not None)
        item = Item(doc_id=-1, line=lineno, doc=doc, context=text)
        if spec.output_type == "multiple_choice":
            choices = tpl.choices(spec.doc_to_choice, doc)
            golds = target if isinstance(target, list) else [target]
            idx = []
            for g in golds:
                if isinstance(g, bool) or not isinstance(g, (int, str)):
                    raise ValueError(f"the target {g!r} is neither a choice index nor a choice")
                if isinstance(g, str):
                    if g not in choices:
                        raise ValueError(f"the target {g!r} is not one of the choices")
                    g = choices.index(g)
                if not 0 <= g < len(choices):
                    raise ValueError(f"the target index {g} is outside the {len(choices)} choices")
                idx.append(g)
            item.choices, item.gold = choices, idx
        elif spec.output_type == "generate_until":
            if spec.doc_to_choice is not None and isinstance(target, int):
                target = tpl.choices(spec.doc_to_choice, doc)[target]
            refs = target if isinstance(target, list) else [target]
            if not refs or not all(isinstance(r, (str, int, float)) for r in refs):
                raise ValueError("the target must be text or a list of texts")
            item.gold = [str(r) for r in refs]
            item.target = item.gold[0]
        else:
            if not isinstance(target, str) or not target:
                raise ValueError(f"the target must be non-empty text, got {type(target).__name__}")
            item.target = target
        return item

    def _shot(self, tpl: _Templates, doc: dict[str, Any], has_choices: bool) -> str:
        """A few-shot example as lm-eval writes it: text, target delimiter, answer, few-shot delimiter."""
        spec = self.spec
        q = tpl.text(spec.doc_to_text, doc, has_choices) if spec.doc_to_text is not None else ""
        a = tpl.target(spec.doc_to_target, doc, has_choices)
        if a is None or a == "":
            return q
        if isinstance(a, list):
            a = a[0]
        if isinstance(a, int) and has_choices:
            a = tpl.choices(spec.doc_to_choice, doc)[a]
        if not isinstance(a, str):
            raise ValueError(f"the few-shot answer is a {type(a).__name__}, not text")
        return q + spec.target_delimiter + a + spec.fewshot_delimiter

    def _description(self):
        source = self.spec.description
        if not source:
            return None
        tpl = self._templates()
        return lambda doc: str(doc[source]) if source in doc else tpl.render(source, doc)

    @staticmethod
    def _draw(rnd: random.Random, pool: list[tuple[dict[str, Any], str]], doc: dict[str, Any], n: int,
              same_split: bool) -> list[str]:
        """n examples for one item. From the item's own split: draw n + 1 and drop the item (lm-eval's
        sampler); from another split: draw n, and draw again without the item should a duplicate of it
        be among them."""
        picks = rnd.sample(pool, n + 1 if same_split else n)
        kept = [p for p in picks if p[0] != doc][:n]
        if len(kept) < n:
            kept = rnd.sample([p for p in pool if p[0] != doc], n)
        return [shot for _, shot in kept]

    # --- scores

    def score(self, item: Item, result: Any) -> dict[str, Any]:
        """Per-item metric inputs and the sample log's fields for the scorer's answer to ``item``:
        a list of (log-likelihood, is_greedy) per request, a float (rolling) or the generated text."""
        spec, names = self.spec, [m.name for m in self.spec.metrics]
        if spec.output_type == "multiple_choice":
            lls = [float(ll) for ll, _ in result]
            greedy = [bool(g) for _, g in result]
            choices = item.choices or []
            pred = _argmax(lls)
            pred_norm = _argmax([ll / len(c) for ll, c in zip(lls, choices, strict=True)])
            pred_bytes = _argmax([ll / len(c.encode("utf-8")) for ll, c in zip(lls, choices, strict=True)])
            values = {"acc": float(pred in item.gold), "acc_norm": float(pred_norm in item.gold),
                      "acc_bytes": float(pred_bytes in item.gold),
                      "exact_match": float(any(greedy[g] for g in item.gold))}
            log = {"choices": choices, "gold": item.gold, "loglikelihoods": lls, "is_greedy": greedy,
                   "prediction": pred, "prediction_norm": pred_norm, "correct": pred in item.gold}
        elif spec.output_type == "loglikelihood":
            ll, greedy = result[0]
            values = {"perplexity": float(ll), "acc": float(bool(greedy))}
            log = {"target": item.target, "loglikelihood": float(ll), "is_greedy": bool(greedy),
                   "correct": bool(greedy)}
        elif spec.output_type == "loglikelihood_rolling":
            ll = float(result)
            text = item.target or ""
            words, n_bytes = len(re.split(r"\s+", text)), len(text.encode("utf-8"))
            values = {"word_perplexity": (ll, words), "byte_perplexity": (ll, n_bytes), "bits_per_byte": (ll, n_bytes)}
            log = {"target": text, "loglikelihood": ll, "words": words, "bytes": n_bytes, "correct": None}
        else:
            text = str(result)
            options = next((m.options for m in spec.metrics if m.name == "exact_match"), {})
            em = float(any(exact_match(text, ref, **options) for ref in item.gold))
            values = {"exact_match": em, "f1": max(token_f1(text, ref) for ref in item.gold)}
            log = {"gold": item.gold, "generation": text, "prediction": text, "correct": bool(em)}
        return {"metrics": {k: values[k] for k in names}, **log}

    def aggregate(self, scores: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
        """Each metric over the items: ``{"value", "stderr"}`` (stderr None where lm-eval gives none)."""
        out: dict[str, dict[str, float | None]] = {}
        for m in self.spec.metrics:
            xs = [s["metrics"][m.name] for s in scores]
            out[m.name] = _aggregate(m, xs)
        return out

    def skipped_reasons(self) -> dict[str, int]:
        return dict(Counter(s.reason.split(":")[0] for s in self.skipped))


def _argmax(xs: Sequence[float]) -> int:
    """Index of the largest value, the first on ties (as numpy's argmax)."""
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def _mean_stderr(xs: Sequence[float]) -> float | None:
    """Standard error of the mean (sample standard deviation / sqrt(n)), as lm-eval reports it."""
    n = len(xs)
    if n < 2:
        return None
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def _aggregate(metric: MetricSpec, xs: Sequence[Any]) -> dict[str, float | None]:
    if not xs:
        return {"value": None, "stderr": None}
    name = metric.name
    if name == "perplexity":  # exp of the mean negative log-likelihood; stderr by the delta method
        mean_ll = sum(xs) / len(xs)
        ppl = math.exp(min(-mean_ll, 700.0))
        se = _mean_stderr(xs)
        return {"value": ppl, "stderr": None if se is None else ppl * se}
    if name in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        ll, units = sum(x[0] for x in xs), sum(x[1] for x in xs)
        if not units:
            return {"value": None, "stderr": None}
        value = -ll / units / math.log(2) if name == "bits_per_byte" else math.exp(min(-ll / units, 700.0))
        return {"value": value, "stderr": None}
    return {"value": sum(xs) / len(xs), "stderr": _mean_stderr(xs)}


def exact_match(prediction: str, reference: str, *, ignore_case: bool = False, ignore_punctuation: bool = False,
                ignore_numbers: bool = False, regexes_to_ignore: Sequence[str] | None = None) -> bool:
    """lm-eval's exact_match: equal strings after the optional clean-ups (regexes removed from both first)."""
    for pattern in regexes_to_ignore or ():
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        prediction, reference = prediction.translate(table), reference.translate(table)
    if ignore_numbers:
        table = str.maketrans("", "", string.digits)
        prediction, reference = prediction.translate(table), reference.translate(table)
    return prediction == reference


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 between normalised answers (1.0 when both are empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)
