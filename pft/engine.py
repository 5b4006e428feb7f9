"""The training engine's public API: fine-tune, evaluate and pre-train (see docs/CONTRACTS.md).

The engine runs without the backend; the worker wraps these functions and passes callbacks
(``on_progress``, ``on_epoch``, ``should_cancel``) to report progress and cancel cooperatively.
"""

from pft.evaluation import evaluate_checkpoint, evaluate_split
from pft.pretrain import pretrain
from pft.training import Cancelled, finetune

__all__ = ["Cancelled", "evaluate_checkpoint", "evaluate_split", "finetune", "pretrain"]
