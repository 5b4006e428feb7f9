"""`pft.jobs.runner.run`: one entry point per job spec, returning everything the run computed
(full angle rows, trajectory, artifacts, soup trace), and the failure helpers the worker uses."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from typer.testing import CliRunner

from contract.api import AngleRow
from contract.vocab import AngleScope
from pft.checkpoint import load_delta
from pft.cli import app
from pft.errors import PftError
from pft.jobs.runner import check_resume_state, completed_epochs, describe_failure, run
from pft.jobs.specs import FinetuneSpec, Hparams, SoupSpec
from pft.model_catalog import TEST_MODEL
from pft.soups.registry import MERGE_METHODS

FAST = Hparams(epochs=1, lr=3e-3, batch_size=128, seed=0, head_seed=0)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))


def spec(strategy: str = "attn_only", seed: int = 0, **kw) -> FinetuneSpec:
    return FinetuneSpec(
        model=TEST_MODEL,
        dataset="synthetic",
        strategy=strategy,
        hparams=Hparams(**{**FAST.to_dict(), "seed": seed}),
        pretrained=False,
        **kw,
    )


class Recorder:
    def __init__(self):
        self.epochs = []

    def on_epoch(self, epoch, metrics, angles):
        self.epochs.append((epoch, metrics, angles))


def test_finetune_returns_full_angle_rows(tmp_path):
    rec = Recorder()
    result = run(spec(), tmp_path / "job", rec, device="cpu")
    assert result.artifacts == {
        "delta": "delta.safetensors",
        "metrics": "metrics.json",
        "angles": "angles.json",
    }
    assert all((tmp_path / "job" / rel).is_file() for rel in result.artifacts.values())
    assert result.summary["resumed_from_epoch"] == 0
    assert [e["epoch"] for e in result.epochs] == [1] and result.soup is None
    rows = [AngleRow.model_validate(r) for r in result.angles]
    units = [r for r in rows if r.scope == AngleScope.UNIT]
    tensors = [r for r in rows if r.scope == AngleScope.TENSOR]
    assert len(units) == 8 and tensors
    assert all(r.group in ("ATTN", "FFN") and r.block is not None for r in units)
    assert all(r.rel_change is not None and r.unit == r.name for r in units)
    qkv = next(r for r in tensors if r.name == "blocks.2.attn.qkv.weight")
    assert (qkv.unit, qkv.group, qkv.block, qkv.part) == ("ATTN.2", "ATTN", 2, "qkv")
    assert {u.name: u.angle_deg for u in units}["FFN.0"] == 0  # frozen by attn_only
    # the per-epoch rows: units and tensors on every epoch, units in the trajectory
    ((epoch, metrics, epoch_rows),) = rec.epochs
    assert epoch == 1 and "test_acc" in metrics
    assert {r["scope"] for r in epoch_rows} == {"unit", "tensor"}
    assert [r["name"] for r in result.trajectory[1]] == [u.name for u in units]
    assert all(r["group"] and r["block"] is not None for r in result.trajectory[1])
    # a redelivered job whose run already finished returns the same results, untrained
    again = run(spec(), tmp_path / "job", device="cpu")
    assert again.angles == result.angles and again.trajectory == result.trajectory


@pytest.fixture(scope="module")
def ingredients(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingredients")
    mp = pytest.MonkeyPatch()
    mp.setenv("PFT_DATA_DIR", str(root / "data"))
    try:
        paths = {}
        for job_id, seed in ((11, 1), (12, 2), (13, 3)):
            run(spec("full", seed), root / str(job_id), device="cpu")
            paths[job_id] = root / str(job_id) / "delta.safetensors"
        yield paths
    finally:
        mp.undo()


@pytest.mark.parametrize("method", sorted(MERGE_METHODS))
def test_cli_and_runner_build_the_same_soup(tmp_path, ingredients, method):
    ids = list(ingredients)
    result = run(
        SoupSpec(method=method, ingredients=ids, shifts=["blur"]),
        tmp_path / "job",
        device="cpu",
        inputs=ingredients,
    )
    assert result.artifacts == {"soup": "delta.safetensors"}
    out = tmp_path / "cli.safetensors"
    r = CliRunner().invoke(
        app,
        ["soup", method, *map(str, ingredients.values()), "--out", str(out), "--shift", "blur"]
        + ["--dataset", "synthetic", "--device", "cpu", "--json"],
    )
    assert r.exit_code == 0, r.output
    cli = json.loads(r.stdout)
    for key in ("test_acc", "test_loss", "heldout_acc", "shifts", "tuned_params"):
        assert cli[key] == result.summary[key], key
    assert [ids[i] for i in cli["selected"]] == result.summary["selected"]
    runner_soup, runner_meta = load_delta(tmp_path / "job" / "delta.safetensors")
    cli_soup, cli_meta = load_delta(out)
    assert runner_soup.keys() == cli_soup.keys()
    for name in runner_soup:
        torch.testing.assert_close(runner_soup[name], cli_soup[name])
    assert runner_meta["strategy"] == cli_meta["strategy"] == f"soup:{method}"
    assert runner_meta["strategy_params"]["ingredients"] == ids
    assert result.soup["score_in"] == result.summary["test_acc"]
    assert result.soup["scores_out"] == {"blur": result.summary["shifts"]["blur"]["acc"]}
    for t in result.soup["trace"]:  # decisions name the ingredient jobs
        assert t["job_id"] == ids[t["ingredient"]]
    if MERGE_METHODS[method].needs_heldout:  # a choice made on held-out: recorded
        assert result.soup["trace"] or result.summary["mixing"]["grid"]
    if result.soup["trace"]:  # a method that chose its ingredients: one decision each
        assert len(result.soup["trace"]) == len(ids) and result.soup["trace"][0]["accepted"]


def test_soup_without_an_ingredient_checkpoint_is_refused(tmp_path, ingredients):
    first = next(iter(ingredients))
    method = next(iter(MERGE_METHODS))
    with pytest.raises(PftError, match="has no delta checkpoint"):
        run(
            SoupSpec(method=method, ingredients=[first, 99]),
            tmp_path / "job",
            inputs={first: ingredients[first]},
        )


def test_resume_state_is_validated_and_counted(tmp_path):
    out = tmp_path / "job"
    assert completed_epochs(out) == 0
    state = out / "state"
    state.mkdir(parents=True)
    (state / "tensors-3.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    (state / "state.json").write_text(
        json.dumps({"tensors": "tensors-3.safetensors", "run": {"epoch": 2}})
    )
    assert completed_epochs(out) == 2
    with pytest.raises(PftError, match="corrupt checkpoint"):
        check_resume_state(out)
    assert not state.exists() and (out / "state.corrupt").is_dir()
    assert completed_epochs(out) == 0


def test_failures_are_described_for_users():
    s = spec()
    assert describe_failure(PftError("bad k"), s, "cpu") == "bad k"
    oom = describe_failure(RuntimeError("CUDA out of memory. Tried"), s, "cuda:0")
    assert "out of memory on cuda:0" in oom and "batch_size (now 128)" in oom
    full = describe_failure(OSError(errno.ENOSPC, "No space left on device"), s, "cpu")
    assert "disk full" in full
    assert "file not found: x.bin" in describe_failure(FileNotFoundError(2, "gone", "x.bin"))
    assert describe_failure(ValueError("boom")).startswith("internal error (ValueError): boom")


def test_pretrain_installs_the_backbone_into_the_data_folder(tmp_path, monkeypatch):
    import pft.pretrain
    from pft.jobs.specs import PretrainSpec
    from pft.model_catalog import BUILTIN_BACKBONE
    from pft.model_factory import builtin_weights_path

    monkeypatch.setattr(pft.pretrain, "PRETRAIN_DATASET", "synthetic")  # offline stand-in
    rec = Recorder()
    result = run(PretrainSpec(epochs=1, subset=64), tmp_path / "job", rec, device="cpu")
    installed = builtin_weights_path(BUILTIN_BACKBONE)
    assert result.summary["installed"] == str(installed) and installed.is_file()
    assert (installed.parent / "model.json").is_file()
    for rel in result.artifacts.values():
        assert (tmp_path / "job" / rel).is_file()
    assert [e["epoch"] for e in result.epochs] == [1] and [e for e, _, _ in rec.epochs] == [1]
    assert not (tmp_path / "job" / "run").exists()  # the resumable work folder is cleared
