"""The cost preview: `pft.cost.predict`'s arithmetic against a hand computation on a made-up
calibration, and a real calibration of the test model (finite figures, cached once)."""

from __future__ import annotations

import math

import pytest

from pft.cost import cache
from pft.cost.calibrate import cached_calibration
from pft.cost.predict import (
    CALIBRATION_VERSION,
    MB,
    MEMORY_KEYS,
    TIME_KEYS,
    RunShape,
    check_calibration,
    predict,
    predict_strategies,
)
from pft.errors import PftError
from pft.model_catalog import TEST_MODEL, unit_map_for
from pft.strategies import resolve_strategy

UM = unit_map_for(TEST_MODEL, 4)  # 4 blocks
CAL = {
    "version": CALIBRATION_VERSION,
    "device_kind": "made-up",
    "depth": 4,
    "prefix_cache_supported": True,
    "seconds": {
        "prepare_train": 1.0,
        "prepare_eval": 0.5,
        "stem_forward": 2.0,
        "block_forward": 3.0,
        "block_train": 10.0,
        "head_train": 4.0,
        "full_extra": 5.0,
        "optimizer_per_param": 1e-3,
    },
    "memory": {
        "input_bytes": 100,
        "stem_activation": 200,
        "block_activation": 1000,
        "head_activation": 50,
        "token_bytes": 64,
        "scale": 2.0,
    },
}
N, M, E, B = 100, 30, 3, 32  # train images, evaluated images, epochs, batch
STEPS = math.ceil(N / B)  # 4


def _predict(strategy: str, augment: bool):
    sel = resolve_strategy(UM, strategy)
    run = RunShape(N, M, epochs=E, batch_size=B, augment=augment, prefix_cache=True)
    return predict(CAL, UM, strategy, sel.tensors, run), sel.tuned_params


def test_full_fine_tuning_by_hand():
    p, tuned = _predict("full", augment=True)
    assert tuned == UM.total_params
    step = 4 * 10 + 4 + 5 + 1  # blocks trained + head + tuned stem + augmented preprocessing
    assert p.train_seconds == pytest.approx(E * (N * step + STEPS * 1e-3 * tuned))
    assert p.eval_seconds == pytest.approx(E * M * (0.5 + 2 + 4 * 3))
    assert p.prefix_seconds == 0 and not p.prefix_cached and p.prefix_blocks == 0
    acts = 100 + 50 + 4 * 1000 + 200
    assert p.peak_mb == pytest.approx((16 * tuned + 2.0 * B * acts) / MB)
    assert p.seconds == pytest.approx(p.train_seconds + p.eval_seconds)


def test_a_cached_suffix_by_hand():
    p, tuned = _predict("attn_last_half", augment=False)
    attn, ffn = UM.unit("ATTN.2").params, UM.unit("FFN.2").params
    w = attn / (attn + ffn)
    g0 = min(2 * 3.0, 10.0)
    step = 2 * (g0 + (10 - g0) * w) + 4  # blocks 2 and 3, partly tuned, then the head
    assert p.prefix_cached and p.prefix_blocks == 2
    assert p.train_seconds == pytest.approx(E * (N * step + STEPS * 1e-3 * tuned))
    assert p.prefix_seconds == pytest.approx((N + M) * (0.5 + 2 + 2 * 3))
    assert p.eval_seconds == pytest.approx(E * M * 2 * 3)
    acts = 100 + 50 + 2 * 1000
    expected = 4 * UM.total_params + 12 * tuned + 2.0 * B * acts + 64 * (N + M)
    assert p.peak_mb == pytest.approx(expected / MB)


def test_augmentation_runs_the_frozen_prefix_every_step():
    p, tuned = _predict("attn_last_half", augment=True)
    cached, _ = _predict("attn_last_half", augment=False)
    attn, ffn = UM.unit("ATTN.2").params, UM.unit("FFN.2").params
    suffix = 2 * (6 + 4 * attn / (attn + ffn))
    step = 1 + 2 + 2 * 3 + suffix + 4
    assert not p.prefix_cached and p.prefix_seconds == 0
    assert p.train_seconds == pytest.approx(E * (N * step + STEPS * 1e-3 * tuned))
    acts = 100 + 50 + 2 * 1000 + 1000  # + the frozen blocks' working set
    assert p.peak_mb == pytest.approx((4 * UM.total_params + 12 * tuned + 2 * B * acts) / MB)
    # no prefix pass: the frozen blocks' cost is in every training step instead
    assert p.seconds == pytest.approx(p.train_seconds + p.eval_seconds)
    assert cached.prefix_cached and cached.prefix_seconds > 0


def test_linear_probe_caches_the_whole_backbone():
    p, tuned = _predict("linear_probe", augment=False)
    assert p.prefix_cached and p.prefix_blocks == 4
    assert p.train_seconds == pytest.approx(E * (N * 4 + STEPS * 1e-3 * tuned))
    assert p.prefix_seconds == pytest.approx((N + M) * (0.5 + 2 + 4 * 3))
    assert p.eval_seconds == 0


def test_unsupported_families_and_bad_calibrations():
    sel = resolve_strategy(UM, "linear_probe")
    run = RunShape(N, M, epochs=E, batch_size=B, augment=False)
    other = CAL | {"prefix_cache_supported": False}
    assert not predict(other, UM, "linear_probe", sel.tensors, run).prefix_cached
    with pytest.raises(PftError, match="calibrate again"):
        check_calibration({"version": CALIBRATION_VERSION, "seconds": {}, "memory": {}})
    with pytest.raises(PftError, match="version"):
        check_calibration({"version": 0})


def test_every_strategy_gets_a_row():
    run = RunShape(N, M, epochs=E, batch_size=B, augment=False)
    rows = predict_strategies(CAL, UM, run)
    names = [r["strategy"] for r in rows]
    assert names[:2] == ["full", "linear_probe"] and "attn_last_half" in names
    assert all(r["seconds"] > 0 and r["peak_mb"] > 0 for r in rows)


def test_calibrating_the_test_model_is_finite_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))
    cal, measured = cached_calibration(TEST_MODEL, device="cpu", batch_size=8, steps=1)
    assert measured and cal["model"] == TEST_MODEL and cal["depth"] == 4
    check_calibration(cal)
    for key in TIME_KEYS:
        assert math.isfinite(cal["seconds"][key]) and cal["seconds"][key] >= 0, key
    for key in ("prepare_train", "block_forward", "block_train", "optimizer_per_param"):
        assert cal["seconds"][key] > 0, key
    for key in MEMORY_KEYS:
        assert math.isfinite(cal["memory"][key]) and cal["memory"][key] >= 0, key
    assert cal["memory"]["block_activation"] > 0 and cal["prefix_cache_supported"]
    path = cache.cache_path(cal["device_kind"], TEST_MODEL, 16)
    assert path.is_file() and path.is_relative_to(tmp_path)
    again, measured = cached_calibration(TEST_MODEL, device="cpu")
    assert not measured and again == cal
    run = RunShape(100, 50, epochs=2, batch_size=16, augment=False)
    rows = predict_strategies(cal, UM, run)
    assert all(math.isfinite(r["seconds"]) and r["seconds"] > 0 for r in rows)
    assert all(math.isfinite(r["peak_mb"]) and r["peak_mb"] > 0 for r in rows)


def test_running_out_of_memory_is_said_so_on_every_device():
    from pft.failures import describe_failure
    from pft.jobs.specs import FinetuneSpec

    spec = FinetuneSpec(model=TEST_MODEL, dataset="synthetic")
    cpu = RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: 1 bytes")
    for exc in (MemoryError(), cpu, RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")):
        text = describe_failure(exc, spec, "cpu")
        assert text.startswith("out of memory on cpu") and "batch_size (now 64)" in text
    assert not describe_failure(RuntimeError("shape mismatch"), spec).startswith("out of memory")


def test_a_calibrate_job_returns_the_calibration_and_the_split_sizes(tmp_path):
    from contract.vocab import JobKind
    from pft.datasets import load_dataset
    from pft.jobs.runner import run
    from pft.jobs.specs import CalibrateSpec, spec_from_dict

    spec = CalibrateSpec(model=TEST_MODEL, dataset="synthetic", batch_size=8, steps=1)
    assert spec_from_dict(JobKind.CALIBRATE, spec.to_dict()) == spec
    result = run(spec, tmp_path / "job", device="cpu")
    check_calibration(result.summary["calibration"])
    data = load_dataset("synthetic", image_size=16)
    assert result.summary["dataset"] == {
        "name": "synthetic",
        "num_classes": 4,
        "train": len(data.train),
        "heldout": len(data.heldout),
        "test": len(data.test),
    }
    assert result.summary["calibration"]["device_memory_mb"] > 0
