"""gristmill chat: a real subprocess fed lines on stdin; answers stream, the conversation is kept, /reset
and unknown commands behave, Ctrl-C stops an answer without ending the session, end of input quits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gristmill.formats.chat import encode_chat
from gristmill.inference.sampling import SamplingParams
from gristmill.inference.stream import generate
from gristmill.serve.chat_cli import fit_history

ROOT = Path(__file__).resolve().parents[2]


def chat_process(model_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    code = "import sys; from gristmill.cli import main; sys.exit(main(['chat', *sys.argv[1:]]))"
    # Ctrl-C as in a terminal: a test run started in the background (`make test &`) inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler at all
    return subprocess.Popen([sys.executable, "-c", code, str(model_dir), "--device", "cpu", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_piped_conversation_keeps_history_and_resets(tiny_model_dir: Path, loaded):
    model, tok = loaded
    proc = chat_process(tiny_model_dir, "--temperature", "0", "--max-tokens", "6", "--weights", "fp32")
    out, err = proc.communicate("Who is Hamlet?\nAnd Ophelia?\n/bogus\n\n/reset\nWho is Hamlet?\n", timeout=120)
    assert proc.returncode == 0, err
    answers = [part.split("\nyou> ")[0] for part in out.split("assistant> ")[1:]]  # answer, newline, prompt

    def expected(messages: list[dict[str, str]]) -> str:
        ids, _ = encode_chat(tok, messages, add_generation_prompt=True)
        return generate(model, tok, ids, SamplingParams(max_new_tokens=6, temperature=0)).text

    first = expected([{"role": "user", "content": "Who is Hamlet?"}])
    second = expected([{"role": "user", "content": "Who is Hamlet?"}, {"role": "assistant", "content": first},
                       {"role": "user", "content": "And Ophelia?"}])
    assert answers == [first, second, first]
    assert "unknown command /bogus" in out and "(new conversation)" in out and out.startswith("chatting with")


@pytest.mark.slow
def test_compiled_decode_from_the_command_line(tiny_model_dir: Path, tmp_path: Path):
    """``--compile`` answers as the eager engine does in the same weight format; with fp32 weights, or
    without a C++ compiler, it is a one-line error."""
    answers = []
    for flags in ((), ("--compile",)):
        proc = chat_process(tiny_model_dir, "--temperature", "0", "--max-tokens", "6", "--weights", "bf16", *flags)
        out, err = proc.communicate("Who is Hamlet?\n", timeout=300)
        assert proc.returncode == 0, err
        answers.append(out.split("assistant> ")[1].split("\nyou> ")[0])
    assert answers[0] == answers[1] and answers[0].strip()
    proc = chat_process(tiny_model_dir, "--weights", "fp32", "--compile")
    out, err = proc.communicate("", timeout=120)
    assert proc.returncode == 2 and err.strip().splitlines() == [
        "gristmill: error: compile needs weights bf16, int8 or int4 (fp32 decodes through the model's own modules); set "
        "weights, or leave compile off"]
    proc = chat_process(tiny_model_dir, "--weights", "bf16", "--compile",
                        env={"CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)})
    out, err = proc.communicate("", timeout=120)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("gristmill: error: compiling the decode step failed") and "C++ compiler" in err


def test_ctrl_c_stops_the_answer_and_the_session_goes_on(endless_dir: Path):
    # fp32: the endless model never picks a stop token only with its own weights (a quantised head may)
    proc = chat_process(endless_dir, "--temperature", "0", "--max-tokens", "4000", "--weights", "fp32")
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)
    reader.start()
    try:
        proc.stdin.write("Tell me everything.\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while len("".join(out).partition("assistant> ")[2]) < 20:  # the answer is streaming
            assert time.monotonic() < deadline and proc.poll() is None, "".join(out)
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        while "[stopped]" not in "".join(out) or not "".join(out).endswith("you> "):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(out)
            if "[stopped]" not in "".join(out) and time.monotonic() - sent > 3:
                proc.send_signal(signal.SIGINT)  # pressed again, as a user would when the first one is missed
                sent = time.monotonic()
            time.sleep(0.02)
        proc.stdin.write("/exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    assert "".join(out).count("you> ") == 2


def test_old_turns_are_dropped_to_fit_the_context(loaded):
    _, tok = loaded
    turns = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        turns += [{"role": "user", "content": f"Question {i} about Hamlet?"},
                  {"role": "assistant", "content": f"Answer {i}."}]
    turns.append({"role": "user", "content": "Last one?"})
    ids, dropped = fit_history(tok, turns, 40)
    assert len(ids) <= 40 and dropped % 2 == 0 and dropped > 0
    kept = [turns[0]] + turns[1 + dropped:]
    assert ids == encode_chat(tok, kept, add_generation_prompt=True)[0]
    with pytest.raises(Exception, match="shorten it"):
        fit_history(tok, [{"role": "user", "content": "word " * 100}], 40)
