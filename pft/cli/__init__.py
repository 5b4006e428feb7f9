"""The science CLI: `pft units|strategies|models|angles|soup|pretrain|finetune|evaluate|reproduce`.

Each module registers its commands on `pft.cli.app.app`; torch is imported inside commands so
that torch-free commands start fast.
"""

from pft.cli import models, reproduce, science, soup, train  # noqa: F401  (register commands)
from pft.cli.app import app

__all__ = ["app"]
