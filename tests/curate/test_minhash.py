"""MinHash near-duplicate removal on real paragraphs (Wikipedia, Shakespeare) with planted near duplicates."""

from __future__ import annotations

import copy
import random
from itertools import combinations

import numpy as np
import pytest
from pydantic import ValidationError

from gristmill.curate.dedup.lsh import (
    Buckets,
    MinHasher,
    _band_pairs,
    clusters,
    estimate_jaccard,
    has_shingles,
)
from gristmill.curate.dedup.minhash import MinHashDedup, MinHashStep, jaccard, word_ngrams
from gristmill.data.step import StepStats, counted
from gristmill.formats.document import Document, Provenance


def doc(text: str, i: int | str) -> Document:
    return Document(id=f"d{i}", text=text, source="test", provenance=Provenance(uri="test", reader="test"))


def edited(text: str, rng: random.Random, vocab: list[str], share: float) -> str:
    """``text`` with ``share`` of its words replaced, in one or two runs (a rewritten phrase or two)."""
    words = text.split()
    n_edit = max(1, round(len(words) * share))
    runs = rng.choice([1, 1, 2])
    for r in range(runs):
        length = n_edit // runs + (r < n_edit % runs)
        at = rng.randrange(0, len(words) - length)
        words[at : at + length] = rng.choices(vocab, k=length)
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(wiki_paragraphs: list[str], speeches: list[str]) -> tuple[list[Document], list[tuple[str, str]]]:
    """Distinct real paragraphs, and 300 edited copies of some of them placed somewhere after their
    original (half with 5-10% of the words edited, half with 1-5%: Jaccard from about 0.6 to 0.97);
    returns the documents in order and the planted (original id, copy id) pairs."""
    rng = random.Random(7)
    texts = wiki_paragraphs + speeches[:2000]
    docs = [doc(t, i) for i, t in enumerate(texts)]
    vocab = " ".join(speeches[2000:2500]).split()
    long_ones = [i for i, t in enumerate(wiki_paragraphs) if len(t.split()) >= 80]
    planted = []
    for n, i in enumerate(rng.sample(long_ones, 300)):
        share = rng.uniform(0.05, 0.10) if n % 2 else rng.uniform(0.01, 0.05)
        dup = doc(edited(texts[i], rng, vocab, share), f"copy{n}")
        docs.insert(rng.randrange(docs.index(next(d for d in docs if d.id == f"d{i}")) + 1, len(docs) + 1), dup)
        planted.append((f"d{i}", dup.id))
    return docs, planted


def dedup(docs: list[Document]) -> tuple[list[Document], list[Document], MinHashDedup, StepStats]:
    step = MinHashDedup()
    dropped: list[Document] = []
    stats = StepStats(name=step.name, quarantine=lambda d, _step, _reason: dropped.append(d))
    kept = list(counted(step, copy.deepcopy(docs), stats))
    assert stats.seen == len(docs) == stats.kept + sum(stats.dropped.values())
    return kept, dropped, step, stats


def test_planted_near_duplicates_are_found_and_nothing_dissimilar_is_merged(corpus) -> None:
    docs, planted = corpus
    text = {d.id: d.text for d in docs}
    sets = {i: word_ngrams(t) for i, t in text.items()}
    kept, dropped, step, stats = dedup(docs)
    assert set(stats.dropped) == {"near_duplicate"}
    cluster_of = {m: k for k, members in step.clusters().items() for m in members}
    similar = [(a, b) for a, b in planted if jaccard(sets[a], sets[b]) >= 0.8]
    caught = [(a, b) for a, b in similar if cluster_of.get(a, a) == cluster_of.get(b, b)]
    assert len(similar) >= 150 and len(caught) / len(similar) >= 0.95
    # Over every planted pair, the share caught is what LSH theory predicts: 1 - (1 - J^8)^14 per pair.
    p = np.array([1 - (1 - jaccard(sets[a], sets[b]) ** 8) ** 14 for a, b in planted])
    hits = sum(cluster_of.get(a, a) == cluster_of.get(b, b) for a, b in planted)
    assert abs(hits - p.sum()) <= 3 * np.sqrt((p * (1 - p)).sum())
    for kept_id, members in step.clusters().items():
        assert members[0] == kept_id
        for a, b in combinations(members, 2):
            assert jaccard(sets[a], sets[b]) >= 0.5, (a, b)
    # The first of each cluster by input order is kept; the others name it.
    order = {d.id: i for i, d in enumerate(docs)}
    for d in dropped:
        kept_id = d.meta["duplicate_of"]
        assert order[kept_id] < order[d.id] and d.id in step.clusters()[kept_id]
    assert [d.id for d in kept] == [d.id for d in docs if d.id not in {x.id for x in dropped}]


def test_output_is_deterministic(corpus) -> None:
    docs, _ = corpus
    first, second = dedup(docs[:1500]), dedup(docs[:1500])
    assert [d.id for d in first[0]] == [d.id for d in second[0]]
    assert [(d.id, d.meta) for d in first[1]] == [(d.id, d.meta) for d in second[1]]
    assert first[2].clusters() == second[2].clusters() and first[2].clusters()


def test_signatures_estimate_jaccard_and_do_not_depend_on_the_batch(corpus) -> None:
    docs, planted = corpus
    text = {d.id: d.text for d in docs}
    hasher = MinHasher()
    pairs = planted[:100]
    sigs = hasher.signatures([text[x] for pair in pairs for x in pair])
    errors = [abs(estimate_jaccard(sigs[2 * k], sigs[2 * k + 1]) - jaccard(word_ngrams(text[a]), word_ngrams(text[b])))
              for k, (a, b) in enumerate(pairs)]
    assert np.mean(errors) < 0.05 and max(errors) < 0.2  # one standard error is at most 0.047 at 112 hashes
    # The same text gets the same signature alone, in another batch, or from another hasher.
    alone = MinHasher(batch_chars=1).signatures([text[pairs[5][0]]])
    assert np.array_equal(alone[0], sigs[10]) and np.array_equal(MinHasher().signatures([text[pairs[5][0]]])[0], sigs[10])
    assert sigs.shape == (200, 112) and sigs.dtype == np.uint32
    assert not np.array_equal(MinHasher(seed=2).signatures([text[pairs[5][0]]])[0], sigs[10])


def test_shards_merged_by_phase_match_the_single_stream(corpus) -> None:
    docs, _ = corpus
    part = docs[:2400]
    hasher, buckets = MinHasher(), Buckets()
    for shard in (part[:700], part[700:1900], part[1900:]):  # each shard hashed on its own
        sigs = hasher.signatures([d.text for d in shard])
        buckets.add(hasher.band_keys(sigs), has_shingles(sigs))
    roots = clusters(buckets.pairs(), buckets.n_docs)
    kept, dropped, _, _ = dedup(part)
    assert [d.id for i, d in enumerate(part) if roots[i] == i] == [d.id for d in kept]
    assert {d.id: d.meta["duplicate_of"] for d in dropped} == {
        part[i].id: part[int(r)].id for i, r in enumerate(roots) if r != i}


def test_copies_differing_in_case_punctuation_and_spacing_are_duplicates(wiki_paragraphs: list[str]) -> None:
    text = wiki_paragraphs[3]
    variants = [text, text.upper(), text.replace(",", "").replace(".", " ."), "  ".join(text.split())]
    texts = [wiki_paragraphs[4], *variants, "", "!!!", "", "Too short."]
    kept, dropped, step, _ = dedup([doc(t, i) for i, t in enumerate(texts)])
    assert [d.id for d in dropped] == ["d2", "d3", "d4"]  # texts without words are never duplicates
    assert step.clusters() == {"d1": ["d1", "d2", "d3", "d4"]}
    assert has_shingles(MinHasher().signatures(["", "!!!", "one two"])).tolist() == [False, False, True]


def test_union_find_keeps_the_first_of_a_chain() -> None:
    pairs = np.array([[3, 7], [1, 3], [5, 6], [6, 8], [0, 0]], dtype=np.int64)
    assert clusters(pairs, 10).tolist() == [0, 1, 2, 1, 4, 5, 5, 1, 5, 9]


def test_config_bounds() -> None:
    assert (MinHashStep().bands, MinHashStep().rows, MinHashStep().ngram) == (14, 8, 5)
    with pytest.raises(ValidationError):
        MinHashStep(bands=0)
    with pytest.raises(ValidationError):
        MinHashStep(bands=256, rows=64)


def in_memory_reference(docs: list[Document]) -> tuple[list[str], dict[str, str], list[tuple[str, list[str]]]]:
    """What the step computed before it streamed: every document held, every band's keys sorted together
    in one array. Returns the kept ids, each dropped id's ``duplicate_of``, and the clusters in the
    order their first duplicate comes."""
    hasher = MinHasher()
    sigs = hasher.signatures([d.text for d in docs])
    present = has_shingles(sigs)
    keys = hasher.band_keys(sigs)[present]
    index = np.repeat(np.flatnonzero(present), keys.shape[1])
    pairs = _band_pairs(keys.reshape(-1), index)  # every band's keys at once, in memory
    roots = clusters(np.unique(pairs, axis=0), len(docs))
    found: dict[str, list[str]] = {}
    for i, r in enumerate(roots.tolist()):
        if r != i:
            found.setdefault(docs[r].id, [docs[r].id]).append(docs[i].id)
    return ([d.id for i, d in enumerate(docs) if roots[i] == i],
            {d.id: docs[int(roots[i])].id for i, d in enumerate(docs) if roots[i] != i}, list(found.items()))


@pytest.mark.parametrize("memory_chars", [0, None], ids=["on-disk", "in-memory"])
def test_the_streaming_step_gives_what_holding_every_document_gave(corpus, tmp_path, memory_chars) -> None:
    docs, _ = corpus
    part = copy.deepcopy(docs[:3000])
    for d in part[::7]:
        d.meta["quality"] = {"gopher_word_count": len(d.text.split()), "ratio": 0.125}  # meta survives the spool
    step = MinHashDedup(work_dir=tmp_path / "work", memory_chars=memory_chars)
    dropped: list[Document] = []
    stats = StepStats(name=step.name, quarantine=lambda d, _step, _reason: dropped.append(d))
    kept = list(counted(step, (copy.deepcopy(d) for d in part), stats))  # a generator: nothing held by the caller
    kept_ids, duplicate_of, found = in_memory_reference(part)
    assert [d.id for d in kept] == kept_ids and len(dropped) == len(part) - len(kept_ids) > 50
    assert {d.id: d.meta.pop("duplicate_of") for d in dropped} == duplicate_of
    by_id = {d.id: d for d in part}
    assert all(d.text == by_id[d.id].text and d.meta == by_id[d.id].meta for d in kept + dropped)
    assert [(r["kept"], r["members"]) for r in step.cluster_records()] == found
    assert not any((tmp_path / "work").iterdir())  # the band files and the spooled documents are gone


def test_the_spool_gives_back_what_it_was_given(corpus, tmp_path) -> None:
    from gristmill.curate.spool import DocumentSpool

    docs = copy.deepcopy(corpus[0][:200])
    docs[3].meta = {"quality": {"a": 0.1, "b": 3}, "split": "train", "tags": ["x", None]}
    docs[4].provenance.title, docs[4].provenance.license = "A title", "CC0"
    for memory_chars, spills in ((0, True), (sum(len(d.text) for d in docs[:50]), True), (None, False)):
        spool = DocumentSpool(tmp_path / "spool", memory_chars)
        for d in docs:
            spool.add(d)
        assert spool.spilled == spills
        assert list(spool) == docs  # dataclass equality: every field, meta and provenance included
        assert not any((tmp_path / "spool").iterdir())
