"""The command line: it parses arguments and calls library functions, nothing more.

    gristmill run RECIPE [--set key=value ...] [--force STAGE]   every stage, cached
    gristmill <stage> RECIPE [--set ...] [--force]              one stage (collect, prepare, ...)
    torchrun --nproc_per_node N -m gristmill train RECIPE        the same, on N processes
    gristmill serve RUN_DIR [--port 8000] [--api-key-file F]     OpenAI-compatible server + chat page
    gristmill generate RUN_DIR --prompt TEXT [--chat]            sample from the command line
    gristmill chat RUN_DIR                                       a conversation in the terminal
    gristmill compare RUN_OR_MODEL... [--json | --markdown]      the models of runs, side by side
    gristmill score RUN_OR_MODEL --tasks PATH [--json]           a model on lm-eval-format task files
    gristmill show-docs RUN_DIR STAGE [--split S] [-n N]          counts and a few documents of collect/prepare
    gristmill recipes | gristmill show RECIPE [--set ...]        list / print resolved recipes

User mistakes (bad recipe key, missing input) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gristmill import __version__
from gristmill.errors import GristmillError

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Command, str, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help: str, args: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    def register(fn: Command) -> Command:
        COMMANDS[name] = (fn, help, args)
        return fn

    return register


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file, or a built-in recipe name (see `gristmill recipes`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--name", help="run name (default: the recipe's name); outputs go to runs/<name>/")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes for the data stages (collect.workers and prepare.workers; default: one per "
                        "CPU core)")


def _load(args: argparse.Namespace):
    from gristmill.pipeline.recipe import load_recipe

    overrides = list(args.overrides)
    if getattr(args, "name", None):
        overrides.append(f"name={args.name}")
    if getattr(args, "workers", None) is not None:
        overrides += [f"collect.workers={args.workers}", f"prepare.workers={args.workers}"]
    return load_recipe(args.recipe, overrides)


def _run_args(p: argparse.ArgumentParser) -> None:
    _recipe_args(p)
    p.add_argument("--force", metavar="STAGE", help="re-run this stage and every stage after it")
    p.add_argument("--only", action="append", metavar="STAGE", help="run only these stages (repeatable)")


@command("run", "run every stage of a recipe (stages whose inputs are unchanged are skipped)", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    from gristmill.pipeline.runner import run_pipeline

    recipe = _load(args)
    manifests = run_pipeline(recipe, only=args.only, force_from=args.force)
    print_summary(recipe, manifests)
    return 0


def print_summary(recipe: Any, manifests: dict[str, dict[str, Any]]) -> None:
    """Where the run is, each stage's summary lines, and how to use the model."""
    from gristmill.stages import STAGES

    run_dir = recipe.run_dir
    lines = [f"\nRun '{recipe.name}' is in {run_dir}/"]
    for st in STAGES:
        m = manifests.get(st.name)
        if m and st.summary is not None and st.name != "report":
            lines += st.summary(m, run_dir)
    for stage in ("finetune", "train"):
        if (run_dir / stage / "model").is_dir():
            lines.append(f"  model   {run_dir / stage / 'model'}/")
            break
    report = next((s for s in STAGES if s.name == "report"), None)
    if report is not None and manifests.get("report") and report.summary is not None:
        lines += report.summary(manifests["report"], run_dir)
    lines.append(f"  serve   gristmill serve {run_dir}   (then open http://127.0.0.1:{recipe.serve.port}/)")
    lines.append(f"  sample  gristmill generate {run_dir} --chat --prompt 'Who was Hamlet?'")
    print("\n".join(lines))


def _stage_command(name: str, help: str) -> None:
    def args(p: argparse.ArgumentParser) -> None:
        _recipe_args(p)
        p.add_argument("--force", action="store_true", help="re-run even if the cached output is current")

    def fn(a: argparse.Namespace) -> int:
        from gristmill.pipeline.runner import _world, run_pipeline

        recipe = _load(a)
        m = run_pipeline(recipe, only=[name], force={name} if a.force else None)[name]
        if _world()[0] == 0:
            print(f"{name}: {recipe.run_dir / name}/ ({m.get('wall_time_s', 0.0):.1f}s)")
        return 0

    command(name, help, args)(fn)


def _show_args(p: argparse.ArgumentParser) -> None:
    _recipe_args(p)


@command("show", "print a recipe with every default filled in, as YAML", _show_args)
def cmd_show(args: argparse.Namespace) -> int:
    import yaml

    from gristmill.pipeline.recipe import recipe_dict

    print(yaml.safe_dump(recipe_dict(_load(args)), sort_keys=False), end="")
    return 0


@command("keys", "print every recipe key with its type, default and meaning (Markdown)")
def cmd_keys(args: argparse.Namespace) -> int:
    from gristmill.pipeline.reference import recipe_reference

    print(recipe_reference(), end="")
    return 0


@command("recipes", "list the built-in recipes")
def cmd_recipes(args: argparse.Namespace) -> int:
    from gristmill.core.config import builtin_recipes

    for name in builtin_recipes():
        print(name)
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a run directory (runs/<name>) or a model directory")
    p.add_argument("--model", choices=("auto", "train", "finetune", "base"),
                   help="which model of a run (default: the fine-tuned one if there is one)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")


def _serve_config(args: argparse.Namespace):
    """The run's recorded ``serve`` section (if any), then the command-line flags on top."""
    from gristmill.core.config import validate
    from gristmill.core.workspace import read_json
    from gristmill.serve.config import ServeConfig

    data: dict[str, Any] = {}
    recorded = Path(args.path) / "recipe.json"
    if recorded.is_file():
        data = dict(read_json(recorded).get("serve") or {})
    for key in ("host", "port", "api_key_file", "model", "device", "max_batch", "max_queue", "merge_adapter",
                "weights", "compile"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    return validate(ServeConfig, data, "serve options")


def _engine_args(p: argparse.ArgumentParser, weights: str | None = "auto") -> None:
    """The inference engine's flags (serve, chat, generate)."""
    p.add_argument("--weights", choices=("auto", "fp32", "bf16", "int8", "int4"), default=weights,
                   help="weight format (default auto: the fastest whose perplexity is within 1%% of fp32's; "
                        "int8 and int4 run on the CPU only)")
    p.add_argument("--compile", action="store_const", const=True, default=None if weights is None else False,
                   help="decode single streams through torch.compile (faster per token; compiles at start-up)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--api-key-file", dest="api_key_file",
                   help="require `Authorization: Bearer KEY` on /v1/*, KEY being this file's first line "
                        "(or set GRISTMILL_API_KEY)")
    p.add_argument("--max-batch", dest="max_batch", type=int, help="most sequences decoded together")
    p.add_argument("--max-queue", dest="max_queue", type=int, help="most requests waiting; more get 503")
    _engine_args(p, weights=None)
    p.add_argument("--no-merge", dest="merge_adapter", action="store_const", const=False,
                   help="serve a LoRA adapter folder as base + adapter layers instead of merging them at load")
    p.add_argument("--api-key", dest="api_key", help="the key itself (visible to other users in the process "
                                                        "list: prefer --api-key-file or GRISTMILL_API_KEY)")


@command("serve", "serve a model over an OpenAI-compatible HTTP API, with a chat page at /", _serve_args)
def cmd_serve(args: argparse.Namespace) -> int:
    from gristmill.core.extras import check

    for module in ("fastapi", "uvicorn", "prometheus_client"):
        check(module, "serve", "gristmill serve")
    from gristmill.serve.app import serve

    serve(Path(args.path), _serve_config(args), api_key=args.api_key)
    return 0


def _generate_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--prompt", required=True, help="the prompt (a user message with --chat)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--system", help="system message (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    _engine_args(p)


@command("generate", "sample text from a model on the command line (streams to stdout)", _generate_args)
def cmd_generate(args: argparse.Namespace) -> int:
    from gristmill.errors import InputError
    from gristmill.inference.engine import Engine, EngineConfig
    from gristmill.inference.sampling import SamplingParams
    from gristmill.inference.stream import encode_prompt, fit_prompt
    from gristmill.model.io import load_for_inference, resolve_model_dir
    from gristmill.runtime import resolve_device

    model_dir = resolve_model_dir(Path(args.path), args.model or "auto")
    model, tokenizer = load_for_inference(model_dir, resolve_device(args.device or "auto"))
    prompt = args.prompt
    if args.chat:
        from gristmill.formats.chat import encode_chat

        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        prompt, _ = encode_chat(tokenizer, messages + [{"role": "user", "content": args.prompt}],
                                add_generation_prompt=True)
    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as e:
        raise InputError(str(e)) from None
    with Engine(model, tokenizer, EngineConfig(max_batch=1, max_queue=1, weights=args.weights,
                                               compile=args.compile)) as engine:
        ids = fit_prompt(encode_prompt(tokenizer, prompt), engine.context_length, truncate=True)
        engine.start()  # (compiles, with --compile) before the prompt is echoed
        if not args.chat:
            print(args.prompt, end="", flush=True)
        for delta in engine.submit(ids, params):
            print(delta.text, end="", flush=True)
    print()
    return 0


def _chat_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--system", help="a system message that starts the conversation")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens per answer")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int)
    _engine_args(p)


@command("chat", "talk with a model in the terminal (/reset, /exit)", _chat_args)
def cmd_chat(args: argparse.Namespace) -> int:
    from gristmill.serve.chat_cli import chat

    return chat(Path(args.path), args.device or "auto", args.system, model=args.model or "auto",
                max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                weights=args.weights, compile=args.compile)


def _show_docs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder (runs/<name>)")
    p.add_argument("stage", help="a stage that writes documents: collect or prepare")
    p.add_argument("--split", help="documents (collect, default), quarantine (collect), train (prepare, "
                                   "default), val, dropped")
    p.add_argument("-n", type=int, default=3, help="documents to print (default 3)")
    p.add_argument("--chars", type=int, default=300, help="characters of each document's text (default 300)")


@command("show-docs", "print counts and a few documents of a run's collect or prepare output", _show_docs_args)
def cmd_show_docs(args: argparse.Namespace) -> int:
    from gristmill.report.documents import show_documents

    print(show_documents(Path(args.run), args.stage, args.split, args.n, args.chars), end="")
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="RUN_OR_MODEL",
                   help="a run folder (runs/<name>), or one model of a run (runs/<name>/finetune/model)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON ({\"models\": [...]}, every key always there)")
    out.add_argument("--markdown", action="store_true", help="print a Markdown table")


@command("compare", "compare models across runs (pre-trained, imported, fine-tuned) on the metrics their runs "
                    "recorded", _compare_args)
def cmd_compare(args: argparse.Namespace) -> int:
    from gristmill.report.compare import compare, to_json, to_markdown, to_text

    entries = compare(args.paths)
    print(to_json(entries) if args.json else to_markdown(entries) if args.markdown else to_text(entries), end="")
    return 0


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder, or a run folder (its fine-tuned, else pre-trained, else base model)")
    p.add_argument("--tasks", action="append", required=True, metavar="PATH",
                   help="a task YAML in lm-evaluation-harness's format, or a folder of them (repeatable)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples for every task (default: each task's own)")
    p.add_argument("--limit", type=int, help="score only the first N items of each task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--samples-dir", type=Path, help="write per-item logs (<task>.jsonl) here")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


@command("score", "score a model on task files (lm-evaluation-harness's YAML + JSONL format)", _score_args)
def cmd_score(args: argparse.Namespace) -> int:
    import json

    from gristmill.eval.harness import run_tasks
    from gristmill.eval.tasks import load_tasks
    from gristmill.model.io import load_for_inference, resolve_model_dir
    from gristmill.runtime import resolve_device

    tasks = load_tasks(args.tasks)
    device = resolve_device(args.device)
    model, tokenizer = load_for_inference(resolve_model_dir(Path(args.model)), device)
    results = run_tasks(model, tokenizer, tasks, batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                        samples_dir=args.samples_dir, device=device, limit=args.limit,
                        log=None if args.json else lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
        return 0
    for name, r in results.items():
        shown = ", ".join(f"{k} {v['value']:.4f}" + (f" ± {v['stderr']:.4f}" if v.get("stderr") else "")
                          for k, v in r["metrics"].items() if v["value"] is not None)
        print(f"{name:<32} {shown}  ({r['items']} items, {r['num_fewshot']}-shot)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gristmill.stages import STAGES

    for st in STAGES:
        if st.name not in COMMANDS:
            _stage_command(st.name, st.help)
    parser = argparse.ArgumentParser(prog="gristmill", description="From raw data to a served generative model.")
    parser.add_argument("--version", action="version", version=f"gristmill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (fn, help, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


OPENMP_SPIN = "10000"
"""libgomp's spin count for gristmill commands (GOMP_SPINCOUNT, unless already set): roughly half a
millisecond of spinning before an idle OpenMP worker sleeps. libgomp's default spins for milliseconds, and
on a busy machine workers that spin while the thread they wait for is descheduled slowed the inference
engine 6-8x (16 streams in bf16: 12-17 tok/s vs 102 with 10000 spins, load 4 on 2 cores); much shorter
spins (1000) cost a third of single-stream decode on a quiet machine (52 vs 86 tok/s), 10000 costs
nothing measurable there (84 vs 86)."""


def main(argv: list[str] | None = None) -> int:
    # read once by libgomp when torch is first imported, which no command has done yet
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GristmillError as e:
        print(f"gristmill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gristmill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
