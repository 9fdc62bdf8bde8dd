"""Resumable checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a directory ``checkpoints/step_000123/`` holding

- ``model.safetensors``: the weights;
- ``state.safetensors``: every other tensor (optimiser moments, RNG states);
- ``state.json``: the stage fingerprint, the step, the sha256 of both tensor files, and the rest of the
  state (optimiser hyper-parameters, schedule position, data loader position, trainer counters), with
  tensors replaced by references into ``state.safetensors``.

It is written into a hidden temporary directory and renamed into place, so a crash leaves either the
whole checkpoint or nothing under the final name. On load, the newest checkpoint whose fingerprint
matches and whose files hash as recorded wins; a corrupt one is skipped with a warning.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gristmill.core.workspace import sha256_file, write_json

STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE, TENSORS_FILE, STATE_FILE = "model.safetensors", "state.safetensors", "state.json"


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON skeleton of ``obj`` with tensors/arrays moved into ``tensors`` (keys and types preserved)."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: _join(v, tensors) for k, v in obj["__dict__"]}
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(path: Path, model_state: dict[str, torch.Tensor], state: dict[str, Any],
                     fingerprint: str) -> Path:
    """Atomically write a checkpoint directory at ``path``.

    ``model_state``: the model's state dict; ``state``: anything else (nested dicts/lists/tuples of
    JSON values, tensors and numpy arrays), e.g. ``{"step": 10, "optimizer": opt.state_dict()}``.
    """
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, "s", tensors)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}, str(tmp / MODEL_FILE))
    save_file(tensors, str(tmp / TENSORS_FILE))
    for name in (MODEL_FILE, TENSORS_FILE):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    write_json(tmp / STATE_FILE, {
        "fingerprint": fingerprint,
        "sha256": {MODEL_FILE: sha256_file(tmp / MODEL_FILE), TENSORS_FILE: sha256_file(tmp / TENSORS_FILE)},
        "state": skeleton,
    })
    _fsync_dir(tmp)
    if path.exists():  # re-writing the same step (e.g. the final checkpoint after a resume)
        old = path.parent / f".old-{path.name}-{os.getpid()}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)
    _fsync_dir(path.parent)
    return path


@dataclass
class Checkpoint:
    path: Path
    model_state: dict[str, torch.Tensor]
    state: dict[str, Any]


def read_checkpoint(path: Path, fingerprint: str | None = None) -> Checkpoint:
    """Read and verify one checkpoint; ValueError says what is wrong with it."""
    path = Path(path)
    try:
        meta = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{STATE_FILE} unreadable ({e})") from e
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise ValueError("it belongs to a different config or input (fingerprint mismatch)")
    for name, digest in meta.get("sha256", {}).items():
        if not (path / name).is_file():
            raise ValueError(f"{name} is missing")
        if sha256_file(path / name) != digest:
            raise ValueError(f"{name} does not match its checksum")
    try:
        model_state = load_file(str(path / MODEL_FILE))
        tensors = load_file(str(path / TENSORS_FILE))
    except Exception as e:  # safetensors raises several types for truncated files
        raise ValueError(f"tensor files unreadable ({e})") from e
    return Checkpoint(path, model_state, _join(meta["state"], tensors))


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete (renamed-into-place) step checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(root: Path, fingerprint: str | None, warn: Callable[[str], None] = print
                      ) -> Checkpoint | None:
    """The newest valid checkpoint under ``root`` for ``fingerprint``; bad ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(root)):
        try:
            return read_checkpoint(path, fingerprint)
        except ValueError as e:
            warn(f"warning: skipping checkpoint {path.name} (step {step}): {e}; trying an older one")
    return None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints, and leftovers of interrupted writes."""
    ckpts = list_checkpoints(root)
    for _, path in ckpts[:-keep] if keep > 0 else ckpts:
        shutil.rmtree(path, ignore_errors=True)
    for p in Path(root).glob(".tmp-*"):
        if p.is_dir() and not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)
    for p in Path(root).glob(".old-*"):
        shutil.rmtree(p, ignore_errors=True)


def step_path(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"
