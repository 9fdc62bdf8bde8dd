"""Canaries: unique secrets planted in the training data, and how exposed they are in the trained model.

A canary is a sentence ``the secret code of <name> is dddd-dddd-dddd`` with an invented name and random
digits (Carlini et al., "The Secret Sharer", 2019). ``count`` of them are planted ``repeats`` times each in
the pre-training tokens; as many more of the same format are made but never planted, as controls. After
training, each one's **exposure** is measured: its secret's log-likelihood after the prefix is ranked
against ``candidates`` random secrets of the same format,

    exposure = log2(candidates + 1) - log2(rank),  rank 1 = the true secret is the most likely,

so a secret the model has not seen scores about 1 bit on average and one it has memorised up to
log2(candidates + 1). ``extracted`` says whether greedy decoding from the prefix reproduces the secret
(every secret token is the most likely one). Controls show the level a model reaches without the secret.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

GROUPS = 3
"""Groups of four digits in a secret: 10^12 possible secrets, none likely by chance."""
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")


@dataclass(frozen=True)
class Canary:
    name: str
    """An invented name (three syllables), unique among a run's canaries."""
    secret: str
    """``dddd-dddd-dddd``."""
    planted: bool
    """Planted in the training data (False: a control, made the same way and never trained on)."""

    @property
    def prefix(self) -> str:
        return f"the secret code of {self.name} is"

    @property
    def text(self) -> str:
        """The sentence as planted."""
        return f"{self.prefix} {self.secret}."


def random_secret(rng: random.Random) -> str:
    return "-".join(f"{rng.randrange(10_000):04d}" for _ in range(GROUPS))


def make_canaries(count: int, seed: int) -> list[Canary]:
    """``count`` planted canaries and ``count`` controls, reproducible from ``seed``."""
    rng = random.Random(f"canaries:{seed}")
    names: set[str] = set()
    out = []
    while len(out) < 2 * count:
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(3)).capitalize()
        if name in names:
            continue
        names.add(name)
        out.append(Canary(name, random_secret(rng), planted=len(out) < count))
    return out


def plant(tokens: np.ndarray, planted: Sequence[list[int]], repeats: int, eot_id: int, seed: int) -> np.ndarray:
    """``tokens`` with each token sequence in ``planted`` inserted ``repeats`` times as documents of their
    own (after an ``<|endoftext|>``, followed by one), at document boundaries drawn from ``seed``. The
    result is a new in-memory array of the same dtype (the training tokens are copied once)."""
    rng = np.random.default_rng([seed, 7391])
    boundaries = np.flatnonzero(np.asarray(tokens) == eot_id) + 1  # a new document may start after each EOT
    if len(boundaries) == 0:
        boundaries = np.array([len(tokens)])
    inserts = [seq for seq in planted for _ in range(repeats)]
    where = np.sort(rng.choice(boundaries, size=len(inserts), replace=True))
    order = rng.permutation(len(inserts))  # canaries interleaved, not grouped by kind
    pieces, at = [], 0
    for pos, k in zip(where.tolist(), order.tolist(), strict=True):
        pieces.append(np.asarray(tokens[at:pos]))
        pieces.append(np.asarray(list(inserts[k]) + [eot_id], dtype=tokens.dtype))
        at = pos
    pieces.append(np.asarray(tokens[at:]))
    return np.concatenate(pieces).astype(tokens.dtype, copy=False)


def exposure(scorer: Any, canaries: Sequence[Canary], candidates: int, seed: int) -> list[dict[str, Any]]:
    """Each canary's exposure among ``candidates`` random secrets, and whether greedy decoding extracts it.

    ``scorer``: a :class:`gristmill.eval.harness.GPTScorer` (``loglikelihood([(context, continuation)])`` ->
    ``[(log p, greedy)]``)."""
    out = []
    for i, c in enumerate(canaries):
        rng = random.Random(f"candidates:{seed}:{i}")
        others: set[str] = set()
        while len(others) < candidates:
            s = random_secret(rng)
            if s != c.secret:
                others.add(s)
        requests = [(c.prefix, f" {c.secret}")] + [(c.prefix, f" {s}") for s in sorted(others)]
        scored = scorer.loglikelihood(requests)
        true_ll, greedy = scored[0]
        rank = 1 + sum(ll > true_ll for ll, _ in scored[1:])
        out.append({**asdict(c), "log_likelihood": round(true_ll, 4), "rank": rank, "candidates": candidates,
                    "exposure": round(math.log2(candidates + 1) - math.log2(rank), 4), "extracted": bool(greedy)})
    return out


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and max exposure and extractions, for planted canaries and for controls."""
    out: dict[str, Any] = {}
    for label, planted in (("planted", True), ("controls", False)):
        mine = [r for r in rows if r["planted"] == planted]
        if mine:
            out[label] = {"count": len(mine),
                          "exposure_mean": round(sum(r["exposure"] for r in mine) / len(mine), 3),
                          "exposure_max": max(r["exposure"] for r in mine),
                          "extracted": sum(r["extracted"] for r in mine)}
    if rows:
        out["max_exposure"] = round(math.log2(rows[0]["candidates"] + 1), 3)
    return out
