"""Frozen-prefix caching: a cached run ends bitwise where the uncached run of the same config ends
(CPU, fp32), and the cache is used only where it is valid, saying so in the summary."""

from __future__ import annotations

import json

import pytest
import torch

from pft.checkpoint import build_model_from_delta
from pft.engine import Cancelled, finetune
from pft.errors import PftError
from pft.jobs.runner import run
from pft.jobs.specs import FinetuneSpec, Hparams
from pft.model_catalog import TEST_MODEL
from pft.prefix_cache import CACHE_DIR
from pft.training import setup, train_mode

# drop-path and dropout on: frozen blocks must be deterministic in both paths for them to agree
DROPS = {"drop_path_rate": 0.2, "drop_rate": 0.1}
FIELDS = {"used", "blocks", "images", "bytes", "seconds", "storage"}


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))


def cfg(strategy, params=None, overrides=DROPS, **hp) -> FinetuneSpec:
    h = {"epochs": 2, "lr": 3e-3, "batch_size": 48, "seed": 1, "augment": False} | hp
    return FinetuneSpec(
        model=TEST_MODEL,
        dataset="synthetic",
        strategy=strategy,
        strategy_params=params or {},
        hparams=Hparams(**h),
        pretrained=False,
        model_overrides=dict(overrides),
    )


def weights(out):
    model, _ = build_model_from_delta(out / "delta.safetensors")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class CancelAfter:
    def __init__(self, polls: int):
        self.polls, self.limit = 0, polls

    def should_cancel(self):
        self.polls += 1
        return self.polls > self.limit


@pytest.mark.parametrize(
    "strategy,params,blocks",
    [
        ("blocks_last_half", {}, 2),
        ("linear_probe", {}, 4),
        ("custom", {"units": ["FFN.1", "ATTN.3"]}, 1),
    ],
)
def test_cached_and_uncached_runs_end_with_the_same_weights(tmp_path, strategy, params, blocks):
    cached = finetune(cfg(strategy, params), tmp_path / "cached")
    plain = finetune(cfg(strategy, params, prefix_cache=False), tmp_path / "plain")
    info = cached["prefix_cache"]
    assert FIELDS <= set(info) and info["used"] is True
    assert info["blocks"] == blocks and info["features"] == (strategy == "linear_probe")
    assert info["images"] == 640 and info["splits"] == ["train", "heldout", "test"]
    assert info["bytes"] > 0 and info["seconds"] > 0 and info["storage"] == "host"
    assert plain["prefix_cache"] == {
        "used": False,
        "reason": "disabled (hparams.prefix_cache is false)",
    }
    # bitwise on CPU (fp32): same data order, head init, suffix RNG draws and eval batches
    assert same(weights(tmp_path / "cached"), weights(tmp_path / "plain"))
    assert cached["epochs"][-1]["train_loss"] == plain["epochs"][-1]["train_loss"]
    assert cached["test_acc"] == plain["test_acc"] and cached["test_loss"] == plain["test_loss"]
    assert not (tmp_path / "cached" / CACHE_DIR).exists()


def test_augmentation_on_never_uses_the_cache(tmp_path):
    on = finetune(cfg("blocks_last_half", augment=True), tmp_path / "on")
    assert on["prefix_cache"]["used"] is False
    assert "augmentation on" in on["prefix_cache"]["reason"]
    finetune(cfg("blocks_last_half", augment=True, prefix_cache=False), tmp_path / "on_plain")
    finetune(cfg("blocks_last_half"), tmp_path / "off")
    assert same(weights(tmp_path / "on"), weights(tmp_path / "on_plain"))
    # augmentation really changed the inputs: no cached (fixed) tokens stood in for them
    assert not same(weights(tmp_path / "on"), weights(tmp_path / "off"))


@pytest.mark.parametrize(
    "strategy,params,reason",
    [
        ("full", {}, "the strategy tunes the stem or final norm"),
        ("attn_first_half", {}, "the strategy tunes block 0"),
        ("custom", {"units": ["FFN.0", "FFN.3"]}, "the strategy tunes block 0"),
    ],
)
def test_runs_that_tune_block_0_or_the_stem_are_not_cached(tmp_path, strategy, params, reason):
    summary = finetune(cfg(strategy, params, epochs=1), tmp_path / "run")
    assert summary["prefix_cache"]["used"] is False
    assert summary["prefix_cache"]["reason"].startswith(reason)


def test_frozen_blocks_and_stem_are_deterministic_while_training():
    s = setup(cfg("blocks_last_half"))
    train_mode(s.model, s.frozen)
    blocks = list(s.model.blocks)
    assert [b.training for b in blocks] == [False, False, True, True]
    assert not s.model.patch_embed.training and not s.model.pos_drop.training
    assert s.model.head_drop.training  # the tuned part keeps its dropout
    full = setup(cfg("full"))
    train_mode(full.model, full.frozen)
    assert all(m.training for m in full.model.modules())


def test_a_cached_run_resumes_exactly_after_a_cancel(tmp_path):
    c = cfg("ffn_last_half")
    finetune(c, tmp_path / "straight")
    with pytest.raises(Cancelled):
        finetune(c, tmp_path / "resumed", callbacks=CancelAfter(3))
    resumed = finetune(c, tmp_path / "resumed")
    assert resumed["prefix_cache"]["used"] is True  # rebuilt for the resumed attempt
    assert same(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))


def test_over_budget_the_cache_is_a_temporary_fp16_file(tmp_path):
    exact = finetune(cfg("blocks_last_half", prefix_cache=False), tmp_path / "exact")
    lossy = finetune(cfg("blocks_last_half", prefix_cache_mb=0), tmp_path / "file")
    info = lossy["prefix_cache"]
    assert info["used"] is True and info["storage"] == "file"
    assert info["bytes"] == 640 * 17 * 32 * 2  # tokens x width, fp16
    assert sorted(p.name for p in (tmp_path / "file").iterdir()) == [
        "angles.json",
        "delta.safetensors",
        "metrics.json",
    ]
    a, b = weights(tmp_path / "exact"), weights(tmp_path / "file")
    assert all(torch.allclose(a[k], b[k], atol=1e-2) for k in a)  # fp16 rounding only
    assert abs(exact["test_loss"] - lossy["test_loss"]) < 0.05


def test_runner_summary_states_the_cache_and_bad_settings_are_refused(tmp_path):
    result = run(cfg("linear_probe", epochs=1), tmp_path / "job")
    assert result.summary["prefix_cache"]["used"] is True
    assert result.summary["prefix_cache"]["blocks"] == 4
    with pytest.raises(PftError, match="hparams.prefix_cache_mb"):
        finetune(cfg("linear_probe", prefix_cache_mb=-1), tmp_path / "bad")
    with pytest.raises(PftError, match="hparams.augment"):
        finetune(cfg("linear_probe", augment="no"), tmp_path / "bad")


def test_specs_without_the_new_fields_still_load_and_match_their_finished_run(tmp_path):
    c = cfg("linear_probe", epochs=1, augment=True)
    old = c.to_dict()
    for key in ("augment", "prefix_cache", "prefix_cache_mb"):
        del old["hparams"][key]  # a spec stored before these settings existed
    assert FinetuneSpec.from_dict(old) == c
    first = finetune(c, tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.json"
    metrics.write_text(json.dumps(json.loads(metrics.read_text()) | {"config": old}))
    again = finetune(c, tmp_path / "run")  # recognised as finished: not trained twice
    assert again["config"] == old and again["test_acc"] == first["test_acc"]
