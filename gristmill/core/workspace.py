"""The run workspace: atomic writes, content hashes, and per-stage manifests.

A run lives in ``runs/<name>/``; each stage writes into ``runs/<name>/<stage>/`` and finishes by writing
``manifest.json`` there. The manifest is the completion marker: a stage directory without one is
unfinished (a resumable stage such as ``train`` picks up from what it left). Every file is written to a
temporary name and renamed into place, so a crash never leaves a half-written file under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from gristmill import __version__
from gristmill.errors import InputError

MANIFEST = "manifest.json"
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""A run name is one safe path component: it cannot climb out of ``runs/`` or name a hidden folder."""
SECRET_KEYS = ("api_key", "apikey", "secret", "token", "password")
"""Command-line values under keys that contain these words are never written to disk."""
KEY_LIBRARIES = ("torch", "numpy", "tokenizers", "pydantic", "safetensors", "fastapi")


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kw: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise InputError(f"{path} does not exist") from e
    except ValueError as e:
        raise InputError(f"{path} is not valid JSON ({e})") from e


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    out = {"gristmill": __version__, "python": platform.python_version()}
    for name in KEY_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def describe_outputs(stage_dir: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file a stage wrote (except its manifest and temporaries)."""
    out = {}
    for p in sorted(stage_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith("."):
            out[p.relative_to(stage_dir).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


@dataclass
class StageContext:
    """What a stage function is handed: where to write, where its inputs are, and the run's seed."""

    run_dir: Path
    stage: str
    seed: int
    fingerprint: str = ""
    """The stage's cache key; resumable stages tag partial state with it and ignore state without it."""
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))
    is_main: bool = True
    """False on the other ranks under torchrun: only the main process writes files and logs."""

    @property
    def out_dir(self) -> Path:
        return self.run_dir / self.stage

    def input_dir(self, stage: str) -> Path:
        """The output directory of an upstream stage, which must have finished."""
        d = self.run_dir / stage
        if not (d / MANIFEST).exists():
            raise InputError(
                f"stage '{self.stage}' needs the output of '{stage}', but {d} has no manifest: "
                f"run `gristmill {stage}` (or `gristmill run`) first"
            )
        return d

    def input_manifest(self, stage: str) -> dict[str, Any]:
        return read_json(self.input_dir(stage) / MANIFEST)


def load_manifest(stage_dir: Path) -> dict[str, Any] | None:
    p = Path(stage_dir) / MANIFEST
    if not p.exists():
        return None
    try:
        return read_json(p)
    except InputError:
        return None


def check_run_name(name: str) -> str:
    """The name if it is one safe path component, else a ValueError saying what a name may hold."""
    if not RUN_NAME.match(name or "") or name in (".", ".."):
        raise ValueError(f"run name {name!r} must be one folder name of letters, digits, '.', '_' and '-' "
                         f"(at most 100, not starting with '.' or '-'); it names runs/<name>/")
    return name


def verify_outputs(stage_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Files a manifest lists whose size or sha256 no longer match (missing ones included)."""
    bad = []
    for rel, info in (manifest.get("outputs") or {}).items():
        p = Path(stage_dir) / rel
        try:
            if p.stat().st_size != info.get("bytes") or sha256_file(p) != info.get("sha256"):
                bad.append(rel)
        except OSError:
            bad.append(rel)
    return bad


def verify_model_files(model_dir: Path) -> None:
    """If ``model_dir`` is a stage output (``runs/<name>/<stage>/model``), check its files against the
    stage manifest; an InputError names a file that changed since the stage wrote it."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir.parent)
    if manifest is None:
        return
    prefix = model_dir.name + "/"
    mine = {k: v for k, v in (manifest.get("outputs") or {}).items() if k.startswith(prefix)}
    bad = verify_outputs(model_dir.parent, {"outputs": mine})
    if bad:
        raise InputError(f"{model_dir.parent / bad[0]} does not match the sha256 its stage recorded (the file "
                         f"changed or is corrupt); re-run the stage with `gristmill run <recipe> --force "
                         f"{manifest.get('stage', model_dir.parent.name)}`")


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The command line with secret values replaced: ``--set serve.api_key=x``, ``--api-key x``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        low = arg.lower().replace("-", "_")
        if hide_next:
            out.append("***")
            hide_next = False
        elif "=" in arg and any(k in low.split("=", 1)[0] for k in SECRET_KEYS):
            out.append(arg.split("=", 1)[0] + "=***")
        elif low.startswith("__") and any(k in low for k in SECRET_KEYS):
            out.append(arg)
            hide_next = True
        else:
            out.append(arg)
    return out


def write_manifest(
    stage_dir: Path,
    *,
    stage: str,
    recipe: str,
    fingerprint: str,
    config: Any,
    inputs: dict[str, Any],
    stats: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    manifest = {
        "stage": stage,
        "recipe": recipe,
        "fingerprint": fingerprint,
        "config": config,
        "inputs": inputs,
        "outputs": describe_outputs(stage_dir),
        "stats": stats,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_time_s": round(time.time() - started, 3),
        "versions": library_versions(),
        "command": redact_argv(sys.argv),
    }
    write_json(stage_dir / MANIFEST, manifest)
    return manifest
