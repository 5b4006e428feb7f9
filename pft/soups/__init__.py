"""Model soups and merges of models fine-tuned from one pre-trained start.

`registry` (torch-free) names the merge methods and their parameters; each method's builder
lives in its own module (`uniform`, `greedy`, `masked`, sharing `averaging`; `task_arithmetic`,
`ties`, `model_stock`, sharing `deltas`, the ingredients' task vectors), and `pipeline`
is the one path that loads ingredients, merges, evaluates and saves a soup, for the CLI, the
job runner and the reproduction study alike. This package's top level stays torch-free.
"""

from pft.soups.registry import MERGE_METHODS, MergeMethod, catalogue, get_method

__all__ = ["MERGE_METHODS", "MergeMethod", "catalogue", "get_method"]
