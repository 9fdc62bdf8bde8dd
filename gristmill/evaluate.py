"""evaluate: (being written)."""
from gristmill.config import Config


class EvaluateConfig(Config):
    pass
