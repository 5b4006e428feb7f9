"""The training engine on a tiny model: tuned tensors only, callbacks, cancel, resume-after-kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from pft.base_model import build_pretrained
from pft.checkpoint import build_model_from_delta, load_delta
from pft.engine import Cancelled, finetune, train
from pft.errors import PftError
from pft.jobs.specs import FinetuneSpec, Hparams
from pft.model_catalog import TEST_MODEL, unit_map_for
from pft.strategies import resolve_strategy
from pft.training import setup

HP = Hparams(epochs=3, lr=3e-3, batch_size=32, seed=1, head_seed=0)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))


def cfg(strategy="attn_only", hparams=HP, **kw) -> FinetuneSpec:
    return FinetuneSpec(
        model=TEST_MODEL,
        dataset="synthetic",
        strategy=strategy,
        hparams=hparams,
        pretrained=False,
        **kw,
    )


def final_weights(out):
    model, _ = build_model_from_delta(out / "delta.safetensors")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Recorder:
    def __init__(self, cancel_after: int | None = None):
        self.progress, self.epochs, self.polls = [], [], 0
        self.cancel_after = cancel_after

    def on_progress(self, info):
        self.progress.append(info)

    def on_epoch(self, epoch, metrics, angles):
        self.epochs.append((epoch, metrics, angles))

    def should_cancel(self):
        self.polls += 1
        return self.cancel_after is not None and self.polls > self.cancel_after


def test_finetune_writes_outputs_and_reports_progress(tmp_path):
    rec = Recorder()
    out = tmp_path / "run"
    summary = finetune(cfg(shifts=["blur:2"]), out, callbacks=rec)
    assert sorted(p.name for p in out.iterdir()) == [
        "angles.json",
        "delta.safetensors",
        "metrics.json",
    ]
    assert summary["test_acc"] > 0.5  # 4 classes: chance is 0.25; attn_only learns the stripes
    assert set(summary["shifts"]) == {"blur:2"}
    assert [e for e, _, _ in rec.epochs] == [1, 2, 3]
    metrics = rec.epochs[-1][1]
    assert {
        "train_loss",
        "heldout_acc",
        "heldout_loss",
        "test_acc",
        "test_loss",
        "images_per_sec",
    } <= set(metrics)
    last = rec.progress[-1]
    assert last["step"] == last["total_steps"] and last["progress"] == 1.0
    assert all(p["images_per_sec"] > 0 for p in rec.progress)
    angles = json.loads((out / "angles.json").read_text())
    assert [t["epoch"] for t in angles["trajectory"]] == [1, 2, 3]
    units = {u["name"]: u["angle_deg"] for u in angles["units"]}
    assert all(units[f"ATTN.{i}"] > 0 for i in range(4))
    assert all(units[f"FFN.{i}"] == 0 for i in range(4))  # frozen: not moved at all
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test_acc"] == summary["test_acc"]
    # a finished run is not trained twice
    assert finetune(cfg(shifts=["blur:2"]), out, callbacks=Recorder()) == on_disk


@pytest.mark.parametrize(
    "strategy,params",
    [
        ("full", {}),
        ("linear_probe", {}),
        ("ffn_last_half", {}),
        ("custom", {"units": ["ATTN.1", "FFN.3"]}),
    ],
)
def test_delta_holds_exactly_the_tuned_tensors(tmp_path, strategy, params):
    h = Hparams(epochs=1, batch_size=128, lr=1e-3)
    finetune(cfg(strategy, h, strategy_params=params), tmp_path / "run")
    tensors, meta = load_delta(tmp_path / "run" / "delta.safetensors")
    um = unit_map_for(TEST_MODEL, 4)
    expected = resolve_strategy(um, strategy, **params).tensors
    assert set(tensors) == set(expected)
    assert meta["strategy"] == strategy and meta["num_classes"] == 4
    assert meta["base_model"] == TEST_MODEL and meta["pretrained"] is False
    assert meta["data_config"]["input_size"] == [1, 16, 16]
    # every tuned tensor moved; rebuilt frozen tensors equal the pre-trained point
    base = dict(build_pretrained(TEST_MODEL, 4, pretrained=False).named_parameters())
    model, _ = build_model_from_delta(tmp_path / "run")
    for name, p in model.named_parameters():
        moved = not torch.equal(p, base[name])
        assert moved == (name in expected), name


def test_frozen_tensors_get_no_grad_and_no_optimizer_state(tmp_path):
    c = cfg("attn_last_half", Hparams(epochs=1, batch_size=64))
    s = setup(c)
    tuned = set(s.selection.tensors)
    assert {n for n, p in s.model.named_parameters() if p.requires_grad} == tuned
    # cancel after a few steps: the saved state is what the optimizer holds
    with pytest.raises(Cancelled):
        finetune(c, tmp_path / "run", callbacks=Recorder(cancel_after=1))
    state = json.loads((tmp_path / "run" / "state" / "state.json").read_text())
    tensors = load_file(tmp_path / "run" / "state" / state["tensors"])
    assert {k[len("param.") :] for k in tensors if k.startswith("param.")} == tuned
    slots = {k.split(".")[1] for k in tensors if k.startswith("opt.")}
    assert len(slots) == len(tuned)  # AdamW moments only for tuned tensors
    assert state["run"]["step_in_epoch"] == 5 and state["run"]["epoch"] == 0
    assert not (tmp_path / "run" / "delta.safetensors").exists()


def test_cancel_then_resume_matches_uninterrupted(tmp_path):
    h = Hparams(epochs=2, lr=3e-3, batch_size=32, seed=3)
    finetune(cfg("full", h), tmp_path / "straight")
    with pytest.raises(Cancelled):
        finetune(cfg("full", h), tmp_path / "resumed", callbacks=Recorder(cancel_after=3))
    finetune(cfg("full", h), tmp_path / "resumed")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "resumed" / "state").exists()
    # bit-identical, not close: the epoch's loss too (kept as its exact float32 running sum),
    # and the delta files byte for byte
    straight, resumed = (
        json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("straight", "resumed")
    )
    assert [e["train_loss"] for e in resumed["epochs"]] == [
        e["train_loss"] for e in straight["epochs"]
    ]
    delta = "delta.safetensors"
    assert (tmp_path / "straight" / delta).read_bytes() == (
        tmp_path / "resumed" / delta
    ).read_bytes()


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pft.jobs.specs import FinetuneSpec, Hparams
    from pft.engine import finetune

    class KillAfterFirstEpoch:
        def on_epoch(self, epoch, metrics, angles):
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill right after the epoch checkpoint

    cfg = FinetuneSpec.from_dict({cfg!r})
    finetune(cfg, sys.argv[1], callbacks=KillAfterFirstEpoch())
""")


def test_resume_after_kill_gives_the_same_final_weights(tmp_path):
    h = Hparams(epochs=3, lr=3e-3, batch_size=64, seed=5)
    c = cfg("attn_only", h)
    script = KILL_SCRIPT.format(cfg=c.to_dict())
    env = {**os.environ, "PFT_DATA_DIR": os.environ["PFT_DATA_DIR"]}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "killed")],
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr
    state = json.loads((tmp_path / "killed" / "state" / "state.json").read_text())
    assert state["run"]["epoch"] == 1
    assert not (tmp_path / "killed" / "delta.safetensors").exists()
    resumed = finetune(c, tmp_path / "killed")
    straight = finetune(c, tmp_path / "straight")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["test_acc"] for e in resumed["epochs"]] == [e["test_acc"] for e in straight["epochs"]]


KILL_MID_EPOCH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pft.jobs.specs import FinetuneSpec, Hparams
    from pft.engine import finetune

    class KillAfterAMidEpochCheckpoint:
        polls = 0

        def checkpoint_due(self):  # as a worker's timer would: every third poll
            self.polls += 1
            return self.polls % 3 == 0

        def on_checkpoint(self, epoch, step):
            if epoch == 2:  # a hard kill right after a mid-epoch checkpoint of epoch 2
                print(epoch, step, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = FinetuneSpec.from_dict({cfg!r})
    finetune(cfg, sys.argv[1], callbacks=KillAfterAMidEpochCheckpoint())
""")


def test_a_kill_after_a_mid_epoch_checkpoint_resumes_there_bit_identical(tmp_path):
    h = Hparams(epochs=3, lr=3e-3, batch_size=16, seed=4)
    c = cfg("ffn_only", h)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MID_EPOCH_SCRIPT.format(cfg=c.to_dict()), str(tmp_path / "k")],
        env=dict(os.environ),
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr
    epoch, step = map(int, proc.stdout.split())
    state = json.loads((tmp_path / "k" / "state" / "state.json").read_text())["run"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, step) and step > 0
    resumed = train(c, tmp_path / "k")
    straight = train(c, tmp_path / "straight")
    # it went on from the checkpoint's step (mid-epoch), not from the start of epoch 2
    assert (resumed.resumed_from_epoch, resumed.resumed_from_step) == (1, state["global_step"])
    keys = ("train_loss", "heldout_acc", "test_acc", "heldout_loss", "test_loss")
    assert [[e[k] for k in keys] for e in resumed.summary["epochs"]] == [
        [e[k] for k in keys] for e in straight.summary["epochs"]
    ]
    delta = "delta.safetensors"
    assert (tmp_path / "k" / delta).read_bytes() == (tmp_path / "straight" / delta).read_bytes()


def test_seeds_make_runs_repeatable_and_different(tmp_path):
    h1 = Hparams(epochs=1, batch_size=64, seed=1)
    h2 = Hparams(epochs=1, batch_size=64, seed=2)
    finetune(cfg("linear_probe", h1), tmp_path / "a")
    finetune(cfg("linear_probe", h1), tmp_path / "b")
    finetune(cfg("linear_probe", h2), tmp_path / "c")
    a, b, c = (final_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])


def test_bad_input_is_rejected_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(PftError, match="close matches: synthetic"):
        finetune(FinetuneSpec(TEST_MODEL, "synthetc", pretrained=False), out)
    with pytest.raises(PftError, match="unknown model"):
        finetune(FinetuneSpec("pft/vit-mikro", "synthetic"), out)
    with pytest.raises(PftError, match="hparams.lr"):
        finetune(cfg(hparams=Hparams(lr=-1)), out)
    with pytest.raises(PftError, match="unknown strategy"):
        finetune(cfg("attn_onyl"), out)
    with pytest.raises(PftError, match="shift"):
        finetune(cfg(shifts=["fog"]), out)
    assert not out.exists()


def test_a_different_config_in_the_same_folder_is_refused(tmp_path):
    with pytest.raises(Cancelled):
        finetune(cfg(), tmp_path / "run", callbacks=Recorder(cancel_after=1))
    with pytest.raises(PftError, match="different configuration"):
        finetune(cfg("full"), tmp_path / "run")


def test_builtin_backbone_must_be_pretrained_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PFT_SHIPPED_WEIGHTS", "0")  # as if the package shipped no weights
    with pytest.raises(PftError, match="pft pretrain"):
        finetune(FinetuneSpec("pft/vit-tiny-fmnist", "digits"), tmp_path / "run")
