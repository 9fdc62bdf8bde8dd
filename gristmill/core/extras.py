"""Optional features behind pip extras: checked when a recipe or command is validated, imported when used.

``require("fastapi", extra="serve", feature="gristmill serve")`` imports and returns the module, or
raises :class:`~gristmill.errors.MissingExtra` naming the pip command. ``check`` only looks the module
up (no import), so a recipe can be validated in milliseconds.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from gristmill.errors import MissingExtra


def available(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check(module: str, extra: str, feature: str) -> None:
    """Raise MissingExtra if ``module`` is not installed."""
    if not available(module):
        raise MissingExtra(feature, extra, module)


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise MissingExtra naming the extra that provides it."""
    check(module, extra, feature)
    try:
        return importlib.import_module(module)
    except ImportError as e:  # found but broken (a missing dependency of its own)
        raise MissingExtra(feature, extra, f"{module} ({e})") from None
