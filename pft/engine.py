"""The training engine's public API: fine-tune, evaluate and pre-train (see docs/CONTRACTS.md).

The engine runs without the lab; the job runner (`pft.jobs.runner`) wraps these functions for
the worker and passes callbacks (``on_progress``, ``on_epoch``, ``should_cancel``) through.
`train` returns everything a fine-tuning run computed; `finetune` its summary only.
"""

from pft.evaluation import evaluate_checkpoint, evaluate_split
from pft.pretrain import pretrain
from pft.training import Cancelled, TrainedRun, finetune, train

__all__ = [
    "Cancelled",
    "TrainedRun",
    "evaluate_checkpoint",
    "evaluate_split",
    "finetune",
    "pretrain",
    "train",
]
