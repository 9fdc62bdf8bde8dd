"""The whole pipeline: the `quick` recipe through every stage, cached re-runs, then the served model."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gristmill.stages import STAGE_NAMES

pytestmark = pytest.mark.slow
RUN_STAGES = [s for s in STAGE_NAMES if s != "base"]  # quick imports no pretrained model


def gristmill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "gristmill", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("e2e")
    proc = gristmill("run", "quick", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd, cwd / "runs" / "quick", proc


def test_every_stage_writes_a_manifest_with_lineage(quick_run):
    _, run_dir, _ = quick_run
    assert not (run_dir / "base").exists()
    for stage in RUN_STAGES:
        m = json.loads((run_dir / stage / "manifest.json").read_text())
        assert m["stage"] == stage and m["fingerprint"]
        assert m["outputs"], f"{stage} recorded no outputs"
        for rel, info in m["outputs"].items():
            assert (run_dir / stage / rel).stat().st_size == info["bytes"]
            assert len(info["sha256"]) == 64
        assert "torch" in m["versions"] and "gristmill" in m["versions"]
        assert m["wall_time_s"] >= 0
    # lineage: each stage records the manifests of the stages it read
    train = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert train["inputs"]["upstream"]["tokenize"]
    collect = json.loads((run_dir / "collect" / "manifest.json").read_text())
    assert any(p.endswith(".bz2") for p in collect["inputs"]["files"])


def test_summary_names_model_report_and_serve_command(quick_run):
    _, run_dir, proc = quick_run
    assert "bits per byte" in proc.stdout
    assert "report.md" in proc.stdout
    assert f"gristmill serve {run_dir.relative_to(run_dir.parent.parent)}" in proc.stdout
    evs = json.loads((run_dir / "evaluate" / "eval.json").read_text())["models"]
    assert set(evs) == {"train", "finetune"}
    ev = evs["train"]
    assert 0 < ev["bits_per_byte"] < 16
    # one metric on one token set everywhere: the base model's whole-split bits per byte is the same
    # number in train's stats, evaluate's eval.json and finetune's "before"
    train = json.loads((run_dir / "train" / "manifest.json").read_text())["stats"]
    ft = json.loads((run_dir / "finetune" / "manifest.json").read_text())["stats"]
    assert abs(ev["bits_per_byte"] - train["val_bits_per_byte"]) < 1e-4 and ev["tokens"] == train["val_tokens"]
    assert evs["finetune"]["tokens"] == ev["tokens"]  # the fine-tuned model read the same text, same tokenizer
    assert ft["lm_val_tokens"] == train["val_tokens"]
    assert abs(ft["lm_val_bpb_before"] - train["val_bits_per_byte"]) < 1e-4
    assert f"pre-trained model validation bits per byte {train['val_bits_per_byte']:.3f}" in proc.stdout
    assert f"({ft['lm_val_bpb_before']:.3f} before fine-tuning, same tokens)" in proc.stdout
    # fine-tuning's own clock fits inside the stage's wall time
    ft_manifest = json.loads((run_dir / "finetune" / "manifest.json").read_text())
    assert ft["train_seconds"] <= ft_manifest["wall_time_s"]
    report = (run_dir / "report" / "report.md").read_text()
    assert "bits per byte" in report.lower()


def test_second_run_is_cached_and_force_reruns_downstream(quick_run):
    cwd, _, _ = quick_run
    t0 = time.time()
    again = gristmill("run", "quick", cwd=cwd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert time.time() - t0 < 30
    for stage in RUN_STAGES:
        assert f"[{stage}] up to date, skipped" in again.stderr
    forced = gristmill("run", "quick", "--force", "finetune", cwd=cwd)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "[train] up to date, skipped" in forced.stderr
    assert "[finetune] running (forced)" in forced.stderr
    assert "[report] running (forced)" in forced.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_model_answers_over_http(quick_run):
    cwd, run_dir, _ = quick_run
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gristmill", "serve", str(run_dir), "--port", str(port)],
        cwd=cwd, env={**os.environ, "GRISTMILL_API_KEY": "sekrit"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.time() < deadline, "server did not come up in 60 s"
            time.sleep(0.3)
        headers = {"Authorization": "Bearer sekrit"}
        assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 401
        models = httpx.get(f"{base}/v1/models", headers=headers, timeout=10).json()
        assert models["data"][0]["id"] == "quick"
        body = {"model": "quick", "messages": [{"role": "user", "content": "What is Hamlet?"}],
                "max_tokens": 12, "temperature": 0}
        r = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] in ("stop", "length")
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "To be", "max_tokens": 8, "temperature": 0},
                       headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 8
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def test_show_docs_prints_counts_and_documents_of_the_store(quick_run):
    cwd, run_dir, _ = quick_run
    out = gristmill("show-docs", str(run_dir), "collect", "-n", "1", cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert "documents: 14 documents in 2 shard(s); by source: wikipedia 12, shakespeare 2" in out.stdout
    assert "quarantine:" in out.stdout and "redirect" in out.stdout and "licence CC BY-SA 3.0" in out.stdout
    out = gristmill("show-docs", str(run_dir), "prepare", "--split", "dropped", cwd=cwd)
    assert out.returncode == 0 and "train:" in out.stdout and "val:" in out.stdout, out.stderr
    bad = gristmill("show-docs", str(run_dir), "train", cwd=cwd)
    assert bad.returncode == 2 and "show-docs reads collect or prepare" in bad.stderr
