"""Run evaluation tasks against a Gristmill model: log-likelihoods, rolling log-likelihoods and greedy
generations behind a small :class:`Scorer` protocol, and :func:`run_tasks`, which turns them into metrics.

:class:`GPTScorer` asks exactly what lm-evaluation-harness's Hugging Face backend asks (same token ids:
a trailing space of the context moves to the continuation, the pair is encoded whole and split after the
context's tokens; an over-long pair loses tokens on the left), but computes it with less work:

- Requests that share a context (the choices of one item) form one *tree*, one row of the batch:
  ``[context][choice 1][choice 2]...``, each choice attending to the context and to itself only, with
  positions that continue the context's. The context is computed once instead of once per choice, and
  a choice's last token, which predicts nothing, is not fed at all.
- The head (a ``[C, V]`` matrix product, the largest of a small model's: 49k x 576 on SmolLM2) runs only
  at the positions that predict a continuation token, not at every position; the log-softmax likewise.
- Trees are sorted by length and padded to the longest of their batch, not to the context window.

Shapes in comments: B rows (trees) in a batch, T tokens per row, N positions whose prediction is read,
C n_embd, V vocab.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tokenizers import Tokenizer

from gristmill.core.jsonl import QuarantineWriter, write_jsonl
from gristmill.core.workspace import atomic_open
from gristmill.errors import InputError
from gristmill.eval.tasks import Task, load_tasks
from gristmill.eval.tasks.base import FEWSHOT_SEED, Item
from gristmill.eval.tasks.spec import GenerationSpec
from gristmill.formats.vocab import EOT_ID
from gristmill.model.gpt import GPT, unwrap


class Scorer(Protocol):
    """What the tasks ask of a model (lm-eval's three request types)."""

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """For each (context, continuation): the continuation's log-likelihood in nats, and whether greedy
        decoding from the context would produce exactly it."""
        ...

    def loglikelihood_rolling(self, requests: Sequence[str]) -> list[float]:
        """Each text's whole log-likelihood (from a document start), in windows of the context size."""
        ...

    def generate(self, requests: Sequence[tuple[str, GenerationSpec]]) -> list[str]:
        """Greedy generation from each context, ending before the first stop string."""
        ...


@dataclass
class _Tree:
    """Requests sharing one context: a row ``[context][branch 1 minus its last token][branch 2 ...]``."""

    ctx: list[int]
    branches: list[list[int]] = field(default_factory=list)
    requests: list[list[int]] = field(default_factory=list)
    """Per branch, the indices of the requests it answers."""

    @property
    def length(self) -> int:
        return len(self.ctx) + sum(len(b) - 1 for b in self.branches)


class GPTScorer:
    """The :class:`Scorer` of a Gristmill model and its tokenizer.

    ``batch_size``: trees (items) per forward pass, and at most ``max_batch_tokens`` tokens (rows x the
    longest row), so long rows (rolling windows of a long-context model) come fewer at a time. ``bf16``:
    run the transformer blocks under bfloat16 autocast (the head and the log-softmax stay float32): faster
    on CPUs with AMX, less precise (it can change which choice wins; off by default). ``max_row``: longest
    row; the branches of a larger tree are split over several rows.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, *, batch_size: int = 8, bf16: bool = False,
                 max_row: int | None = None, max_batch_tokens: int = 16384):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = unwrap(model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.bf16 = bf16
        self.block_size = self.model.config.block_size
        self.max_row = max_row or max(2 * self.block_size, 1024)
        self.max_batch_tokens = max_batch_tokens
        self.device = self.model.tok_emb.weight.device

    # --- text to token ids, as lm-eval's causal models do it

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode_pairs(self, requests: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(context ids, continuation ids) of each request, as lm-eval's ``TemplateLM`` makes them."""
        texts: dict[str, int] = {}
        plan = []
        for context, continuation in requests:
            if context == "":
                plan.append(("", continuation))
                texts.setdefault(continuation, len(texts))
                continue
            spaces = len(context) - len(context.rstrip())
            if spaces:  # "Q: x A: " + "y" scores " y": the space belongs to the continuation's first token
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            plan.append((context, context + continuation))
            texts.setdefault(context, len(texts))
            texts.setdefault(context + continuation, len(texts))
        ids = self._encode(list(texts))
        out = []
        for context, whole in plan:
            if context == "":
                cont = ids[texts[whole]]
                # an empty context is <|endoftext|> (a document start), unless the text itself starts so
                out.append((cont[:1], cont[1:]) if cont and cont[0] == EOT_ID else ([EOT_ID], cont))
            else:
                ctx, full = ids[texts[context]], ids[texts[whole]]
                out.append((ctx or [EOT_ID], full[len(ctx):]))
        return out

    # --- the Scorer protocol

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.loglikelihood_tokens(self.encode_pairs(requests))

    def loglikelihood_rolling(self, requests: Sequence[str]) -> list[float]:
        pairs, owner = [], []
        for i, ids in enumerate(self._encode(list(requests))):
            for ctx, cont in rolling_windows(ids, self.block_size):
                pairs.append((ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self.loglikelihood_tokens(pairs), strict=True):
            totals[i] += ll
        return totals

    def generate(self, requests: Sequence[tuple[str, GenerationSpec]]) -> list[str]:
        """Greedy generations through the inference engine (continuous batching, ``batch_size`` at once)."""
        from gristmill.inference.engine import Engine, EngineConfig
        from gristmill.inference.sampling import SamplingParams

        out: list[str] = [""] * len(requests)
        groups: dict[GenerationSpec, list[int]] = {}
        for i, (_, gen) in enumerate(requests):
            groups.setdefault(gen, []).append(i)
        ids = self._encode([c for c, _ in requests])
        with Engine(self.model, self.tokenizer, EngineConfig(max_batch=self.batch_size)) as engine:
            for gen, idx in groups.items():
                keep = max(1, self.block_size - gen.max_gen_toks)  # lm-eval: room for max_gen_toks tokens
                prompts = [(ids[i] or [EOT_ID])[-keep:] for i in idx]
                params = SamplingParams(max_new_tokens=gen.max_gen_toks, temperature=0.0, stop=gen.until)
                for i, choices in zip(idx, engine.generate_batch(prompts, params), strict=True):
                    out[i] = choices[0].text
        return out

    # --- scoring token ids

    @torch.inference_mode()
    def loglikelihood_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) of each continuation after its context, both token ids."""
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)  # an empty continuation: certain
        L = self.block_size
        trees: dict[tuple[int, ...], list[_Tree]] = {}
        for r, (ctx, cont) in enumerate(pairs):
            if not cont:
                continue
            if len(cont) > L:
                raise InputError(f"a continuation of {len(cont)} tokens is longer than the model's context "
                                 f"window ({L} tokens)")
            if not ctx:
                raise ValueError("a context needs at least one token (use <|endoftext|> for none)")
            over = len(ctx) + len(cont) - (L + 1)
            if over > 0:  # as lm-eval: the input is the last L tokens of context + continuation
                ctx = ctx[over:]
            self._add(trees, list(ctx), list(cont), r)
        rows = sorted((t for ts in trees.values() for t in ts), key=lambda t: -t.length)
        was_training = self.model.training
        self.model.eval()
        try:
            b = 0
            while b < len(rows):  # rows are longest first: the batch's first row sets its width
                n = max(1, min(self.batch_size, self.max_batch_tokens // rows[b].length))
                for r, res in self._score_batch(rows[b:b + n]):
                    results[r] = res
                b += n
        finally:
            self.model.train(was_training)
        return results

    def _add(self, trees: dict[tuple[int, ...], list[_Tree]], ctx: list[int], cont: list[int], r: int) -> None:
        group = trees.setdefault(tuple(ctx), [])
        for t in group:
            for j, br in enumerate(t.branches):
                if br == cont:
                    t.requests[j].append(r)
                    return
        tree = group[-1] if group else None
        if tree is None or (tree.branches and tree.length + len(cont) - 1 > self.max_row):
            tree = _Tree(ctx)
            group.append(tree)
        tree.branches.append(cont)
        tree.requests.append([r])

    def _score_batch(self, batch: list[_Tree]) -> Iterable[tuple[int, tuple[float, bool]]]:
        dev = self.device
        T = max(t.length for t in batch)
        idx = torch.zeros(len(batch), T, dtype=torch.long)
        pos = torch.zeros(len(batch), T, dtype=torch.long)
        branch = torch.full((len(batch), T), -1, dtype=torch.long)  # 0 = context, j + 1 = branch j, -1 = pad
        read_rows, read_cols = [], []  # positions whose prediction is read (N of them)
        req_read, req_target, req_of = [], [], []  # per continuation token: its read index, its id, its request
        for i, t in enumerate(batch):
            n = len(t.ctx)
            idx[i, :n] = torch.tensor(t.ctx)
            pos[i, :n] = torch.arange(n)
            branch[i, :n] = 0
            ctx_read = len(read_rows)
            read_rows.append(i)
            read_cols.append(n - 1)  # the context's last token predicts every branch's first token
            o = n
            for j, br in enumerate(t.branches):
                m = len(br) - 1  # tokens fed: all but the last
                if m:
                    idx[i, o:o + m] = torch.tensor(br[:-1])
                    pos[i, o:o + m] = torch.arange(n, n + m)
                    branch[i, o:o + m] = j + 1
                reads = [ctx_read] + list(range(len(read_rows), len(read_rows) + m))
                read_rows += [i] * m
                read_cols += range(o, o + m)
                for r in t.requests[j]:
                    req_read += reads
                    req_target += br
                    req_of += [r] * len(br)
                o += m
        mask = None  # rows without branches (one continuation per context) are plain causal sequences
        if any(len(t.branches) > 1 for t in batch):
            # a query attends to earlier keys of the context and of its own branch (pads: the context too)
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            mask = causal & ((branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None]))  # [B,T,T]
            mask = mask[:, None].to(dev)  # [B,1,T,T]
        hidden = self._hidden(idx.to(dev), pos.to(dev), mask)  # [B,T,C]
        h = hidden[torch.tensor(read_rows, device=dev), torch.tensor(read_cols, device=dev)]  # [N,C]
        logits = self._head(h)  # [N,V] float32
        lse = torch.logsumexp(logits, dim=-1)  # [N]
        best = logits.argmax(dim=-1)  # [N]
        rd = torch.tensor(req_read, device=dev)
        tg = torch.tensor(req_target, device=dev)
        token_lp = (logits[rd, tg] - lse[rd]).double().cpu()
        token_greedy = (best[rd] == tg).cpu()
        sums: dict[int, float] = {}
        greedy: dict[int, bool] = {}
        for r, lp, g in zip(req_of, token_lp.tolist(), token_greedy.tolist(), strict=True):
            sums[r] = sums.get(r, 0.0) + lp
            greedy[r] = greedy.get(r, True) and g
        for r in sums:
            yield r, (sums[r], greedy[r])

    def _hidden(self, idx: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The last block's outputs of rows with explicit positions and attention mask (None: causal)."""
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            return self.model.hidden(idx, pos, mask)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [N,V] (float32) of last-block outputs [N,C], computed in float32."""
        return self.model.logits(h.float()).float()


def rolling_windows(ids: list[int], block_size: int, prefix: int = EOT_ID) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) windows that predict every token of ``ids`` once, the first after ``prefix``
    (a document start): consecutive ``block_size`` tokens, the last window taking a full window of context
    (lm-eval's disjoint rolling windows)."""
    out: list[tuple[list[int], list[int]]] = []
    if not ids:
        return out
    first = min(block_size, len(ids))
    out.append(([prefix], ids[:first]))
    done = first
    while done < len(ids):
        end = min(done + block_size, len(ids))
        ctx = ids[max(0, end - block_size - 1):done]
        out.append((ctx or [prefix], ids[done:end]))
        done = end
    return out


# --- tasks


def _answers(scorer: Scorer, task: Task, items: list[Item]) -> list[Any]:
    """The scorer's answers for every item of a task, asked in one call so batches span items."""
    spec = task.spec
    requests = [it.requests(spec) for it in items]
    flat = [r for rs in requests for r in rs]
    if spec.output_type in ("multiple_choice", "loglikelihood"):
        got: list[Any] = scorer.loglikelihood(flat)
    elif spec.output_type == "loglikelihood_rolling":
        got = scorer.loglikelihood_rolling(flat)
    else:
        got = scorer.generate(flat)
    out, k = [], 0
    for rs in requests:
        n = len(rs)
        out.append(got[k:k + n] if spec.output_type in ("multiple_choice", "loglikelihood") else got[k])
        k += n
    return out


def evaluate_tasks(scorer: Scorer, tasks: Sequence[Task], *, seed: int = FEWSHOT_SEED,
                   num_fewshot: int | None = None, samples_dir: Path | None = None, limit: int | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Score each task with ``scorer``; per task its metrics (value and standard error), item counts and
    timing. With ``samples_dir``: ``<task>.jsonl`` per-item logs and, for skipped records,
    ``<task>.quarantine.jsonl``."""
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        t0 = time.perf_counter()
        items = task.items(num_fewshot, seed)
        if limit is not None:
            items = items[:limit]
        answers = _answers(scorer, task, items)
        scores = [task.score(it, a) for it, a in zip(items, answers, strict=True)]
        metrics = task.aggregate(scores)
        seconds = time.perf_counter() - t0
        n_shot = task.spec.num_fewshot if num_fewshot is None else num_fewshot
        res: dict[str, Any] = {
            "task": task.name, "alias": task.spec.alias, "file": str(task.spec.path),
            "output_type": task.spec.output_type, "num_fewshot": n_shot, "items": len(items),
            "skipped": len(task.skipped), "skipped_reasons": task.skipped_reasons(), "metrics": metrics,
            "seconds": round(seconds, 3), "items_per_second": round(len(items) / seconds, 2) if seconds else None,
        }
        if samples_dir is not None:
            samples_dir = Path(samples_dir)
            path = samples_dir / f"{task.name}.jsonl"
            write_jsonl(path, ({"doc_id": it.doc_id, "line": it.line, "prompt": it.context, **s}
                               for it, s in zip(items, scores, strict=True)))
            res["samples"] = str(path)
            if task.skipped:
                qpath = samples_dir / f"{task.name}.quarantine.jsonl"
                with atomic_open(qpath, "w", encoding="utf-8") as f:
                    sink = QuarantineWriter(f)
                    for s in task.skipped:
                        sink(s.quarantine(), f"task:{task.name}", s.reason)
                res["quarantine"] = str(qpath)
        if log is not None:
            shown = ", ".join(f"{k} {v['value']:.4f}" for k, v in metrics.items() if v["value"] is not None)
            skipped = f", {len(task.skipped)} skipped" if task.skipped else ""
            log(f"[eval] {task.name}: {shown} over {len(items)} items{skipped} ({seconds:.1f}s)")
        results[task.name] = res
    return results


def run_tasks(model: GPT, tokenizer: Tokenizer, tasks: Sequence[Task] | Sequence[str | Path] | str | Path, *,
              batch_size: int = 8, seed: int = FEWSHOT_SEED, num_fewshot: int | None = None,
              samples_dir: Path | None = None, device: str | torch.device | None = None, bf16: bool = False,
              limit: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Score ``tasks`` (Task objects, or task YAML files / folders) with a Gristmill model; see
    :func:`evaluate_tasks` for the result. ``device``: where the model runs (it is moved there if it is
    elsewhere; default: where its weights are). ``seed``: few-shot draws. ``limit``: first items only."""
    if isinstance(tasks, (str, Path)) or (tasks and not isinstance(tasks[0], Task)):
        tasks = load_tasks(tasks)  # type: ignore[arg-type]
    if device is not None and unwrap(model).tok_emb.weight.device != torch.device(device):
        model.to(device)
    scorer = GPTScorer(model, tokenizer, batch_size=batch_size, bf16=bf16)
    return evaluate_tasks(scorer, list(tasks), seed=seed, num_fewshot=num_fewshot,  # type: ignore[arg-type]
                          samples_dir=samples_dir, limit=limit, log=log)
