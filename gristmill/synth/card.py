"""The synth data card: what was generated and how, in one JSON document (``synth/data_card.json``).

The teacher's config (model, endpoint, sampling, judge) when one is set, and for each generator its whole
config as the recipe resolved it (so prompt templates appear whatever the generator), and per split the documents it saw, those it
could use, why it skipped the others, its drafts and how many were accepted. For each rejection reason:
the check and the config key behind it, the count per split and the first few rejected drafts. Then what
the optional checks looked at (drafts checked, seed tasks, held-out text indexed) and a few kept
conversations per task. Every text shown has its personal data masked, and settings named like secrets
(an API key) are replaced by ``***``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gristmill.curate.pii import mask_pii
from gristmill.synth.config import SynthConfig

CARD = "data_card.json"

CHECKS: dict[str, tuple[str, str | None]] = {
    "empty_answer": ("format", None),
    "bad_format": ("format", None),
    "prompt_too_short": ("length", "min_prompt_chars"),
    "prompt_too_long": ("length", "max_prompt_chars"),
    "answer_too_short": ("length", "min_answer_chars"),
    "answer_too_long": ("length", "max_answer_chars"),
    "answer_in_prompt": ("format", None),
    "pii": ("personal data", "pii_filter"),
    "refusal": ("refusal", "filters.refusal"),
    "truncated": ("truncation", "filters.truncation"),
    "ungrounded": ("groundedness", "filters.groundedness.min_share"),
    "duplicate_prompt": ("exact duplicates", None),
    "near_duplicate": ("near duplicates", "filters.near_duplicates.threshold"),
    "near_duplicate_seed": ("near duplicates", "filters.near_duplicates.seed_files"),
    "contaminated": ("decontamination", "filters.decontaminate"),
}
"""Rejection reason -> (the check that gives it, the config key that decides it). A reason from a check
not listed here is shown under its own name."""

_SECRET = re.compile(r"(api_?key|secret|password|passwd|^token$|auth)", re.IGNORECASE)


def _public(value: Any) -> Any:
    """A config dump with settings named like secrets hidden (an endpoint's API key must not reach a card
    that is shared)."""
    if isinstance(value, dict):
        # ``api_key_env`` names an environment variable, not a key: worth showing
        return {k: ("***" if _SECRET.search(k) and not k.endswith("_env") and v else _public(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def _shown(text: str, chars: int) -> str:
    text = mask_pii(text)
    return text[:chars] + ("…" if len(text) > chars else "")


def _example(record: Mapping[str, Any], chars: int) -> dict[str, Any]:
    messages = record.get("messages") or []
    turns = [m for m in messages if m.get("role") != "system"]
    prompt = "\n".join(m["content"] for m in turns if m.get("role") == "user")
    answer = "\n".join(m["content"] for m in turns if m.get("role") == "assistant")
    out: dict[str, Any] = {"task": record.get("task"), "source_ids": list(record.get("source_ids") or []),
                           "prompt": _shown(prompt, chars), "answer": _shown(answer, chars)}
    if len(turns) > 2:
        out["turns"] = len(turns)
    for key in ("split", "detail"):
        if record.get(key):
            out[key] = record[key]
    return out


def build_card(cfg: SynthConfig, stats: Mapping[str, Any], kept: Mapping[str, Sequence[Mapping[str, Any]]],
               rejected: Sequence[Mapping[str, Any]], filters: Mapping[str, Any], *, examples: int = 3,
               samples: int = 3, chars: int = 300) -> dict[str, Any]:
    """The card as a JSON-ready dict.

    ``stats``: the stage's per-split stats (with ``generators``); ``kept``: split -> the records written;
    ``rejected``: every rejected record, in order; ``filters``: :meth:`DraftFilter.summary`.
    """
    splits = [s for s in ("train", "val") if isinstance(stats.get(s), Mapping)]
    generated = {s: {k: stats[s].get(k, 0) for k in ("documents", "drafts", "examples", "rejected", "capped")}
                 for s in splits}
    generators = []
    for gen in cfg.generators:
        use = {s: (stats[s].get("generators") or {}).get(gen.type) for s in splits}
        generators.append({"type": gen.type, "config": _public(gen.model_dump(mode="json")),
                           "splits": {s: u for s, u in use.items() if u is not None}})
    removed: dict[str, dict[str, Any]] = {}
    for r in rejected:
        reason = str(r.get("reason"))
        entry = removed.get(reason)
        if entry is None:
            check, key = CHECKS.get(reason, (reason, None))
            entry = removed[reason] = {"reason": reason, "check": check, "key": key, "drafts": {}, "examples": []}
        split = str(r.get("split"))
        entry["drafts"][split] = entry["drafts"].get(split, 0) + 1
        if len(entry["examples"]) < examples:
            entry["examples"].append(_example(r, chars))
    order = sorted(removed.values(), key=lambda e: (-sum(e["drafts"].values()), e["reason"]))
    for e in order:
        e["total"] = sum(e["drafts"].values())
    shown: dict[str, list[dict[str, Any]]] = {}
    for r in kept.get("train", []):
        task_samples = shown.setdefault(str(r.get("task")), [])
        if len(task_samples) < samples:
            task_samples.append(_example(r, chars))
    limits = {k: getattr(cfg, k) for k in ("min_prompt_chars", "max_prompt_chars", "min_answer_chars",
                                           "max_answer_chars", "pii_filter")}
    # the settings every generator shares (a teacher model, privacy substitution), whatever is configured
    shared = {name: _public(value.model_dump(mode="json")) for name in ("teacher", "privacy")
              if (value := getattr(cfg, name, None)) is not None}
    return {
        "generated": generated,
        "system_prompt": cfg.system_prompt,
        **shared,
        "generators": generators,
        "filters": {
            "config": {**limits, **cfg.filters.model_dump(mode="json")},
            **dict(filters),
            "removed": order,
        },
        "samples": dict(sorted(shown.items())),
    }
