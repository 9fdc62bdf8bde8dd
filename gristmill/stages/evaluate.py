"""evaluate: every model of the run on the same held-out text, the same task suite and the same prompts.

The models are the ones the run made (``evaluate.models``): the pre-trained ``train/model``, the imported
``base/model`` and the fine-tuned ``finetune/model``. For each:

- loss, perplexity and bits per byte on prepare's validation documents (every model reads the same text
  with its own tokenizer; bits per byte compare across tokenizers), and on any ``heldout_files``, with
  :func:`gristmill.eval.lm.evaluate_lm` (the definition training's validation uses too);
- the task suite (:mod:`gristmill.eval.harness`): built-in tasks made from the validation documents,
  written to ``tasks/`` in lm-evaluation-harness's format, and the recipe's own task files; per-item logs
  go to ``samples/<model>/``;
- sampled continuations of plain-text prompts and greedy answers to chat prompts.

Writes ``eval.json``: ``{"models": {stage: {...metrics, "tasks", "samples", "chat_answers"}}, "text",
"sampling", "tasks"}``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext, load_manifest, write_json
from gristmill.errors import InputError
from gristmill.eval.config import EvaluateConfig

MODEL_STAGES = ("train", "base", "finetune")
"""Stages whose ``model/`` evaluate scores, in the order the report shows them."""
MODEL_NAMES = {"train": "pre-trained", "base": "imported base", "finetune": "fine-tuned"}
BUILTIN_FILES = {"cloze": "gristmill_cloze", "continuation": "gristmill_continuation",
                 "cloze_gen": "gristmill_cloze_gen"}


def models_to_score(run_dir: Path, cfg: EvaluateConfig) -> list[str]:
    """The model stages to score: those named, or every one that finished with a model."""
    from gristmill.model.io import is_model_dir

    if cfg.models is not None:
        return list(dict.fromkeys(cfg.models))
    return [s for s in MODEL_STAGES if load_manifest(run_dir / s) is not None and is_model_dir(run_dir / s / "model")]


def heldout_paths(cfg: EvaluateConfig) -> list[Path]:
    from gristmill.core.paths import expand

    return [f for loc in cfg.heldout_files for f in expand(loc)]


def task_paths(cfg: EvaluateConfig) -> list[Path]:
    """The user's task files: each YAML named, or every YAML in a folder named."""
    from gristmill.core.paths import resolve

    out = []
    for loc in cfg.tasks:
        p = Path(resolve(loc))
        if p.is_dir():
            found = sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml"))
            if not found:
                raise InputError(f"evaluate.tasks: {loc} holds no .yaml task files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"evaluate.tasks: {loc} does not exist; name a task YAML file or a folder of them")
    return out


def _lm(model: Any, tokenizer: Any, texts: list[str], cfg: EvaluateConfig, device: Any) -> dict[str, Any]:
    from gristmill.eval.lm import evaluate_lm, text_tokens
    from gristmill.runtime import autocast

    tokens, n_bytes, docs = text_tokens(tokenizer, texts, cfg.max_chars)
    if len(tokens) == 0 or n_bytes == 0:
        raise InputError("no held-out text to score: make prepare's validation split larger (prepare.val_fraction)")
    m = evaluate_lm(model, tokens, n_bytes, batch_size=cfg.batch_size, device=device,
                    autocast=lambda: autocast(device))
    return {**m, "documents": docs}


def run(ctx: StageContext, cfg: EvaluateConfig) -> dict[str, Any]:
    from gristmill.eval.canary import summarize as canary_summary
    from gristmill.eval.harness import run_tasks
    from gristmill.eval.samples import chat_answers
    from gristmill.eval.tasks import load_tasks
    from gristmill.eval.tasks.builtin import write_builtin_tasks
    from gristmill.formats.document import read_documents
    from gristmill.inference.sampling import SamplingParams
    from gristmill.inference.stream import generate
    from gristmill.model.io import load_for_inference
    from gristmill.runtime import resolve_device

    device = resolve_device(cfg.device)
    stages = models_to_score(ctx.run_dir, cfg)
    if not stages:
        raise InputError("evaluate found no model in this run: run train, base or finetune first "
                         "(or list the ones to score in evaluate.models)")
    texts = [d.text for d in read_documents(ctx.input_dir("prepare"), "val")]
    if not texts:
        raise InputError("prepare's validation split is empty: raise prepare.val_fraction and re-run")
    heldout = {p: p.read_text(encoding="utf-8", errors="replace") for p in heldout_paths(cfg)}

    paths: list[Path] = []
    not_built = None
    if cfg.builtin_tasks:
        wanted = {BUILTIN_FILES[t] for t in cfg.builtin_tasks}
        try:
            written = write_builtin_tasks(texts, ctx.out_dir / "tasks", seed=ctx.seed % 2**32,
                                          n_items=cfg.task_items, generation="cloze_gen" in cfg.builtin_tasks)
            paths += [p for p in written if p.stem in wanted]
        except InputError as e:  # too few validation documents: the rest of the evaluation still runs
            not_built = f"built-in tasks not made: {e}"
            ctx.log(f"[evaluate] {not_built}; raise prepare.val_fraction for them")
    paths += task_paths(cfg)
    tasks = load_tasks(paths) if paths else []

    canaries = _planted_canaries(ctx.run_dir)
    sampling = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_k": cfg.top_k,
                "top_p": cfg.top_p, "seed": ctx.seed}
    results: dict[str, Any] = {}
    for stage in stages:
        t0 = time.monotonic()
        model, tokenizer = load_for_inference(ctx.input_dir(stage) / "model", device)
        ctx.log(f"[evaluate] {stage}/model ({MODEL_NAMES[stage]}, {model.num_params():,} parameters)")
        lm = _lm(model, tokenizer, texts, cfg, device)
        r: dict[str, Any] = {"model": f"{stage}/model", **lm, "capped": cfg.max_chars is not None}
        ctx.log(f"[evaluate]   validation text: loss {lm['loss']:.4f}, bits per byte {lm['bits_per_byte']:.4f} over "
                f"{lm['tokens']:,} tokens ({lm['bytes']:,} bytes)")
        r["heldout"] = {str(p): _lm(model, tokenizer, [t], cfg, device) for p, t in heldout.items()}
        if tasks:
            r["tasks"] = run_tasks(model, tokenizer, tasks, batch_size=cfg.batch_size, seed=ctx.seed % 2**32,
                                   num_fewshot=cfg.num_fewshot, samples_dir=ctx.out_dir / "samples" / stage,
                                   device=device, limit=cfg.task_limit,
                                   log=lambda m: ctx.log(m.replace("[eval]", "[evaluate]  ")))
        samples = []
        if cfg.max_new_tokens:
            for i, prompt in enumerate(cfg.prompts):
                params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                        top_k=cfg.top_k or None, top_p=cfg.top_p, seed=ctx.seed + i)
                out = generate(model, tokenizer, prompt, params, truncate=True)
                samples.append({"prompt": prompt, "completion": out.text, "finish_reason": out.finish_reason,
                                "completion_tokens": out.completion_tokens})
        r["samples"] = samples
        r["chat_answers"] = chat_answers(model, tokenizer, cfg.chat_prompts, cfg.max_new_tokens) \
            if cfg.max_new_tokens else []
        if canaries:
            r["canaries"] = _canary_exposure(model, tokenizer, canaries, cfg, ctx.seed)
            c = canary_summary(r["canaries"])
            ctx.log(f"[evaluate]   canaries: exposure {c['planted']['exposure_mean']:.2f} bits planted, "
                    f"{c['controls']['exposure_mean']:.2f} controls (of {c['max_exposure']:.2f}); "
                    f"{c['planted']['extracted']} of {c['planted']['count']} extracted by greedy decoding")
        r["seconds"] = round(time.monotonic() - t0, 2)
        results[stage] = r
        del model

    result = {"models": results, "sampling": sampling,
              "text": {"split": "prepare/val", "documents": len(texts), "max_chars": cfg.max_chars},
              "tasks": [str(p) for p in paths], "tasks_not_built": not_built}
    write_json(ctx.out_dir / "eval.json", result)
    return {"models": {s: {"bits_per_byte": round(r["bits_per_byte"], 5), "loss": round(r["loss"], 5),
                           "tokens": r["tokens"], "bytes": r["bytes"],
                           "tasks": {t: {k: v["value"] for k, v in res["metrics"].items()}
                                     for t, res in (r.get("tasks") or {}).items()},
                           **({"canaries": canary_summary(r["canaries"])} if r.get("canaries") else {})}
                       for s, r in results.items()},
            "tasks": len(tasks)}


def _planted_canaries(run_dir: Path) -> list[Any]:
    """The canaries (planted and controls) the train stage wrote, or [] when it planted none."""
    import json

    from gristmill.eval.canary import Canary

    path = run_dir / "train" / "canaries.json"
    if not path.is_file():
        return []
    return [Canary(**c) for c in json.loads(path.read_text(encoding="utf-8"))["canaries"]]


def _canary_exposure(model: Any, tokenizer: Any, canaries: list[Any], cfg: EvaluateConfig, seed: int
                     ) -> list[dict[str, Any]]:
    from gristmill.eval.canary import exposure
    from gristmill.eval.harness import GPTScorer

    scorer = GPTScorer(model, tokenizer, batch_size=max(cfg.batch_size, 32))
    return exposure(scorer, canaries, cfg.canary_candidates, seed)


def canary_section(models: dict[str, dict[str, Any]]) -> str:
    """Markdown: each model's exposure of the planted canaries and of the controls."""
    from gristmill.eval.canary import summarize
    from gristmill.report.markdown import table

    rows = []
    for s, m in models.items():
        if not m.get("canaries"):
            continue
        c = summarize(m["canaries"])
        for label in ("planted", "controls"):
            if label in c:
                v = c[label]
                rows.append([MODEL_NAMES.get(s, s), label, v["count"], f"{v['exposure_mean']:.2f}",
                             f"{v['exposure_max']:.2f}", f"{v['extracted']} of {v['count']}"])
    if not rows:
        return ""
    top = next(summarize(m["canaries"])["max_exposure"] for m in models.values() if m.get("canaries"))
    return ("### Canaries\n\nSecrets planted in the pre-training data (`train/canaries.json`) and controls of the "
            "same format never trained on: exposure in bits = log2(candidates + 1) - log2(rank of the true secret "
            f"among random ones by the model's likelihood), at most {top:.2f}; extracted = greedy decoding from "
            "the prefix gives the secret.\n\n"
            + table(["model", "canaries", "count", "exposure mean", "exposure max", "extracted"], rows) + "\n")


def reads(cfg: EvaluateConfig) -> tuple[str, ...]:
    return ("prepare", *(cfg.models or ()))


def external_inputs(cfg: EvaluateConfig) -> list[Path]:
    files = heldout_paths(cfg)
    for t in task_paths(cfg):
        files.append(t)
        files += [p for p in _task_data_files(t) if p.is_file()]
    return files


def _task_data_files(task_yaml: Path) -> list[Path]:
    """The local data files a task YAML names (so a change to them re-runs evaluate)."""
    import yaml

    try:
        spec = yaml.safe_load(task_yaml.read_text(encoding="utf-8")) or {}
        files = (spec.get("dataset_kwargs") or {}).get("data_files") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []  # the loader reports a broken file with its reason when the stage runs
    values = files.values() if isinstance(files, dict) else [files]
    out = []
    for v in values:
        for f in v if isinstance(v, list) else [v]:
            p = Path(str(f))
            out.append(p if p.is_absolute() else task_yaml.parent / p)
    return out


METRIC_NAMES = {"loss": "loss (nats/token)", "perplexity": "perplexity", "bits_per_byte": "bits per byte",
                "tokens": "tokens predicted", "bytes": "bytes"}


def model_results(ev: Any) -> dict[str, dict[str, Any]]:
    """``{stage: result}`` of an ``eval.json`` in the order the run makes the models (empty if none)."""
    models = ev.get("models") if isinstance(ev, dict) else None
    if not isinstance(models, dict):
        return {}
    order = sorted(models, key=lambda s: MODEL_STAGES.index(s) if s in MODEL_STAGES else len(MODEL_STAGES))
    return {k: models[k] for k in order if isinstance(models[k], dict)}


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import clip, read_json_or_none, samples_section, table

    ev = read_json_or_none(rc.stage_dir("evaluate") / "eval.json")
    models = model_results(ev)
    if not models:
        return ""
    names = list(models)
    header = ["metric", *(f"{MODEL_NAMES.get(s, s)} ({s}/model)" for s in names)]
    rows = [[label, *(models[s].get(k) for s in names)] for k, label in METRIC_NAMES.items()]
    text = ev.get("text") or {}
    scope = f"the first {text['max_chars']:,} characters of" if text.get("max_chars") else "all of"
    parts = [f"## Evaluate\n\nEvery model on {scope} prepare's validation documents, each with its own "
             f"tokenizer (bits per byte compare across tokenizers).\n\n" + table(header, rows) + "\n"]
    task_rows = []
    for t in dict.fromkeys(t for s in names for t in (models[s].get("tasks") or {})):
        metrics = dict.fromkeys(m for s in names for m in ((models[s].get("tasks") or {}).get(t) or {})
                                .get("metrics", {}))
        for m in metrics:
            cells = []
            for s in names:
                v = (((models[s].get("tasks") or {}).get(t) or {}).get("metrics") or {}).get(m) or {}
                cells.append(None if v.get("value") is None else
                             f"{v['value']:.4f}" + (f" ± {v['stderr']:.4f}" if v.get("stderr") else ""))
            items = next(((models[s].get("tasks") or {}).get(t) or {}).get("items") for s in names
                         if t in (models[s].get("tasks") or {}))
            task_rows.append([f"{t} ({items} items): {m}", *cells])
    if task_rows:
        parts.append("### Task suite\n\nThe same items for every model (value ± standard error); per-item logs "
                     "in `evaluate/samples/<model>/`.\n\n" + table(["task: metric", *header[1:]], task_rows) + "\n")
    prompts = list(dict.fromkeys(a.get("prompt") for s in names for a in models[s].get("chat_answers") or []
                                 if isinstance(a, dict)))
    if prompts:
        answers = {s: {a.get("prompt"): a.get("answer", "") for a in models[s].get("chat_answers") or []
                       if isinstance(a, dict)} for s in names}
        blocks = [f"**{pr}**\n\n" + table(["model", "answer (greedy)"],
                                           [[MODEL_NAMES.get(s, s), clip(answers[s].get(pr, ""), 400)] for s in names])
                  for pr in prompts]
        parts.append("### Answers side by side\n\nThe same chat prompts, answered greedily by every model of the "
                     "run with its chat template.\n\n" + "\n\n".join(blocks) + "\n")
    canaries = canary_section(models)
    if canaries:
        parts.append(canaries)
    for s in names:
        section = samples_section({**models[s], "sampling": ev.get("sampling")},
                                  f"Samples: {MODEL_NAMES.get(s, s)}", rc.options)
        if section:
            parts.append(section)
    return "\n".join(parts)


def summary(manifest: dict[str, Any], run_dir: Any) -> list[str]:
    s = manifest.get("stats") or {}
    lines = []
    for stage, m in (s.get("models") or {}).items():
        tasks = ", ".join(f"{t} " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items() if v is not None)
                          for t, ms in (m.get("tasks") or {}).items())
        lines.append(f"  {MODEL_NAMES.get(stage, stage):<17} bits per byte {m['bits_per_byte']:.3f} on validation "
                     f"text ({m['tokens']:,} tokens)" + (f"; {tasks}" if tasks else ""))
    return lines


STAGE = Stage(
    name="evaluate",
    config=EvaluateConfig,
    needs=("prepare", "train", "base", "finetune"),
    reads=reads,
    run=run,
    help="every model of the run: held-out loss, perplexity, bits per byte, task suite, samples",
    external_inputs=external_inputs,
    report=report,
    summary=summary,
)
