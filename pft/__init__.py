"""pft: the science core of pft-lab, partial fine-tuning of vision transformers.

Implements Ye et al., *Partial Fine-Tuning: A Successor to Full Fine-Tuning for Vision
Transformers* (arXiv 2312.15681). The unit map, the model catalogue and the strategy catalogue
are torch-free (they work on parameter names and shapes); everything that touches weights
imports torch lazily.
"""

from pft.strategies import STRATEGIES, resolve_strategy
from pft.units import Unit, UnitMap, build_unit_map

__all__ = ["STRATEGIES", "Unit", "UnitMap", "build_unit_map", "resolve_strategy"]
