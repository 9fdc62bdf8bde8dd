"""serve: (being written)."""
from gristmill.config import Config


class ServeConfig(Config):
    pass
