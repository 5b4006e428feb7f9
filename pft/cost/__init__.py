"""The cost preview: predicted training time and peak memory of a run before it is launched.

`pft.cost.calibrate` (torch) measures a few steps of the full, prefix and suffix paths of one
model on one device; `pft.cost.cache` keeps those calibrations in the data folder;
`pft.cost.predict` (torch-free, pure) turns a calibration, a strategy's selection and a run's
shape into seconds and megabytes. The CLI (`pft strategies --dataset --epochs`), the job runner
(the ``calibrate`` job kind) and the API (``GET /cost``) all go through these three.
"""

from pft.cost.predict import Prediction, RunShape, predict, predict_strategies

__all__ = ["Prediction", "RunShape", "predict", "predict_strategies"]
