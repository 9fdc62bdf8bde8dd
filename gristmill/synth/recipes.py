"""Generation recipes that ask a teacher model: grounded question/answer and instruction pairs, self-instruct,
evolving instructions, paraphrases and multi-turn conversations, and the teacher as judge.

Rule-based generators (:mod:`gristmill.synth.extractive`) work one document at a time. A teacher is fast only
when it gets many prompts at once, so a recipe here works on a whole split: it picks its passages, then runs
each step (ask a question, answer it, rewrite it ...) as one batch of prompts through a
:class:`~gristmill.synth.cache.TeacherSession`, which caches every output and keeps the budget. A reply
missing because the budget ran out ends that item quietly; the counts say how many.

Every prompt is a template from the generator's config (``ask_template``, ``answer_template`` ...), filled
with ``str.format``: a recipe replaces them by setting those keys. Torch-free: the session is handed in.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gristmill.formats.document import Document
from gristmill.synth.base import Draft
from gristmill.synth.cache import Output, TeacherSession
from gristmill.synth.config import TEACHER_GENERATORS

_LABEL = re.compile(r"^\s*(?:\d+[.)]\s*|[-*•]\s*|(?:new\s+)?(?:question|instruction|task|q|answer|a|rewritten "
                    r"instruction)\s*[:.-]\s*)+", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s)|\n")
_SCORE = re.compile(r"(?<!\d)([1-5])(?!\d)")


@dataclass
class Passage:
    """A stretch of a document shown to the teacher."""

    doc: Document
    text: str
    title: str
    """How prompts name the document: its title in quotes, or "a document"."""

    def fields(self, **more: str) -> dict[str, str]:
        return {"passage": self.text, "title": self.title, **more}


@dataclass
class Made:
    """What a recipe made from one split."""

    drafts: list[tuple[Draft, str | None]] = field(default_factory=list)
    """Conversations, each with the text of the document it is grounded in (None if none)."""
    documents: list[Document] = field(default_factory=list)
    """Documents (paraphrases) for pre-training."""
    dropped: Counter = field(default_factory=Counter)
    """Items given up, by reason (``budget``: the teacher's budget ran out)."""
    planned: int = 0
    rewrites: Counter = field(default_factory=Counter)
    """Evolving instructions: rewrites kept, by operation."""


def clean_line(text: str) -> str:
    """The first non-blank line of a reply that is not a lead-in ending in ":", without a list number or a
    label such as ``Question:``, quotes stripped: what small models wrap a one-line answer in."""
    for line in text.splitlines():
        line = _LABEL.sub("", line).strip().strip('"“”').strip()
        if line and not line.endswith(":"):  # "Here is a question:" leads in to the line after it
            return line
    return ""


def clean_reply(text: str) -> str:
    return re.sub(r"^\s*answer\s*:\s*", "", text, flags=re.IGNORECASE).strip()


def rouge_l(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F1 of two word sequences (longest common subsequence), as self-instruct filters new tasks."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


_GENERIC = frozenset("passage question answer text this that what which about from with does mean means "
                     "would could should there their they them have been".split())


def _shares_word(line: str, passage: str) -> bool:
    """Whether ``line`` uses a word of four or more letters from ``passage`` besides words every question
    about a passage uses."""
    words = {w for w in re.findall(r"[a-z]{4,}", line.lower())} - _GENERIC
    return bool(words & set(re.findall(r"[a-z]{4,}", passage.lower())))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def quotas(weights: Sequence[float], total: int) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders get the leftovers; ties to the first)."""
    if not weights:
        return []
    s = sum(weights)
    exact = [total * w / s for w in weights]
    out = [int(e) for e in exact]
    for i in sorted(range(len(weights)), key=lambda i: (out[i] - exact[i], i))[: total - sum(out)]:
        out[i] += 1
    return out


def pick_passages(docs: Sequence[Document], n: int, gen: Any, rng: random.Random,
                  title: Callable[[Document], str | None]) -> list[Passage]:
    """``n`` distinct passages from random documents, each starting at a line or sentence start and cut back
    to a sentence or line end within ``gen.max_passage_chars`` (at least ``gen.min_passage_chars``)."""
    usable = [d for d in docs if len(d.text.strip()) >= gen.min_passage_chars]
    out: list[Passage] = []
    seen: set[str] = set()
    for _ in range(n * 4):  # a few tries per passage: short or repeated ones are drawn again
        if len(out) == n or not usable:
            break
        doc = usable[rng.randrange(len(usable))]
        text = doc.text
        start = rng.randrange(max(1, len(text) - gen.min_passage_chars + 1))
        if start:
            m = _SENTENCE_END.search(text, start)  # begin after the next sentence or line end
            start = m.end() if m and m.end() < len(text) else 0
        window = text[start:start + gen.max_passage_chars + 1]
        if len(window) > gen.max_passage_chars:
            ends = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() <= gen.max_passage_chars]
            window = window[: ends[-1]] if ends else window[: gen.max_passage_chars]
        passage = window.strip()
        if len(passage) < gen.min_passage_chars or passage in seen:
            continue
        seen.add(passage)
        t = title(doc)
        out.append(Passage(doc, passage, f'"{t}"' if t else "a document"))
    return out


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _ask(session: TeacherSession, prompts: list[str], purpose: str, line: bool = False) -> list[Output | None]:
    """One reply per single-turn prompt; ``line``: only its first line is used (a shorter token limit)."""
    if not prompts:
        return []
    return (session.lines if line else session.chat)([_user(p) for p in prompts], purpose)


def _planned(gen: Any, n: int, docs: Sequence[Document], rng: random.Random,
             title: Callable[[Document], str | None]) -> tuple[Made, list[Passage]]:
    """A generator's record of ``n`` planned drafts and the passages picked for them (those the documents
    could not give counted as ``no_passage``)."""
    made = Made(planned=n)
    passages = pick_passages(docs, n, gen, rng, title)
    made.dropped["no_passage"] += n - len(passages)
    return made, passages


def grounded_pairs(gen: Any, n: int, docs: Sequence[Document], rng: random.Random, session: TeacherSession,
                   title: Callable[[Document], str | None]) -> Made:
    """``teacher_qa`` / ``teacher_instruct``: the teacher asks about a passage, then answers from it."""
    made, passages = _planned(gen, n, docs, rng, title)
    listed = getattr(gen, "instructions", None)
    if listed:
        items = [(p, rng.choice(listed)) for p in passages]
    else:
        asks = _ask(session, [gen.ask_template.format(**p.fields()) for p in passages], f"{gen.type}:ask", line=True)
        items = _keep_lines(passages, asks, made, question=gen.type == "teacher_qa")
    _answer(gen, items, session, made)
    return made


def _keep_lines(passages: list[Passage], replies: list[Output | None], made: Made,
                question: bool = False) -> list[tuple[Passage, str]]:
    """(passage, first line of its reply) for the replies that gave one (``question``: one with a "?")."""
    items = []
    for p, r in zip(passages, replies, strict=True):
        line = clean_line(r.text) if r is not None else ""
        if r is None:
            made.dropped["budget"] += 1
        elif not line:
            made.dropped["empty_reply"] += 1
        elif question and "?" not in line:
            made.dropped["not_a_question"] += 1
        elif question and not _shares_word(line, p.text):
            made.dropped["question_not_about_passage"] += 1  # "What is the question in this passage?"
        else:
            items.append((p, line))
    return items


def _answer(gen: Any, items: list[tuple[Passage, str]], session: TeacherSession, made: Made) -> None:
    """Answer each (passage, question) from the passage; the kept conversation shows ``user_template``."""
    prompts = [gen.answer_template.format(**p.fields(question=q, instruction=q)) for p, q in items]
    for (p, q), r in zip(items, _ask(session, prompts, f"{gen.type}:answer"), strict=True):
        if r is None:
            made.dropped["budget"] += 1
            continue
        user = gen.user_template.format(**p.fields(question=q, instruction=q))
        draft = Draft(gen.type, [{"role": "user", "content": user},
                                 {"role": "assistant", "content": clean_reply(r.text)}],
                      [p.doc.id], finish_reason=r.finish, grounded=True)
        made.drafts.append((draft, p.doc.text))


def self_instruct(gen: Any, n: int, docs: Sequence[Document], rng: random.Random, session: TeacherSession,
                  title: Callable[[Document], str | None]) -> Made:
    """Self-instruct: rounds of new tasks from pool examples, kept when unlike every task in the pool."""
    made = Made(planned=n)
    pool = list(gen.seeds)
    pool_words = [_words(t) for t in pool]
    new: list[str] = []
    for _ in range(gen.max_rounds):
        need = n - len(new)
        if need <= 0 or session.exhausted:
            break
        prompts = []
        for _ in range(need):
            shown = rng.sample(pool, min(gen.examples_in_prompt, len(pool)))
            prompts.append(gen.task_template.format(examples="\n".join(f"{i}. {t}" for i, t in enumerate(shown, 1))))
        for r in _ask(session, prompts, "self_instruct:task", line=True):
            task = clean_line(r.text) if r is not None else ""
            if r is None:
                made.dropped["budget"] += 1
            elif len(task) < 10:
                made.dropped["empty_reply"] += 1
            elif max(rouge_l(_words(task), w) for w in pool_words) > gen.max_similarity:
                made.dropped["too_similar"] += 1
            else:
                pool.append(task)
                pool_words.append(_words(task))
                new.append(task)
    made.dropped["rounds_ran_out"] += max(0, n - len(new) - made.dropped["budget"])
    replies = _ask(session, [gen.answer_template.format(instruction=t) for t in new], "self_instruct:answer")
    for task, r in zip(new, replies, strict=True):
        if r is None:
            made.dropped["budget"] += 1
            continue
        made.drafts.append((Draft(gen.type, [{"role": "user", "content": task},
                                             {"role": "assistant", "content": clean_reply(r.text)}], [],
                                  finish_reason=r.finish), None))
    return made


def evol_instruct(gen: Any, n: int, docs: Sequence[Document], rng: random.Random, session: TeacherSession,
                  title: Callable[[Document], str | None]) -> Made:
    """Evolving instructions: an instruction about a passage, deepened or widened ``rounds`` times, answered."""
    made, passages = _planned(gen, n, docs, rng, title)
    items = _keep_lines(passages, _ask(session, [gen.ask_template.format(**p.fields()) for p in passages],
                                       "evol_instruct:ask", line=True), made)
    evolved: Counter = Counter()
    for _ in range(gen.rounds):
        ops = [rng.choice(gen.operations) for _ in items]
        prompts = [getattr(gen, f"{op}_template").format(**p.fields(instruction=q))
                   for (p, q), op in zip(items, ops, strict=True)]
        replies = _ask(session, prompts, "evol_instruct:rewrite", line=True)
        nxt = []
        for (p, q), op, r in zip(items, ops, replies, strict=True):
            line = clean_line(r.text) if r is not None else ""
            if r is None:
                made.dropped["budget"] += 1
            elif not line or line == q:
                made.dropped["rewrite_failed"] += 1  # WizardLM drops an evolution that did not change
            else:
                evolved[op] += 1
                nxt.append((p, line))
        items = nxt
    made.rewrites = evolved
    _answer(gen, items, session, made)
    return made


def paraphrase(gen: Any, n: int, docs: Sequence[Document], rng: random.Random, session: TeacherSession,
               title: Callable[[Document], str | None]) -> Made:
    """Paraphrases of passages as new documents (``meta.paraphrase_of`` names the source)."""
    made, passages = _planned(gen, n, docs, rng, title)
    replies = _ask(session, [gen.template.format(**p.fields()) for p in passages], "paraphrase")
    for p, r in zip(passages, replies, strict=True):
        if r is None:
            made.dropped["budget"] += 1
            continue
        text = clean_reply(r.text)
        ratio = len(text) / len(p.text)
        if not text:
            made.dropped["empty_reply"] += 1
        elif not gen.min_length_ratio <= ratio <= gen.max_length_ratio:
            made.dropped["length_ratio"] += 1
        elif r.finish == "length":
            made.dropped["truncated"] += 1
        else:
            digest = hashlib.sha256(text.encode()).hexdigest()[:12]
            made.documents.append(replace(p.doc, id=f"{p.doc.id}-para-{digest}", text=text, meta={
                "paraphrase_of": p.doc.id, "passage_chars": len(p.text)}))
    return made


def multi_turn(gen: Any, n: int, docs: Sequence[Document], rng: random.Random, session: TeacherSession,
               title: Callable[[Document], str | None]) -> Made:
    """Conversations of ``turns`` questions and answers about a passage; the teacher answers inside the
    conversation itself, so later answers see the earlier turns."""
    made, passages = _planned(gen, n, docs, rng, title)
    items = _keep_lines(passages, _ask(session, [gen.ask_template.format(**p.fields()) for p in passages],
                                       "multi_turn:ask", line=True), made)
    # per item: what the teacher sees (first turn with answer_template) and what is kept (user_template)
    seen = [_user(gen.answer_template.format(**p.fields(question=q))) for p, q in items]
    kept = [_user(gen.user_template.format(**p.fields(question=q))) for p, q in items]
    finish: list[str | None] = [None] * len(items)
    alive = list(range(len(items)))
    for turn in range(gen.turns):
        if turn:
            convo = ["\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in kept[i]) for i in alive]
            prompts = [gen.followup_template.format(**items[i][0].fields(conversation=c))
                       for i, c in zip(alive, convo, strict=True)]
            nxt = []
            for i, r in zip(alive, _ask(session, prompts, "multi_turn:followup", line=True), strict=True):
                q = clean_line(r.text) if r is not None else ""
                if q:
                    seen[i] = seen[i] + _user(q)
                    kept[i] = kept[i] + _user(q)
                    nxt.append(i)
            alive = nxt
        replies = session.chat([seen[i] for i in alive], "multi_turn:answer") if alive else []
        nxt = []
        for i, r in zip(alive, replies, strict=True):
            if r is None or not r.text:
                # the conversation ends with the last answered turn
                seen[i], kept[i] = seen[i][:-1], kept[i][:-1]
                continue
            reply = {"role": "assistant", "content": clean_reply(r.text)}
            seen[i], kept[i], finish[i] = seen[i] + [reply], kept[i] + [reply], r.finish
            nxt.append(i)
        alive = nxt
    for (p, _), conv, fin in zip(items, kept, finish, strict=True):
        if len(conv) < 2:
            made.dropped["budget" if session.exhausted else "empty_reply"] += 1
            continue
        made.drafts.append((Draft(gen.type, conv, [p.doc.id], finish_reason=fin, grounded=True), p.doc.text))
    return made


RECIPES: dict[str, Callable[..., Made]] = {
    "teacher_qa": grounded_pairs, "teacher_instruct": grounded_pairs, "self_instruct": self_instruct,
    "evol_instruct": evol_instruct, "paraphrase": paraphrase, "multi_turn": multi_turn,
}
assert set(RECIPES) == TEACHER_GENERATORS


def run_recipes(docs: Sequence[Document], split: str, cfg: Any, seed: int, session: TeacherSession,
                title: Callable[[Document], str | None]) -> tuple[Made, dict[str, Any]]:
    """Every teacher generator of ``cfg`` on one split's documents, sharing ``cfg.teacher.examples`` (train)
    or ``val_examples`` by weight; paraphrases only from train documents (they are pre-training text).
    Returns what they made, together, and per-generator counts."""
    gens = [g for g in cfg.generators if g.type in TEACHER_GENERATORS and (split == "train" or g.type != "paraphrase")]
    total = cfg.teacher.examples if split == "train" else cfg.teacher.val_examples
    out = Made()
    stats: dict[str, Any] = {}
    for gen, n in zip(gens, quotas([g.weight for g in gens], total), strict=True):
        rng = random.Random(f"{seed}:{split}:{gen.type}")
        made = RECIPES[gen.type](gen, n, docs, rng, session, title) if n else Made()
        stats[gen.type] = {"planned": n, "drafts": len(made.drafts), "paraphrases": len(made.documents),
                           "dropped": {k: v for k, v in sorted(made.dropped.items()) if v},
                           **({"rewrites": dict(sorted(made.rewrites.items()))} if made.rewrites else {})}
        out.drafts += made.drafts
        out.documents += made.documents
        out.planned += n
    return out, stats


def judge(drafts: Sequence[Draft], session: TeacherSession, jcfg: Any) -> tuple[list[str | None], Counter]:
    """The teacher's 1-5 score of each draft (greedy); a reason to reject it or None, and the scores seen.

    Reasons: ``judge`` (below ``min_score``), ``judge_unscored`` (no number 1-5 in the reply),
    ``not_judged`` (the budget ran out first).
    """
    prompts = [_user(jcfg.template.format(question=d.prompt, answer=d.answer)) for d in drafts]
    replies = session.chat(prompts, "judge", overrides={"temperature": 0.0, "top_p": None, "max_new_tokens": 8}) \
        if prompts else []
    reasons: list[str | None] = []
    scores: Counter = Counter()
    for r in replies:
        m = _SCORE.search(r.text) if r is not None else None
        if r is None:
            reasons.append("not_judged")
        elif m is None:
            scores["none"] += 1
            reasons.append("judge_unscored")
        else:
            s = int(m.group(1))
            scores[str(s)] += 1
            reasons.append(None if s >= jcfg.min_score else "judge")
    return reasons, scores
