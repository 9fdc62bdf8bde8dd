"""Errors a person can act on.

A ``GristmillError`` carries one sentence that names the key, file or record at fault and what to do
about it. The CLI prints it on one line and exits with code 2; anything else is a bug and keeps its
traceback.
"""


class GristmillError(Exception):
    """A problem with the user's config or input, explained in one sentence."""


class ConfigError(GristmillError):
    """A recipe or override is invalid (unknown key, wrong type, bad value)."""


class InputError(GristmillError):
    """An input path, file or upstream stage output is missing or unreadable."""


class MissingExtra(ConfigError):
    """A feature the recipe or command uses needs an optional extra that is not installed."""

    def __init__(self, feature: str, extra: str, module: str):
        super().__init__(f"{feature} needs the '{extra}' extra ({module} is not installed): "
                         f"pip install 'gristmill[{extra}]'")
        self.extra = extra
