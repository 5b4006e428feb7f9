"""The ``rank`` job kind (`pft.jobs.specs.RankSpec`, the runner's ``_rank``): its spec round
trip, and a run that scores exactly what `pft rank --json` prints for the same seed, with
progress and cancellation through the job callbacks."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from contract.api import RankScores
from contract.vocab import JobKind
from lab.cli import app
from pft.criteria.registry import CRITERIA, get_criterion, get_job_criterion, job_criteria
from pft.errors import PftError
from pft.jobs.runner import RANK_FILE, RUNNERS, run
from pft.jobs.specs import JOB_SPECS, RankSpec, spec_from_dict
from pft.model_catalog import TEST_MODEL, unit_map_for
from pft.training import Cancelled

FISHER, GRADIENT_NORM = "fisher", "gradient_norm"
DATASET = "synthetic"


@pytest.fixture(autouse=True)
def one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(criterion: str = FISHER, seed: int = 1, **params) -> RankSpec:
    return RankSpec(
        model=TEST_MODEL,
        dataset=DATASET,
        criterion=criterion,
        params=get_criterion(criterion).validate({"batches": 2, **params}),
        seed=seed,
    )


class Callbacks:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.reports: list[dict] = []
        self.cancel_after = cancel_after

    def on_progress(self, info: dict) -> None:
        self.reports.append(info)

    def should_cancel(self) -> bool:
        return self.cancel_after is not None and len(self.reports) >= self.cancel_after


def test_the_rank_kind_is_one_spec_and_one_runner():
    assert JOB_SPECS[JobKind.RANK] is RankSpec and JobKind.RANK in RUNNERS
    s = spec(GRADIENT_NORM, seed=7, batch_size=8)
    d = s.to_dict()
    assert d == {
        "model": TEST_MODEL,
        "dataset": DATASET,
        "criterion": GRADIENT_NORM,
        "params": {"batches": 2, "batch_size": 8},
        "seed": 7,
        "pretrained": True,
        "model_overrides": {},
    }
    assert spec_from_dict("rank", json.loads(json.dumps(d))) == s
    with pytest.raises(PftError, match="a rank spec has no field 'k'; accepted: criterion"):
        spec_from_dict("rank", {**d, "k": 2})
    with pytest.raises(PftError, match="rank spec is incomplete"):
        spec_from_dict("rank", {"model": TEST_MODEL})


def test_only_criteria_without_a_reference_run_as_jobs():
    assert job_criteria() == [n for n, c in CRITERIA.items() if not c.needs_reference]
    assert {FISHER, GRADIENT_NORM, "short_angle"} <= set(job_criteria())
    assert "angle" not in job_criteria()  # its scores are a finished full run's angles
    with pytest.raises(PftError, match="not run as a rank job") as exc:
        get_job_criterion("angle")
    assert exc.value.field == "criterion"
    assert all(name in str(exc.value) for name in job_criteria())
    with pytest.raises(PftError, match="close matches: fisher") as exc:
        get_job_criterion("fishr")
    assert exc.value.field == "criterion"


def test_a_rank_job_scores_what_pft_rank_prints_for_the_seed(tmp_path):
    callbacks = Callbacks()
    result = run(spec(seed=1), tmp_path / "job", callbacks, device="cpu")
    summary = RankScores.model_validate(result.summary)
    um = unit_map_for(TEST_MODEL, 4)
    assert [u.name for u in summary.units] == um.unit_names
    assert [u.group for u in summary.units] == [u.group for u in um.units]
    assert (summary.criterion, summary.seed, summary.device) == (FISHER, 1, "cpu")
    assert summary.params == {"batches": 2, "batch_size": 32}  # the registry's default filled
    assert summary.seconds > 0
    # The artifact is the `pft rank --json` document.
    saved = json.loads((tmp_path / "job" / RANK_FILE).read_text())
    assert result.artifacts == {"scores": RANK_FILE}
    assert saved == {k: result.summary[k] for k in ("criterion", "units", "seconds")}
    assert not result.epochs and not result.angles
    # Progress: one report per batch.
    assert [(r["step"], r["total_steps"]) for r in callbacks.reports] == [(1, 2), (2, 2)]
    assert callbacks.reports[-1]["progress"] == 1.0

    args = ["rank", "--model", TEST_MODEL, "--dataset", DATASET, "--criterion", FISHER]
    cli = CliRunner().invoke(app, [*args, "--batches", "2", "--seed", "1", "--json"])
    assert cli.exit_code == 0, cli.output
    printed = json.loads(cli.stdout)
    assert printed["units"] == result.summary["units"]  # same numbers, same order

    again = run(spec(seed=1), tmp_path / "again", device="cpu")
    assert again.summary["units"] == result.summary["units"]
    other = run(spec(seed=2), tmp_path / "other", device="cpu")
    assert other.summary["units"] != result.summary["units"]


def test_a_cancel_stops_the_criterion_between_batches(tmp_path):
    callbacks = Callbacks(cancel_after=1)
    with pytest.raises(Cancelled):
        run(spec(GRADIENT_NORM, batches=3), tmp_path / "job", callbacks, device="cpu")
    assert len(callbacks.reports) == 1
    assert not (tmp_path / "job" / RANK_FILE).exists()


def test_a_stored_spec_is_checked_again_by_the_runner(tmp_path):
    bad = RankSpec(model=TEST_MODEL, dataset=DATASET, criterion=FISHER, params={"batches": 0})
    with pytest.raises(PftError, match="batches must be an integer >= 1") as exc:
        run(bad, tmp_path / "job", device="cpu")
    assert exc.value.field == "batches"
