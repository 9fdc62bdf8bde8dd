"""tokenize: train a byte-level BPE tokenizer on the prepared text and write flat token files.

Reads prepare's ``train`` and ``val`` documents (and, with ``paraphrases``, synth's paraphrased train
documents, appended to the train tokens) and writes ``tokenizer.json``, ``train.bin``, ``val.bin`` and
``meta.json`` (format in docs/contracts.md).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext, write_json
from gristmill.errors import ConfigError, InputError
from gristmill.formats.document import count_documents, document_files, read_documents
from gristmill.tokenizer.config import TokenizeConfig

PARAPHRASES_SPLIT = "paraphrases"
"""synth's ``paraphrases.jsonl``, read as a split of the synth stage's folder."""


def reads(cfg: TokenizeConfig) -> tuple[str, ...]:
    return ("prepare", "synth") if cfg.paraphrases else ("prepare",)


def check_config(cfg: TokenizeConfig, recipe: Any) -> None:
    """``paraphrases`` needs synth to make them."""
    if not cfg.paraphrases:
        return
    synth = getattr(recipe, "synth", None)
    if synth is None or not any(g.type == "paraphrase" for g in synth.generators):
        raise ConfigError("tokenize.paraphrases: true needs a `paraphrase` generator in synth.generators (with a "
                          "synth.teacher) to write them; add one or set tokenize.paraphrases: false")


def _texts(src: tuple[Path, str], max_bytes: int | None = None) -> Iterator[str]:
    seen = 0
    for doc in read_documents(*src):
        if max_bytes is not None and seen >= max_bytes:
            return
        seen += len(doc.text.encode("utf-8"))
        yield doc.text


def run(ctx: StageContext, cfg: TokenizeConfig) -> dict[str, Any]:
    """Train the tokenizer on prepare's train split and write ``{train,val}.bin`` and ``meta.json``."""
    from gristmill.formats.vocab import EOT_ID
    from gristmill.tokenizer.bpe import (
        TOKENIZER_FILE,
        save_tokenizer,
        token_dtype,
        train_tokenizer,
        write_token_file,
    )

    src = ctx.input_dir("prepare")
    paths = {split: (src, split) for split in ("train", "val")}
    for split in paths:
        document_files(src, split)  # an InputError naming the stage to re-run if a split is missing
    if next(_texts(paths["train"]), None) is None:
        raise InputError(
            f"{src / 'train'} has no documents: check the prepare filters and the collect sources"
        )

    t0 = time.time()
    tok = train_tokenizer(_texts(paths["train"], cfg.train_bytes), cfg.vocab_size, cfg.min_frequency)
    train_s = time.time() - t0
    vocab = tok.get_vocab_size()
    save_tokenizer(tok, ctx.out_dir / TOKENIZER_FILE)
    ctx.log(f"[tokenize] trained a {vocab}-token BPE in {train_s:.1f}s")

    dtype = token_dtype(vocab)
    splits = {}
    t1 = time.time()
    paraphrased = 0
    for split, p in paths.items():
        texts: Iterator[str] = _texts(p)
        if split == "train" and cfg.paraphrases:
            paraphrased = count_documents(ctx.input_dir("synth"), PARAPHRASES_SPLIT)
            texts = itertools.chain(texts, _texts((ctx.input_dir("synth"), PARAPHRASES_SPLIT)))
        splits[split] = write_token_file(tok, texts, ctx.out_dir / f"{split}.bin", dtype, cfg.batch_size)
        ctx.log(
            f"[tokenize] {split}: {splits[split]['documents']} documents -> {splits[split]['tokens']} tokens"
            + (f" ({paraphrased} of them synth's paraphrases)" if split == "train" and cfg.paraphrases else "")
        )
    encode_s = time.time() - t1
    write_json(
        ctx.out_dir / "meta.json",
        {"dtype": dtype.name, "vocab_size": vocab, "eot_id": EOT_ID, "splits": splits},
    )

    return {
        "vocab_size": vocab,
        "dtype": dtype.name,
        **{f"{s}_tokens": c["tokens"] for s, c in splits.items()},
        **{f"{s}_documents": c["documents"] for s, c in splits.items()},
        **{
            f"{s}_bytes_per_token": round(c["bytes"] / c["tokens"], 4) if c["tokens"] else None
            for s, c in splits.items()
        },
        **({"paraphrase_documents": paraphrased} if cfg.paraphrases else {}),
        "train_tokenizer_s": round(train_s, 3),
        "encode_s": round(encode_s, 3),
    }


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import fmt, read_json_or_none, table

    meta = read_json_or_none(rc.stage_dir("tokenize") / "meta.json")
    if not isinstance(meta, dict):
        return ""
    rows = []
    for split, s in (meta.get("splits") or {}).items():
        tokens, n_bytes = s.get("tokens"), s.get("bytes")
        bpt = n_bytes / tokens if tokens and n_bytes is not None else None
        rows.append([split, s.get("documents"), tokens, n_bytes, bpt])
    return (f"## Tokenizer\n\nByte-level BPE, vocabulary {fmt(meta.get('vocab_size'))} tokens "
            f"(token files as `{meta.get('dtype')}`, `<|endoftext|>` = {meta.get('eot_id')} after each document)."
            "\n\n" + table(["split", "documents", "tokens", "bytes", "bytes per token"], rows) + "\n")


STAGE = Stage(
    name="tokenize",
    config=TokenizeConfig,
    needs=("prepare", "synth"),
    conditional=("synth",),
    reads=reads,
    check=check_config,
    run=run,
    help="train a byte-level BPE tokenizer and write token files",
    report=report,
)
