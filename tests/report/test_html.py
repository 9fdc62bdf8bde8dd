"""report.html: built from a real run, self-contained, escaped, and shown by a real headless Chromium (driven
by Playwright) with every network request recorded and refused."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from support import chromium_path

from gristmill.core.workspace import StageContext, write_json
from gristmill.report.config import ReportConfig
from gristmill.report.markdown import fmt
from gristmill.report.plots import Panel, line_figure
from gristmill.stages.report import build_html
from gristmill.stages.report import run as run_report

HOSTILE = '</pre></td><script>alert("x")</script><img src="http://example.invalid/x.png"> & <b>bold</b>'
FIGURES = ("fig-loss", "fig-lr", "fig-throughput", "fig-grad-norm", "fig-funnel")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def hostile_run(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the small run whose model wrote markup: a sample and a fine-tuned answer hold HTML and a
    link to elsewhere (models write arbitrary text), with the page built again."""
    run = shutil.copytree(runs / "runs" / "small", tmp_path_factory.mktemp("hostile") / "hostile")
    ev = read(run / "evaluate" / "eval.json")
    ev["models"]["train"]["samples"][0]["completion"] = HOSTILE
    ev["models"]["finetune"]["chat_answers"][0]["answer"] = HOSTILE
    # a task suite's scores
    ev["models"]["train"]["tasks"] = {"hellaswag": {"acc": 0.25, "acc_norm": 0.3}, "<i>odd</i>": {"acc": 0.5}}
    ev["models"]["finetune"]["tasks"] = {}
    write_json(run / "evaluate" / "eval.json", ev)
    ft = read(run / "finetune" / "eval.json")
    ft["answers"][0]["after"] = HOSTILE
    write_json(run / "finetune" / "eval.json", ft)
    # a collected document is arbitrary text too: the data card shows the first ones each step dropped
    card = read(run / "prepare" / "data_card.json")
    card["steps"][0]["dropped"] = {"too_short": {"documents": 1, "bytes": 9, "key": "min_chars",
                                                 "examples": [{"id": "x", "text": HOSTILE}]}}
    write_json(run / "prepare" / "data_card.json", card)
    (run / "report" / "report.html").write_text(build_html(run, ReportConfig()), encoding="utf-8")
    return run


def test_the_report_stage_writes_html_beside_markdown(runs: Path, monkeypatch: pytest.MonkeyPatch):
    report = runs / "runs" / "small" / "report"
    page = (report / "report.html").read_text()
    assert (report / "report.md").is_file()
    assert read(report / "manifest.json")["stats"]["html_characters"] == len(page)
    # self-contained: no script, nothing to fetch (the only URLs are SVG's XML namespaces), and a policy
    # that forbids fetching anything
    assert "<script" not in page
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= {"http://www.w3.org/2000/svg",
                                                              "http://www.w3.org/1999/xlink"}
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for fig in FIGURES:
        assert page.count(f'<figure id="{fig}"><svg') == 1, fig
    assert "<h3>Data card</h3>" in page and "Languages of the kept documents: en 100.0%" in page
    # the same run gives the same bytes (the run was made, and is named, from its parent folder)
    monkeypatch.chdir(runs)
    assert build_html(Path("runs/small"), ReportConfig()) == page


def test_text_from_the_run_is_escaped(hostile_run: Path):
    page = (hostile_run / "report" / "report.html").read_text()
    assert HOSTILE not in page and "<script" not in page and "example.invalid" in page
    escaped = "&lt;/pre&gt;&lt;/td&gt;&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert page.count(escaped) == 3  # the sample, the fine-tuned answer, the dropped document


def test_without_matplotlib_the_markdown_is_written_and_the_log_says_how_once(
        runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    run = shutil.copytree(runs / "runs" / "small", tmp_path / "run")
    shutil.rmtree(run / "report")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on an install without the report extra
    lines: list[str] = []
    ctx = StageContext(run_dir=run, stage="report", seed=1, log=lines.append)
    ctx.out_dir.mkdir()
    stats = run_report(ctx, ReportConfig())
    assert (ctx.out_dir / "report.md").is_file() and not (ctx.out_dir / "report.html").exists()
    assert stats["html_characters"] is None
    said = [line for line in lines if "report.html" in line]
    assert len(said) == 1 and "pip install 'gristmill[report]'" in said[0]


def test_a_partial_run_still_renders(tmp_path: Path):
    run = tmp_path / "partial"
    write_json(run / "collect" / "manifest.json", {"stats": {"documents": 3, "characters": 30, "quarantined": 1}})
    (run / "train").mkdir()
    (run / "train" / "metrics.jsonl").write_text('{"step": 1, "train/loss": 5.0}\nnot json\n'
                                                 '{"step": 2, "train/loss": 4.0, "lr_mult": 0.5}\n')
    page = build_html(run, ReportConfig(title="Partial <run>"))
    assert "<title>Partial &lt;run&gt;</title>" in page
    assert '<figure id="fig-loss">' in page and '<figure id="fig-funnel">' in page
    assert 'id="models"' not in page and 'id="samples"' not in page  # no model, no samples: no section
    assert "<td>prepare</td><td>not run</td>" in page


def test_plots_are_reproducible_and_their_ids_do_not_collide():
    panels = [Panel("pre-training", "loss", {"train": {1: 3.0, 2: 2.5, 3: 2.2}, "validation": {2: 2.7}})]
    a, b = line_figure("fig-a", "Loss", panels), line_figure("fig-b", "Loss", panels)
    assert a == line_figure("fig-a", "Loss", panels)
    assert a.startswith("<svg") and "<title>Loss</title>" in a and ">pre-training<" in a and ">step<" in a
    ids_a, ids_b = (set(re.findall(r'id="([^"]+)"', s)) for s in (a, b))
    assert ids_a and not ids_a & ids_b
    with pytest.raises(ValueError, match="no data"):
        line_figure("fig-c", "Empty", [Panel("x", "y", {"train": {}})])


# ----------------------------------------------------------------------------------------------------
# In a browser


@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:
        pytest.skip("needs a Chromium binary: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def open_offline(browser, path: Path):
    """The page loaded from disk, with every request recorded and any that is not the file refused;
    returns (page, requests, refused, console errors)."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    refused: list[str] = []
    errors: list[str] = []

    def route(r) -> None:
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    ctx.route("**/*", route)
    page = ctx.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, requests, refused, errors


def svg_texts(page, fig: str) -> list[str]:
    return page.locator(f"#{fig} svg text").all_text_contents()


def test_chromium_shows_the_plots_and_tables_offline(browser, hostile_run: Path, tmp_path: Path):
    page_path = hostile_run / "report" / "report.html"
    page, requests, refused, errors = open_offline(browser, page_path)
    assert requests == [page_path.as_uri()] and refused == [] and errors == []
    assert page.evaluate("document.scripts.length") == 0

    # every plot is one inline SVG, drawn at a readable size, with its title and axis labels
    for fig in FIGURES:
        assert page.locator(f"#{fig} svg").count() == 1, fig
        assert page.locator(f"#{fig} svg").bounding_box()["width"] > 400, fig
    loss = svg_texts(page, "fig-loss")
    for label in ("Loss", "pre-training", "fine-tuning", "step", "loss (nats per token)",
                  "loss (nats per assistant token)", "train", "validation"):
        assert label in loss, label
    assert page.locator("#fig-loss svg > title").text_content() == "Loss"
    assert {"Learning rate", "learning rate"} <= set(svg_texts(page, "fig-lr"))
    assert {"Throughput", "tokens per second"} <= set(svg_texts(page, "fig-throughput"))
    funnel = svg_texts(page, "fig-funnel")
    prepare = read(hostile_run / "prepare" / "manifest.json")
    for label in ("Data funnel", "documents", "characters", "collect (records read)", *prepare["stats"]["steps"]):
        assert label in funnel, label

    # the tables: the models compared and the evaluation, with the numbers of the run's files
    def row(section: str, first: str) -> list[str]:
        tr = page.locator(f"#{section} tr", has=page.locator("td", has_text=re.compile(f"^{re.escape(first)}$")))
        return [c.strip() for c in tr.first.locator("td").all_text_contents()]

    header = [c.strip() for c in page.locator("#models thead th").all_text_contents()]
    assert header == ["", "hostile pre-trained", "hostile fine-tuned"]
    ev, ft = read(hostile_run / "evaluate" / "eval.json")["models"], read(hostile_run / "finetune" / "eval.json")
    bpb = [fmt(ev["train"]["bits_per_byte"]), fmt(ev["finetune"]["bits_per_byte"])]
    assert row("models", "text val bits per byte")[1:] == bpb
    assert row("evaluation", "bits per byte") == ["bits per byte", *bpb]
    assert row("evaluation", "chat val: loss (nats/token)")[1:3] == [
        fmt(ft["chat_val"]["before"]["loss"]), fmt(ft["chat_val"]["after"]["loss"])]
    assert page.locator("#reading li").count() >= 1
    assert row("evaluation", "hellaswag: acc_norm") == ["hellaswag: acc_norm", "0.3000", "–"]
    assert row("evaluation", "<i>odd</i>: acc") == ["<i>odd</i>: acc", "0.5000", "–"]
    assert row("models", "task hellaswag: acc_norm")[1:] == ["0.3000", "–"]

    # the model's markup is shown as text, not run or fetched
    samples = page.locator("#samples").text_content()
    assert samples.count('<script>alert("x")</script>') == 2
    assert page.locator("#samples script, #samples img, #samples b, #evaluation i").count() == 0
    assert page.locator("nav a").count() == page.locator("section").count()

    # the same watch catches a page that does fetch: the check above can fail
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!DOCTYPE html><img src="http://example.invalid/x.png">')
    _, requests, refused, errors = open_offline(browser, leaky)
    assert refused == ["http://example.invalid/x.png"] and errors
