"""report: (being written)."""
from gristmill.config import Config


class ReportConfig(Config):
    pass
