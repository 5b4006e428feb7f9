"""The science CLI: `pft units|strategies|models|angles|rank|soup|pretrain|finetune|...`.

Each module registers its commands on `pft.cli.app.app`; torch is imported inside commands so
that torch-free commands start fast.
"""

from pft.cli import models, rank, reproduce, science, soup, train  # noqa: F401  (register)
from pft.cli.app import app

__all__ = ["app"]
