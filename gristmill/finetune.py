"""finetune: (being written)."""
from gristmill.config import Config


class FinetuneConfig(Config):
    pass
