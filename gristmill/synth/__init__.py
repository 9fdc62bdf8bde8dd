"""synth: (being written)."""
from gristmill.config import Config


class SynthConfig(Config):
    pass
