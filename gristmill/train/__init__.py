"""train: (being written)."""
from gristmill.config import Config


class TrainConfig(Config):
    pass
