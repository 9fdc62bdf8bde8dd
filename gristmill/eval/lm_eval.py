"""A Gristmill model as an lm-evaluation-harness model (``pip install 'gristmill[eval]'``).

>>> from gristmill.eval.lm_eval import register
>>> register()                                    # model type "gristmill" in lm-eval's registry
>>> import lm_eval
>>> lm_eval.simple_evaluate(model="gristmill", model_args="pretrained=runs/demo/train/model",
...                         tasks=["hellaswag"], batch_size=8)

``pretrained`` is a model directory or a run directory (its newest model: finetune, train, then base).
Requests are answered by :class:`gristmill.eval.harness.GPTScorer`, the scorer of Gristmill's own harness,
so lm-eval and ``gristmill.eval.harness.run_tasks`` give the same numbers on the same task file.
Importing this module registers nothing; :func:`register` does (and is safe to call again).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gristmill.core.extras import require

require("lm_eval", extra="eval", feature="the lm-evaluation-harness adapter")

from lm_eval.api.model import LM  # noqa: E402

from gristmill.eval.tasks.spec import parse_generation_kwargs  # noqa: E402

MODEL_NAME = "gristmill"


def _flag(value: Any) -> bool:
    """A model_args value as a boolean (lm-eval passes "True", "false", ...)."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


class GristmillLM(LM):
    """lm-eval's three request types on a Gristmill model.

    Model args: ``pretrained`` (model or run directory), ``device`` (default cpu; an unavailable cuda device
    falls back to the CPU, as lm-eval's HF backend does), ``batch_size`` (items per forward pass; "auto"
    means 8), ``bf16`` (transformer blocks under bfloat16 autocast). Or pass a loaded ``model`` and
    ``tokenizer`` directly.
    """

    def __init__(self, pretrained: str | Path | None = None, *, model: Any = None, tokenizer: Any = None,
                 device: str | None = None, batch_size: int | str | None = 8, bf16: bool | str = False,
                 max_batch_size: int | None = None, **unused: Any):
        super().__init__()
        import torch

        from gristmill.eval.harness import GPTScorer
        from gristmill.model.io import load_for_inference, resolve_model_dir
        from gristmill.runtime import resolve_device

        if device and device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda:0 unless told otherwise; its HF backend falls back too
            logging.getLogger(__name__).warning("device %s is not available; running on the CPU", device)
            device = "cpu"
        dev = resolve_device(device or "cpu")
        if model is None:
            if pretrained is None:
                raise ValueError("give pretrained=<model directory> (or a loaded model and tokenizer)")
            model, tokenizer = load_for_inference(resolve_model_dir(Path(pretrained)), dev)
        elif tokenizer is None:
            raise ValueError("a model passed directly needs its tokenizer too")
        size = 8 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        if max_batch_size:
            size = min(size, int(max_batch_size))
        self.scorer = GPTScorer(model, tokenizer, batch_size=size, bf16=_flag(bf16))
        self._device = dev

    @property
    def tokenizer_name(self) -> str:
        return "gristmill"

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        args = [tuple(r.args[:2]) for r in requests]
        out = self.scorer.loglikelihood(args)
        for a, res in zip(args, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", a, res)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        texts = [r.args[0] for r in requests]
        out = self.scorer.loglikelihood_rolling(texts)
        for t, res in zip(texts, out, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (t,), res)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        asks = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1] or {})
            try:
                asks.append((context, parse_generation_kwargs(kwargs)))
            except ValueError as e:
                raise ValueError(f"generation kwargs {kwargs!r}: {e}") from None
        out = self.scorer.generate(asks)
        for r, res in zip(requests, out, strict=True):
            self.cache_hook.add_partial("generate_until", r.args, res)
        return out


def register(name: str = MODEL_NAME) -> type[GristmillLM]:
    """Add :class:`GristmillLM` to lm-eval's model registry as ``name`` (again: no-op)."""
    from lm_eval.api.registry import register_model

    return register_model(name)(GristmillLM)
