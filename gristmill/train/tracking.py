"""Metrics tracking: always ``metrics.jsonl``; TensorBoard and MLflow when a recipe asks for them.

The optional backends are imported only when switched on, and a missing package is a ConfigError naming
the extra to install. Only rank 0 creates a tracker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gristmill.core.config import flatten
from gristmill.core.extras import require


class Tracker:
    """Write metric records: ``log(step, {"train/loss": ..})`` appends a JSON line and feeds the backends."""

    def __init__(self, out_dir: Path, *, tensorboard: bool = False, mlflow: bool = False,
                 run_name: str = "train", params: dict[str, Any] | None = None, resume_step: int = 0,
                 key_prefix: str = "train"):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = self._mlflow = None
        if tensorboard:
            require("tensorboard", "tracking", f"{key_prefix}.tensorboard")
            tb = require("torch.utils.tensorboard", "tracking", f"{key_prefix}.tensorboard")
            self._tb = tb.SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
        if mlflow:
            mlf = require("mlflow", "tracking", f"{key_prefix}.mlflow")
            mlf.set_tracking_uri(f"sqlite:///{(Path(out_dir) / 'mlflow.db').resolve()}")
            mlf.set_experiment("gristmill")
            mlf.start_run(run_name=run_name)
            if params:
                mlf.log_params({k: str(v)[:250] for k, v in flatten(params).items()})
            self._mlflow = mlf

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records a crashed attempt wrote after the checkpoint we restart from."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a half-written last line
            if rec.get("step", 0) <= step:
                keep.append(line)
        self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        rec = {"step": step, "time": round(time.time(), 3), **metrics}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)
        if self._mlflow is not None:
            self._mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()
