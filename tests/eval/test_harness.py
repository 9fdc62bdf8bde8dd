"""The harness on a real (tiny) model: its log-likelihoods are the plain forward pass's, whatever the
batching and sharing of contexts; a task whose answers are the model's own greedy continuations scores
1.0; generations are the greedy sampler's; samples and quarantined records are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from support import tiny_text

from gristmill.eval.harness import GPTScorer, rolling_windows, run_tasks
from gristmill.eval.tasks import load_tasks
from gristmill.eval.tasks.spec import GenerationSpec
from gristmill.formats.vocab import EOT_ID
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import generate
from gristmill.model.io import load_for_inference


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_for_inference(tiny_model_dir, "cpu")


def forward_loglikelihood(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """By hand: one forward pass over context + continuation, the continuation's log-probabilities summed."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ctx + cont[:-1]]))
    logp = logits[0].float().log_softmax(-1)[len(ctx) - 1:]  # position i predicts cont[i]
    return (sum(float(logp[i, t]) for i, t in enumerate(cont)),
            all(int(logp[i].argmax()) == t for i, t in enumerate(cont)))


def lines(n: int, words: int) -> list[str]:
    text = " ".join(tiny_text()[:6000].split())
    w = text.split()
    return [" ".join(w[i * words:(i + 1) * words]) for i in range(n)]


def write_task(folder: Path, name: str, records: list[dict], **keys) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},
            "test_split": "test", **keys}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / f"{name}.yaml"


def test_loglikelihoods_equal_the_forward_pass_at_any_batch_size(loaded):
    model, tok = loaded
    ctx = lines(3, 8)
    requests = [(ctx[0], " the king"), (ctx[0], " my lord"), (ctx[0], " the king"), (ctx[0], "!"),
                (ctx[1] + " ", "and"), ("", "Hamlet speaks"), (ctx[2], " Zürich 東京都 🙂"), (ctx[1], " x")]
    ref = None
    for batch_size in (1, 3, 16):
        scorer = GPTScorer(model, tok, batch_size=batch_size)
        got = scorer.loglikelihood(requests)
        if ref is None:
            pairs = scorer.encode_pairs(requests)
            ref = [forward_loglikelihood(model, c, k) for c, k in pairs]
            assert pairs[4][0] == tok.encode(ctx[1]).ids  # the trailing space moved to the continuation
            assert pairs[5][0] == [EOT_ID]  # an empty context is a document start
        for (ll, greedy), (ref_ll, ref_greedy) in zip(got, ref, strict=True):
            assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    assert len({round(ll, 6) for ll, _ in ref}) == len(requests) - 1  # the duplicate request only


def test_an_overlong_context_is_cut_on_the_left(loaded):
    model, tok = loaded
    L = model.config.block_size
    ctx = tok.encode(" ".join(lines(20, 10))).ids
    assert len(ctx) > 2 * L
    cont = tok.encode(" and so farewell").ids
    (ll, greedy), = GPTScorer(model, tok).loglikelihood_tokens([(ctx, cont)])
    kept = ctx[len(ctx) + len(cont) - (L + 1):]  # the input is the last L tokens of context + continuation
    assert (ll, greedy) == pytest.approx(forward_loglikelihood(model, kept, cont), abs=1e-4)


def test_rolling_loglikelihood_predicts_every_token_once(loaded):
    model, tok = loaded
    L = model.config.block_size
    ids = list(range(10, 10 + 2 * L + L // 2))
    windows = rolling_windows(ids, L)
    assert [t for _, cont in windows for t in cont] == ids
    assert windows[0][0] == [EOT_ID] and all(len(c) + len(k) - 1 <= L for c, k in windows)
    assert len(windows[-1][0]) + len(windows[-1][1]) - 1 == L  # the last window gets a full context
    text = " ".join(lines(6, 12))
    scorer = GPTScorer(model, tok, batch_size=2)
    by_hand = sum(forward_loglikelihood(model, c, k)[0] for c, k in rolling_windows(tok.encode(text).ids, L))
    assert scorer.loglikelihood_rolling([text, "To be"])[0] == pytest.approx(by_hand, abs=1e-3)


def greedy_ids(model, ids: list[int], n: int) -> tuple[list[int], list[int]]:
    """The n greedy tokens after ids, and at each step the least likely ordinary token."""
    seq, worst = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
            worst.append(int(logits[0, -1, 4:].argmin()) + 4)
    return seq[len(ids):], worst


def test_the_models_own_greedy_continuations_score_one(loaded, tmp_path: Path):
    model, tok = loaded
    scorer = GPTScorer(model, tok)
    records = []
    for ctx in lines(12, 6):
        ids = tok.encode(ctx).ids
        best, worst = greedy_ids(model, ids, 3)
        text, bad = tok.decode(best), tok.decode(worst)
        if scorer.encode_pairs([(ctx, text)])[0] != (ids, best) or not text.strip():
            continue  # decoding then encoding gives other tokens: not the greedy sequence any more
        records.append({"context": ctx, "target": text, "choices": [bad, text, bad + text], "label": 1})
    assert len(records) >= 6
    ll_task = write_task(tmp_path, "greedy_ll", records, output_type="loglikelihood", doc_to_text="{{context}}",
                         doc_to_target="{{target}}", target_delimiter="")
    mc_task = write_task(tmp_path, "greedy_mc", records, output_type="multiple_choice", doc_to_text="{{context}}",
                         doc_to_choice="choices", doc_to_target="label", target_delimiter="",
                         metric_list=[{"metric": "acc"}, {"metric": "exact_match"}])
    res = run_tasks(model, tok, [ll_task, mc_task], batch_size=4)
    assert res["greedy_ll"]["metrics"]["acc"]["value"] == 1.0
    assert res["greedy_mc"]["metrics"]["acc"]["value"] == 1.0
    assert res["greedy_mc"]["metrics"]["exact_match"]["value"] == 1.0
    assert res["greedy_ll"]["items"] == len(records)


def test_generation_is_the_greedy_samplers(loaded):
    model, tok = loaded
    prompts = lines(4, 7)
    gen = GenerationSpec(until=("\n", "."), max_gen_toks=12)
    got = GPTScorer(model, tok, batch_size=2).generate([(p, gen) for p in prompts] + [("", gen)])
    for p, text in zip(prompts, got, strict=False):
        want = generate(model, tok, p, SamplingParams(max_new_tokens=12, temperature=0, stop=("\n", ".")))
        assert text == want.text and "." not in text and "\n" not in text
    assert isinstance(got[-1], str)


def test_run_tasks_writes_samples_and_quarantines_bad_records(loaded, tmp_path: Path):
    model, tok = loaded
    ctx = lines(5, 6)
    good = [{"context": c, "endings": ["the king", "my lord", "good night"], "label": i % 3} for i, c in enumerate(ctx)]
    path = write_task(tmp_path / "tasks", "mc", good, output_type="multiple_choice", doc_to_text="{{context}}",
                      doc_to_choice="endings", doc_to_target="label")
    data = path.parent / "mc.jsonl"
    data.write_text(data.read_text() + "{broken\n" + json.dumps({"context": "x", "endings": [], "label": 0}) + "\n")
    res = run_tasks(model, tok, path.parent, batch_size=2, samples_dir=tmp_path / "samples")["mc"]
    assert res["items"] == 5 and res["skipped"] == 2
    assert res["skipped_reasons"] == {"invalid_json": 1, "bad_record": 1}
    assert set(res["metrics"]) == {"acc", "acc_norm"} and res["metrics"]["acc"]["stderr"] is not None
    samples = [json.loads(x) for x in Path(res["samples"]).read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == [0, 1, 2, 3, 4]
    s = samples[0]
    assert s["prompt"] == ctx[0] and s["choices"] == good[0]["endings"] and len(s["loglikelihoods"]) == 3
    assert s["correct"] == (s["prediction"] == good[0]["label"])
    assert res["metrics"]["acc"]["value"] == sum(x["metrics"]["acc"] for x in samples) / 5
    quarantined = [json.loads(x) for x in Path(res["quarantine"]).read_text().splitlines()]
    assert [(q["reason"].split(":")[0], q["document"]["line"]) for q in quarantined] == [
        ("invalid_json", 6), ("bad_record", 7)]
    assert all(q["step"] == "task:mc" for q in quarantined)
    # the same answers again (deterministic), and bf16 blocks stay close to float32
    again = run_tasks(model, tok, load_tasks(path), batch_size=5)["mc"]
    assert again["metrics"] == res["metrics"]
    fp = GPTScorer(model, tok).loglikelihood([(c, " the king") for c in ctx])
    bf = GPTScorer(model, tok, bf16=True).loglikelihood([(c, " the king") for c in ctx])
    assert all(abs(a - b) < 0.1 * abs(a) + 0.1 for (a, _), (b, _) in zip(fp, bf, strict=True))
