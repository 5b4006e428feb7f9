"""The job contract (`pft.jobs.specs`, torch-free) and the one entry point that runs any job
(`pft.jobs.runner.run`, torch; imported lazily so that the specs stay torch-free)."""

from pft.jobs.specs import (
    JOB_SPECS,
    FinetuneSpec,
    Hparams,
    JobResult,
    JobSpec,
    PretrainSpec,
    SoupSpec,
    spec_from_dict,
)

__all__ = [
    "JOB_SPECS",
    "FinetuneSpec",
    "Hparams",
    "JobResult",
    "JobSpec",
    "PretrainSpec",
    "SoupSpec",
    "spec_from_dict",
]
