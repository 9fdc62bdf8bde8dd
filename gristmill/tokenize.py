"""tokenize: (being written)."""
from gristmill.config import Config


class TokenizeConfig(Config):
    pass
