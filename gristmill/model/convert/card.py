"""The model card (``README.md`` beside the exported files), written from what the run recorded.

Every figure comes from a stage manifest (``runs/<name>/<stage>/manifest.json``: resolved config, stats,
versions) or from the export itself, so the card cannot drift from the run: the sources and their licences
(collect), what preparation kept and dropped (prepare), the chat data (synth), the tokenizer (tokenize),
training and fine-tuning (steps, tokens, what stopped them, the device), the held-out metrics (evaluate,
finetune) and how closely the exported files reproduce Gristmill's logits. What is unknown is said to be
unknown: a bare model directory has no lineage, and an imported model's lineage is its source's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.model.convert.exported import uncapped_note

if TYPE_CHECKING:
    from gristmill.model.convert.exported import ExportSource

Manifests = Mapping[str, Mapping[str, Any] | None]


def run_of(model_dir: Path) -> tuple[Path, str] | None:
    """(run folder, stage) when ``model_dir`` is a finished stage's ``model/`` inside a run, else None."""
    model_dir = Path(model_dir).resolve()
    stage_dir = model_dir.parent
    if model_dir.name == "model" and (stage_dir / "manifest.json").is_file():
        return stage_dir.parent, stage_dir.name
    return None


def read_manifests(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every finished stage's manifest in a run folder, by stage name."""
    from gristmill.core.workspace import load_manifest

    out = {}
    for d in sorted(p for p in Path(run_dir).iterdir() if p.is_dir()):
        m = load_manifest(d)
        if m is not None:
            out[d.name] = m
    return out


def model_card(source: ExportSource, *, manifests: Manifests | None = None, model_stage: str | None = None,
               run_name: str | None = None, export: Mapping[str, Any] | None = None, license: str | None = None,
               intended_use: str = "", limitations: str = "") -> str:
    """The card's Markdown.

    ``manifests`` are the run's (empty or None for a bare model directory); ``model_stage`` is the stage
    whose ``model/`` this is (``train``, ``finetune``, ``base``); ``export`` the export stage's figures:
    ``files`` ({relative path: bytes}) and, per format written, ``hf``/``gguf`` (``parity.compare``'s
    figures, plus ``dtype`` and ``tensor_types``).
    """
    m = {k: v for k, v in (manifests or {}).items() if v}
    export = export or {}
    ft = _stats(m, "finetune") if model_stage == "finetune" else {}
    from_base = model_stage == "base" or ft.get("start_from") == "base"
    chat = model_stage == "finetune" or (source.imported is not None and bool(source.imported.get("chat_template")))
    parts = [
        _front_matter(license, export),
        f"# {source.name}\n",
        _summary(source, m, model_stage, run_name, from_base),
        _model_section(source),
        _files_section(export),
        _data_section(source, m, model_stage, from_base),
        _training_section(m, model_stage, from_base),
        _evaluation_section(source, m, model_stage, export),
        "## Intended use\n\n" + (intended_use.strip() or "Not stated.") + "\n",
        _licence_section(source, m, license),
        _limitations_section(source, m, limitations),
        _usage_section(source, export, chat),
        _provenance_section(source, m, model_stage, run_name),
    ]
    return "\n".join(p for p in parts if p).rstrip() + "\n"


# --- sections ---------------------------------------------------------------------------------------


def _front_matter(license: str | None, export: Mapping[str, Any]) -> str:
    """The YAML header the Hugging Face Hub reads."""
    tags = ["gristmill", "llama", "text-generation"] + (["gguf"] if export.get("gguf") else [])
    lines = ["---"]
    if license:
        lines.append(f"license: {_yaml_str(license)}")
    lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    lines += [f"  - {t}" for t in tags]
    return "\n".join(lines + ["---", ""])


def _summary(source: ExportSource, m: Manifests, stage: str | None, run_name: str | None, from_base: bool) -> str:
    size = _size_label(source.model.num_params())
    imported = source.imported or _base_import(m)
    if stage is None and source.imported is None:
        how = "from a Gristmill model directory outside any run, so its data and training are not known here"
    elif stage == "base" or (stage is None and source.imported is not None):
        how = f"imported unchanged from {_import_label(imported)}"
    elif stage == "finetune" and from_base:
        how = f"fine-tuned by Gristmill on chat data from {_import_label(imported)}"
    elif stage == "finetune":
        how = "pre-trained from scratch and then fine-tuned on chat data by Gristmill"
    else:
        how = "pre-trained from scratch by Gristmill"
    where = f" in run `{run_name}`" if run_name else ""
    return (f"A {size}-parameter decoder-only language model of the Llama architecture, {how}{where}. "
            f"This card was generated from the run's records by `gristmill export`.\n")


def _model_section(source: ExportSource) -> str:
    c = source.config
    tok = source.tokenizer
    rows = [
        ["architecture", "`LlamaForCausalLM` (transformers), `llama` (llama.cpp)"],
        ["parameters", f"{source.model.num_params():,}"],
        ["layers x width", f"{c.n_layer} x {c.n_embd}"],
        ["attention heads (query / key-value)", f"{c.n_head} / {c.kv_heads} (head dim {c.head_dim})"],
        ["MLP", f"SwiGLU, hidden width {c.hidden}"],
        ["context length", f"{c.block_size:,} tokens"],
        ["positions", f"rotary, theta {c.rope_theta:g}"],
        ["normalisation", f"RMSNorm, eps {c.norm_eps:g}"],
        ["tied input/output embeddings", "yes" if c.tie_embeddings else "no"],
        ["tokenizer", f"byte-level BPE, {tok.get_vocab_size():,} tokens ({c.vocab_size:,} embedding rows)"],
        ["special tokens", f"bos `{source.token(source.bos_id)}` = {source.bos_id} ("
                           + ("prepended to prompts" if source.add_bos else "not prepended to prompts")
                           + f"), eos `{source.token(source.eos_id)}` = {source.eos_id}, "
                           f"pad `{source.token(source.pad_id)}` = {source.pad_id}"],
        ["generation stops at", ", ".join(f"`{source.token(i)}` = {i}" for i in source.stop_ids)],
    ]
    text = "## Model\n\n" + _table(["", ""], rows) + "\n"
    if source.dropped_softcap:
        text += "\n**Logits are not soft-capped in the exported files.** " + uncapped_note(source.dropped_softcap) + "\n"
    return text


def _files_section(export: Mapping[str, Any]) -> str:
    files = export.get("files") or {}
    if not files:
        return ""
    what = {"hf/model.safetensors": "weights (transformers)", "hf/config.json": "LlamaForCausalLM config",
            "hf/generation_config.json": "stop tokens for `generate`", "hf/tokenizer.json": "tokenizer",
            "hf/tokenizer_config.json": "chat template, special tokens",
            "hf/special_tokens_map.json": "special tokens (older transformers)",
            "model.gguf": f"llama.cpp weights and tokenizer ({(export.get('gguf') or {}).get('dtype', '')})",
            "README.md": "this card"}
    rows = [[f"`{name}`", _bytes(size), what.get(name, "")] for name, size in files.items()]
    return "## Files\n\n" + _table(["file", "size", "contents"], rows) + "\n"


def _data_section(source: ExportSource, m: Manifests, stage: str | None, from_base: bool) -> str:
    parts = ["## Data\n"]
    imported = source.imported or _base_import(m)
    if from_base or (stage is None and source.imported is not None):
        parts.append(f"The pre-trained weights come from {_import_label(imported)}; what that model was "
                     f"trained on is documented by its publisher, not by this run."
                     + (" Gristmill fine-tuned it on the chat data below." if stage == "finetune" else "") + "\n")
    elif stage is None:
        return "## Data\n\nNot known: the model was exported from a directory without run records.\n"

    collect = m.get("collect")
    if collect and stage != "base":
        cfg_sources = {s.get("name"): s for s in (collect.get("config") or {}).get("sources") or []}
        rows = []
        for name, s in ((collect.get("stats") or {}).get("sources") or {}).items():
            c = cfg_sources.get(name, {})
            rows.append([name, s.get("type", c.get("type")), _num(s.get("documents")), _num(s.get("characters")),
                         c.get("license") or "not stated", f"`{c.get('path', '')}`"])
        if rows:
            parts.append("Sources read by `collect`:\n\n" + _table(
                ["source", "type", "documents", "characters", "licence", "path"], rows) + "\n")
            licences = sorted({r[4] for r in rows})
            parts.append("Licences of the text this run trained on: " + "; ".join(licences) + ".\n")
    prep = _stats(m, "prepare")
    if prep and stage != "base":
        splits = prep.get("splits") or {}
        dropped: dict[str, int] = {}
        for step, s in (prep.get("steps") or {}).items():
            for reason, n in (s.get("dropped") or {}).items():
                dropped[f"{step}: {reason}"] = dropped.get(f"{step}: {reason}", 0) + n
        kept = ", ".join(f"{k} {_num(v.get('documents'))} documents ({_num(v.get('characters'))} characters)"
                         for k, v in splits.items())
        why = "; ".join(f"{r} {n}" for r, n in sorted(dropped.items())) or "none"
        parts.append(f"`prepare` took {_num(prep.get('documents_in'))} documents and kept {kept}; dropped "
                     f"{_num(prep.get('dropped', 0))} ({why}).\n")
    tok = _stats(m, "tokenize")
    if tok and not from_base and stage != "base":
        parts.append(f"`tokenize` trained the {_num(tok.get('vocab_size'))}-token byte-level BPE on the training "
                     f"split: {_num(tok.get('train_tokens'))} training and {_num(tok.get('val_tokens'))} "
                     f"validation tokens.\n")
    synth = _stats(m, "synth")
    if synth and stage == "finetune":
        tr, va = synth.get("train") or {}, synth.get("val") or {}
        tasks = ", ".join(f"{k} {v}" for k, v in (tr.get("accepted_by_task") or {}).items())
        parts.append(f"Chat data for fine-tuning, generated by `synth` from the prepared documents: "
                     f"{_num(tr.get('examples'))} training and {_num(va.get('examples'))} validation "
                     f"conversations" + (f" (by task: {tasks})" if tasks else "") + ".\n")
    if len(parts) == 1:
        parts.append("The run holds no records of the data.\n")
    return "\n".join(parts)


def _training_section(m: Manifests, stage: str | None, from_base: bool) -> str:
    rows = []
    if stage in ("train", "finetune") and not from_base and m.get("train"):
        rows.append(_training_row("pre-training", m["train"]))
    if stage == "finetune" and m.get("finetune"):
        rows.append(_training_row("fine-tuning", m["finetune"]))
    if not rows:
        return ""
    return ("## Training\n\n" + _table(["phase", "steps", "stopped by", "tokens / examples", "optimizer",
                                         "time", "hardware"], rows) + "\n")


def _training_row(phase: str, manifest: Mapping[str, Any]) -> list[Any]:
    s, c = manifest.get("stats") or {}, manifest.get("config") or {}
    steps = f"{_num(s.get('steps'))} of {_num(s.get('max_steps'))}" if s.get("max_steps") else _num(s.get("steps"))
    if "tokens_seen" in s:
        amount = f"{_num(s['tokens_seen'])} tokens"
    else:
        amount = f"{_num(s.get('train_examples'))} conversations"
    opt = c.get("optimizer", "")
    lr = c.get("matrix_lr") if opt == "muon" else c.get("lr")
    opt = f"{opt}, lr {lr:g}, batch {c.get('batch_size')}" if isinstance(lr, int | float) else opt
    procs = s.get("processes")
    hardware = f"{s.get('device', '?')}" + (f" x {procs}" if isinstance(procs, int) and procs > 1 else "")
    secs = s.get("train_seconds")
    return [phase, steps, s.get("stopped_by", ""), amount, opt,
            f"{secs:,.0f} s" if isinstance(secs, int | float) else "", hardware]


def _evaluation_section(source: ExportSource, m: Manifests, stage: str | None, export: Mapping[str, Any]) -> str:
    parts = ["## Evaluation\n"]
    tr, ft = _stats(m, "train"), _stats(m, "finetune")
    ev = (_stats(m, "evaluate").get("models") or {}).get("train") or {}  # the pre-trained model's scores
    if stage in ("train", "finetune") and (ev.get("bits_per_byte") or tr.get("val_bits_per_byte")):
        src = ev if ev.get("bits_per_byte") else {"bits_per_byte": tr.get("val_bits_per_byte"),
                                                    "loss": tr.get("val_loss"), "perplexity": tr.get("val_perplexity"),
                                                    "tokens": tr.get("val_tokens")}
        if ft.get("start_from", "train") == "train":
            parts.append(f"Pre-trained model on the held-out validation text ({_num(src.get('tokens'))} tokens): "
                         f"{_f(src.get('bits_per_byte'))} bits per byte, loss {_f(src.get('loss'))} nats per "
                         f"token, perplexity {_f(src.get('perplexity'), 2)}.\n")
    if stage == "finetune" and ft:
        rows = []
        if "chat_val_loss_after" in ft:
            rows.append(["chat loss on held-out conversations (nats per assistant token)",
                         _f(ft.get("chat_val_loss_before")), _f(ft.get("chat_val_loss_after"))])
        if "lm_val_bpb_after" in ft:
            rows.append([f"validation text, bits per byte ({_num(ft.get('lm_val_tokens'))} tokens)",
                         _f(ft.get("lm_val_bpb_before")), _f(ft.get("lm_val_bpb_after"))])
        if rows:
            parts.append("Before and after fine-tuning:\n\n" + _table(["metric", "before", "after"], rows) + "\n")
    mine = (_stats(m, "evaluate").get("models") or {}).get(stage or "") or {}
    if mine.get("tasks"):
        rows = [[f"{t}: {k}", _f(v)] for t, ms in mine["tasks"].items() for k, v in ms.items()]
        parts.append(f"Task suite (the evaluate stage; built-in tasks are made from the run's held-out documents; "
                     f"bits per byte on the validation text {_f(mine.get('bits_per_byte'))}):\n\n"
                     + _table(["task: metric", "score"], rows) + "\n")
    checks = [(label, export.get(key)) for key, label in (("hf", "transformers folder"), ("gguf", "GGUF file"))]
    rows = [[label, c.get("checked_with", ""), c.get("tokens"), f"{c['max_abs_logit_diff']:.2e}",
             f"{c.get('argmax_agreement', 0):.0%}"]
            for label, c in checks if isinstance(c, Mapping) and "max_abs_logit_diff" in c]
    if rows:
        note = (" after applying the soft-cap to the exported logits" if source.dropped_softcap else "")
        parts.append(f"Export check: Gristmill's logits against the exported files' on the same tokens{note} "
                     f"(largest absolute difference; share of positions with the same most likely next "
                     f"token):\n\n" + _table(["export", "read by", "tokens", "max logit diff", "same argmax"],
                                             rows) + "\n")
        uncapped = [c for _, c in checks if isinstance(c, Mapping) and "uncapped_mean_kl" in c]
        if uncapped:
            c = uncapped[0]
            parts.append(f"Without the soft-cap, logits differ from Gristmill's by up to "
                         f"{c['uncapped_max_abs_logit_diff']:.3g} on these tokens; the next-token distributions "
                         f"differ by a mean KL divergence of {c['uncapped_mean_kl']:.2e} nats.\n")
    if len(parts) == 1:
        parts.append("No evaluation is recorded for this model.\n")
    return "\n".join(parts)


def _licence_section(source: ExportSource, m: Manifests, license: str | None) -> str:
    text = f"The weights are released under {license}." if license else \
        "No licence was set for the weights (`export.license`)."
    if source.imported is not None or _base_import(m):
        text += " The imported model's own licence applies to what came from it; see its publisher's card."
    sources = ((m.get("collect") or {}).get("config") or {}).get("sources") or []
    if sources and source.imported is None:
        text += " The licences of the text it was trained on are listed under Data."
    return "## Licence\n\n" + text + "\n"


def _limitations_section(source: ExportSource, m: Manifests, limitations: str) -> str:
    c = source.config
    extra = [f"It sees at most {c.block_size:,} tokens of context (prompt and reply together)."]
    if source.dropped_softcap:
        extra.append("Sampled text differs slightly from Gristmill's own sampling at the same temperature "
                     "(uncapped logits, see Model); greedy decoding is the same.")
    if m.get("collect") and source.imported is None:
        names = ", ".join(f"`{n}`" for n in ((m["collect"].get("stats") or {}).get("sources") or {}))
        extra.append(f"It knows only what its sources ({names}) contain, in their language and style.")
    return "## Limitations\n\n" + (limitations.strip() + " " if limitations.strip() else "") + " ".join(extra) + "\n"


def _usage_section(source: ExportSource, export: Mapping[str, Any], chat: bool) -> str:
    files = export.get("files") or {}
    parts = ["## How to use\n"]
    n_ctx = source.config.block_size
    if export.get("hf") or any(k.startswith("hf/") for k in files):
        if chat:
            prompt = ('messages = [{"role": "user", "content": "Who was Hamlet?"}]\n'
                      'text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)\n')
        else:
            prompt = 'text = "Once upon a time"\n'
        parts.append(
            "With transformers (no remote code):\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'tok = AutoTokenizer.from_pretrained("hf")\n'
            'model = AutoModelForCausalLM.from_pretrained("hf")\n'
            + prompt +
            'ids = tok(text, return_tensors="pt").input_ids\n'
            "out = model.generate(ids, max_new_tokens=32, do_sample=False)\n"
            "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))\n```\n")
    if export.get("gguf") or "model.gguf" in files:
        if chat:
            call = ('out = llm.create_chat_completion(messages=[{"role": "user", "content": "Who was Hamlet?"}],\n'
                    '                                 max_tokens=32, temperature=0)\n'
                    'print(out["choices"][0]["message"]["content"])\n')
        else:
            call = ('out = llm.create_completion("Once upon a time", max_tokens=32, temperature=0)\n'
                    'print(out["choices"][0]["text"])\n')
        parts.append(
            f"With llama.cpp: `llama-cli -m model.gguf -c {n_ctx}` (the chat template is in the file), or "
            f"`llama-server -m model.gguf -c {n_ctx}` for an OpenAI-compatible server. With llama-cpp-python:\n\n"
            "```python\nfrom llama_cpp import Llama\n\n"
            f'llm = Llama(model_path="model.gguf", n_ctx={n_ctx}, verbose=False)\n' + call + "```\n")
    if len(parts) == 1:
        return ""
    parts.append(f"Keep prompt and reply within {n_ctx:,} tokens: the model was not trained on longer contexts.\n")
    return "\n".join(parts)


def _provenance_section(source: ExportSource, m: Manifests, stage: str | None, run_name: str | None) -> str:
    rows = []
    if run_name:
        rows.append(["run", f"`{run_name}`"])
    mm = m.get(stage or "") or {}
    if mm:
        about = [f"fingerprint `{str(mm['fingerprint'])[:12]}`" if mm.get("fingerprint") else "",
                 f"started {mm['started_at']}" if mm.get("started_at") else ""]
        about = [a for a in about if a]
        rows.append(["model stage", f"`{stage}`" + (f" ({', '.join(about)})" if about else "")])
        if mm.get("recipe"):
            rows.append(["recipe", f"`{mm['recipe']}`"])
        versions = mm.get("versions") or {}
        if versions:
            rows.append(["versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))])
    imported = source.imported or _base_import(m)
    if imported:
        rows.append(["imported from", _import_label(imported)])
        for file, digest in (imported.get("sha256") or {}).items():
            rows.append([f"sha256 of `{file}`", f"`{digest}`"])
    if not rows:
        rows.append(["model directory", f"`{source.model_dir.name}` (no run records)"])
    return "## Provenance\n\n" + _table(["", ""], rows) + "\n"


# --- helpers ----------------------------------------------------------------------------------------


def _stats(m: Manifests, stage: str) -> dict[str, Any]:
    return dict((m.get(stage) or {}).get("stats") or {})


def _base_import(m: Manifests) -> dict[str, Any] | None:
    """What the ``base`` stage recorded about the model it imported (source, format, name, sha256)."""
    s = _stats(m, "base")
    return s or None


def _import_label(info: Mapping[str, Any] | None) -> str:
    if not info:
        return "an imported model"
    name, src, fmt = info.get("name"), info.get("source"), info.get("format")
    label = f"**{name}**" if name else "a model"
    if src:
        label += f" (`{src}`" + (f", {'GGUF' if fmt == 'gguf' else 'Hugging Face folder'}" if fmt else "") + ")"
    return label


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else ("?" if v is None else str(v))


def _f(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) and not isinstance(v, bool) else "?"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _size_label(n: int) -> str:
    """135M, 0.17M, 1.2B: how model sizes are usually named."""
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    return f"{n / 1e6:.0f}M" if n >= 1e7 else f"{n / 1e6:.2g}M"


def _yaml_str(s: str) -> str:
    """A YAML scalar that stays a string whatever it holds (licence names have colons, hashes ...)."""
    import json

    return json.dumps(s, ensure_ascii=False)
