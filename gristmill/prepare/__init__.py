"""prepare: (being written)."""
from gristmill.config import Config


class PrepareConfig(Config):
    pass
