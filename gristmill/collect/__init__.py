"""collect: read sources into Documents with provenance. (Being written.)"""
from gristmill.config import Config


class CollectConfig(Config):
    pass
