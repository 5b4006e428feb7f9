"""Delta checkpoints: round trip, rebuild from base + delta, buffers of tuned modules,
wrong-base errors, atomic writes."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from pft.base_model import build_pretrained
from pft.checkpoint import (
    apply_delta,
    atomic_write,
    base_from_meta,
    build_model_from_delta,
    delta_metadata,
    delta_tensors,
    load_delta,
    same_base,
    save_delta,
)
from pft.errors import PftError
from pft.model_catalog import BUILTIN_BACKBONE, TEST_MODEL, unit_map_for
from pft.model_factory import builtin_weights_path, compute_shape_table
from pft.strategies import STRATEGIES, previewable, resolve_strategy


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))


def meta_for(model=TEST_MODEL, pretrained=False, head_seed=0, overrides=None, num_classes=4):
    return delta_metadata(
        base_model=model,
        model_overrides=overrides or {},
        pretrained=pretrained,
        num_classes=num_classes,
        strategy="linear_probe",
        strategy_params={},
        dataset="synthetic",
        data_config={
            "input_size": [1, 16, 16],
            "mean": [0.5],
            "std": [0.5],
            "interpolation": "bilinear",
        },
        hparams={"head_seed": head_seed, "lr": 0.001},
    )


def test_round_trip_and_rebuild(tmp_path):
    head = {"head.weight": torch.randn(4, 32), "head.bias": torch.randn(4)}
    path = save_delta(tmp_path / "d.safetensors", head, meta_for())
    tensors, meta = load_delta(path)
    assert set(tensors) == set(head) and torch.equal(tensors["head.bias"], head["head.bias"])
    assert meta["format"] == "pft-delta-1" and meta["pretrained"] is False
    assert meta["num_classes"] == 4 and meta["hparams"]["head_seed"] == 0
    model, _ = build_model_from_delta(path)
    base = build_pretrained(TEST_MODEL, 4, pretrained=False)
    assert torch.equal(model.head.weight, head["head.weight"])
    assert torch.equal(model.blocks[0].attn.qkv.weight, base.blocks[0].attn.qkv.weight)
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_random_init_base_is_rebuilt_identically_and_head_follows_head_seed():
    a = build_pretrained(TEST_MODEL, 4, pretrained=False, head_seed=0)
    torch.manual_seed(123)  # global RNG state must not matter
    b = build_pretrained(TEST_MODEL, 4, pretrained=False, head_seed=0)
    c = build_pretrained(TEST_MODEL, 4, pretrained=False, head_seed=1)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.head.weight, c.head.weight)
    assert torch.equal(a.blocks[0].mlp.fc1.weight, c.blocks[0].mlp.fc1.weight)


def test_delta_for_another_base_model_is_refused(tmp_path):
    # a head for 32-dim features, but the metadata claims a 64-dim model
    path = save_delta(
        tmp_path / "d.safetensors",
        {"head.weight": torch.zeros(4, 32)},
        meta_for(overrides={"embed_dim": 64}),
    )
    with pytest.raises(PftError, match="another base model"):
        build_model_from_delta(path)


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_files_that_are_not_deltas(tmp_path, content):
    path = tmp_path / "x.safetensors"
    if content is None:
        save_file({"w": torch.zeros(2)}, str(path))  # a safetensors file without pft metadata
    else:
        path.write_bytes(content)
    with pytest.raises(PftError, match="not a"):
        load_delta(path)
    with pytest.raises(PftError, match="does not exist"):
        load_delta(tmp_path / "missing.safetensors")


def test_retrained_builtin_backbone_is_detected(tmp_path):
    weights = builtin_weights_path(BUILTIN_BACKBONE)
    weights.parent.mkdir(parents=True)
    body = build_pretrained(BUILTIN_BACKBONE, 5, pretrained=False).state_dict()
    save_file(body, str(weights))
    meta = meta_for(BUILTIN_BACKBONE, pretrained=True, num_classes=10)
    assert len(meta["base_fingerprint"]) == 16
    model = base_from_meta(meta)
    assert torch.equal(model.blocks[3].attn.qkv.weight, body["blocks.3.attn.qkv.weight"])
    save_file({k: v + 1 for k, v in body.items()}, str(weights))
    with pytest.raises(PftError, match="pre-trained again"):
        base_from_meta(meta)


def test_same_base_rules():
    same_base([meta_for(), meta_for()])
    with pytest.raises(PftError, match="base_model"):
        same_base([meta_for(), meta_for(model="pft/vit-tiny-fmnist")])
    with pytest.raises(PftError, match="head_seed"):
        same_base([meta_for(), meta_for(head_seed=1)])


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def broken(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.json", broken)
    assert list(tmp_path.iterdir()) == []


class _Hybrid(nn.Module):
    """A frozen conv stem with BatchNorm, a tuned conv block with BatchNorm, a tuned head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x).relu()).relu()
        return self.head(x.mean((2, 3)))


TUNED_BN = {f"block.1.{b}" for b in ("running_mean", "running_var", "num_batches_tracked")}


def _trained_hybrid() -> tuple[nn.Module, nn.Module, list[str]]:
    """The base and a copy trained a few steps as a run trains it: tuned modules in train mode,
    the frozen BatchNorm in eval mode (its statistics stay the pre-trained ones)."""
    torch.manual_seed(0)
    base = _Hybrid()
    with torch.no_grad():  # non-trivial pre-trained statistics
        for bn in (base.stem[1], base.block[1]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    model = copy.deepcopy(base)
    tuned = [n for n, _ in model.named_parameters() if not n.startswith("stem.")]
    for name, p in model.named_parameters():
        p.requires_grad_(name in tuned)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model.stem[1].eval()
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 3, 9, 9, generator=g) * 2 + 1
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return base, model.eval(), tuned


def _outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(5, 3, 9, 9, generator=torch.Generator().manual_seed(2)))


def test_delta_holds_the_buffers_of_tuned_modules_only_and_rebuilds_exactly(tmp_path):
    base, trained, tuned = _trained_hybrid()
    delta = delta_tensors(trained, tuned)
    assert set(delta) == set(tuned) | TUNED_BN  # no stem.1.* statistics
    assert int(delta["block.1.num_batches_tracked"]) == 3
    assert not torch.equal(delta["block.1.running_mean"], base.block[1].running_mean)
    assert torch.equal(trained.stem[1].running_var, base.stem[1].running_var)  # frozen: unchanged
    path = save_delta(tmp_path / "d.safetensors", delta, meta_for())
    tensors, meta = load_delta(path)
    assert tensors["block.1.num_batches_tracked"].dtype == torch.int64
    rebuilt = copy.deepcopy(base)
    apply_delta(rebuilt, tensors, meta)
    assert torch.equal(_outputs(rebuilt), _outputs(trained))  # bit-identical in eval mode
    assert torch.equal(rebuilt.stem[1].running_mean, base.stem[1].running_mean)


def test_a_parameters_only_delta_still_applies_with_the_base_buffers():
    base, trained, tuned = _trained_hybrid()
    params = dict(trained.named_parameters())
    old = {t: params[t].detach().clone() for t in tuned}  # what deltas held before buffers
    rebuilt = copy.deepcopy(base)
    apply_delta(rebuilt, old, meta_for())
    assert all(torch.equal(dict(rebuilt.named_parameters())[t], v) for t, v in old.items())
    for name in TUNED_BN:
        assert torch.equal(rebuilt.get_buffer(name), base.get_buffer(name))
    # the statistics matter: without them the rebuilt model evaluates differently
    assert not torch.equal(_outputs(rebuilt), _outputs(trained))


def test_a_buffer_of_another_shape_is_refused():
    base, trained, tuned = _trained_hybrid()
    delta = delta_tensors(trained, tuned) | {"block.1.running_var": torch.ones(7)}
    with pytest.raises(PftError, match="block.1.running_var"):
        apply_delta(copy.deepcopy(base), delta, meta_for())


def test_a_hybrid_delta_holds_the_cnn_statistics_only_when_the_stem_is_tuned():
    model_name, ov = "vit_small_resnet26d_224", {"depth": 2, "embed_dim": 32, "num_heads": 2}
    um = unit_map_for(model_name, 3, ov, compute=compute_shape_table)
    with torch.device("meta"):  # names only, no weights
        model = timm.create_model(model_name, num_classes=3, pretrained=False, **ov)
    stats = {k for k in model.state_dict() if k not in dict(model.named_parameters())}
    assert len(stats) == 3 * sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    for name, strategy in STRATEGIES.items():
        if not strategy.applies(um) or not previewable(name, {}):
            continue
        delta = delta_tensors(model, resolve_strategy(um, name).tensors)
        held = set(delta) & stats
        assert held == (stats if strategy.tunes_stem else set()), name  # BatchNorm: CNN stem


def test_equal_tensors_and_metadata_give_byte_identical_files(tmp_path):
    """safetensors writes its metadata in hash-map order (8 saves, 8 different sha256 without
    `canonical_header`); deltas must be byte-reproducible so that recorded hashes compare."""
    import hashlib

    from safetensors import safe_open

    from pft.checkpoint import save_delta

    tensors = {
        "blocks.1.attn.qkv.weight": torch.arange(12.0).reshape(3, 4),
        "head.bias": torch.ones(3),
    }
    meta = {"format": "pft-delta-1", "hparams": {"lr": 1e-3, "epochs": 2}} | {
        f"extra_{i}": f"value {i} é"
        for i in range(10)  # non-ASCII stays as it was written
    }
    digests = set()
    for i in range(8):
        path = save_delta(tmp_path / f"d{i}.safetensors", tensors, meta)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    with safe_open(str(tmp_path / "d0.safetensors"), "pt") as f:  # and it is still a valid file
        assert f.metadata()["extra_3"] == "value 3 é"
        assert torch.equal(
            f.get_tensor("blocks.1.attn.qkv.weight"), tensors["blocks.1.attn.qkv.weight"]
        )
