"""Fine-tuned angles: exact rotations are recovered to 1e-6 degrees, from 1e-4 to 179 degrees;
tensor parts for heatmaps across families."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.vocab import AngleScope
from pft.angles import compute_angles, tensor_part
from pft.base_model import build_pretrained
from pft.errors import PftError
from pft.model_catalog import unit_map_for
from pft.model_factory import compute_shape_table


@pytest.fixture(scope="module")
def um():
    return unit_map_for("pft/vit-micro", 3)


def random_state(um, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in um.shapes.items()}


def rotate_unit(state, unit, theta_deg, seed=1):
    """Rotates the unit's concatenated weight vector by exactly theta in a random plane."""
    names = unit.tensors
    a = torch.cat([state[n].reshape(-1) for n in names])
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(a.shape, generator=g, dtype=torch.float64)
    w -= (w @ a) / (a @ a) * a  # orthogonal to a
    w -= (w @ a) / (a @ a) * a  # twice, for float64 orthogonality
    w *= a.norm() / w.norm()
    theta = math.radians(theta_deg)
    b = math.cos(theta) * a + math.sin(theta) * w
    out, i = dict(state), 0
    for n in names:
        k = state[n].numel()
        out[n] = b[i : i + k].reshape(state[n].shape)
        i += k
    return out


@pytest.mark.parametrize("theta", [1e-4, 1e-3, 0.01, 0.5, 1, 10, 45, 90, 135, 170, 179])
def test_exact_rotation_recovered(um, theta):
    pre = random_state(um)
    unit = um.unit("FFN.2")
    ft = rotate_unit(pre, unit, theta)
    report = compute_angles(pre, ft, um)
    assert report.units["FFN.2"] == pytest.approx(theta, abs=1e-6)
    others = {k: v for k, v in report.units.items() if k != "FFN.2"}
    assert all(v == 0.0 for v in others.values())
    assert report.rel_change["FFN.2"] == pytest.approx(
        2 * math.sin(math.radians(theta) / 2), rel=1e-9
    )


def test_arccos_would_fail_where_we_do_not(um):
    """The plain arccos form loses tiny angles entirely; ours does not."""
    pre = random_state(um)
    ft = rotate_unit(pre, um.unit("ATTN.0"), 1e-6)
    a = torch.cat([pre[n].reshape(-1) for n in um.unit("ATTN.0").tensors])
    b = torch.cat([ft[n].reshape(-1) for n in um.unit("ATTN.0").tensors])
    naive = math.degrees(math.acos(min(1.0, float(a @ b / (a.norm() * b.norm())))))
    ours = compute_angles(pre, ft, um).units["ATTN.0"]
    assert ours == pytest.approx(1e-6, rel=1e-3)
    assert abs(naive - 1e-6) > 1e-7


def test_identical_weights_are_zero(um):
    pre = random_state(um)
    report = compute_angles(pre, {k: v.clone() for k, v in pre.items()}, um)
    assert set(report.units.values()) == {0.0}
    assert set(report.rel_change.values()) == {0.0}
    assert set(report.tensors.values()) == {0.0}


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(0.01, 100), seed=st.integers(0, 2**16))
def test_scaling_does_not_rotate(um, scale, seed):
    pre = random_state(um, seed)
    ft = {k: v * scale for k, v in pre.items()}
    report = compute_angles(pre, ft, um)
    assert max(report.units.values()) < 1e-6
    assert max(report.tensors.values()) < 1e-6


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_symmetric_and_bounded(um, seed):
    pre, ft = random_state(um, seed), random_state(um, seed + 1)
    ab, ba = compute_angles(pre, ft, um), compute_angles(ft, pre, um)
    for name in um.unit_names:
        assert ab.units[name] == pytest.approx(ba.units[name], abs=1e-9)
        assert 0 <= ab.units[name] <= 180


def test_opposite_is_180(um):
    pre = random_state(um)
    report = compute_angles(pre, {k: -v for k, v in pre.items()}, um)
    assert report.units["ATTN.1"] == pytest.approx(180.0, abs=1e-9)


def test_mismatched_names_and_shapes_named(um):
    pre = random_state(um)
    ft = dict(pre)
    del ft["blocks.1.mlp.fc1.weight"]
    with pytest.raises(PftError, match="'blocks.1.mlp.fc1.weight' is missing from the fine-tuned"):
        compute_angles(pre, ft, um)
    ft = dict(pre, **{"blocks.0.attn.qkv.weight": torch.zeros(3, 3, dtype=torch.float64)})
    with pytest.raises(PftError, match=r"'blocks.0.attn.qkv.weight' has shape"):
        compute_angles(pre, ft, um)


def test_float32_inputs_and_report_json(um):
    pre = {k: v.float() for k, v in random_state(um).items()}
    ft = {k: v + 0.01 for k, v in pre.items()}
    data = compute_angles(pre, ft, um).to_dict(um)
    assert {u["name"] for u in data["units"]} == set(um.unit_names)
    row = next(t for t in data["tensors"] if t["name"] == "blocks.2.attn.qkv.weight")
    assert row["unit"] == "ATTN.2" and row["part"] == "qkv" and row["angle_deg"] > 0
    assert next(u for u in data["units"] if u["name"] == "FFN.3")["block"] == 3


def test_tensor_parts():
    assert tensor_part("blocks.3.mlp.fc2.bias") == "fc2"
    assert tensor_part("layers.0.blocks.1.norm1.weight") == "norm1"
    assert tensor_part("blocks.0.ls1.gamma") == "other"


def _parts(um, unit):
    return {t.split(".", 2)[-1]: tensor_part(t) for t in um.unit(unit).tensors}


def test_eva02_separate_q_k_v_projections_are_the_qkv_part():
    # meta device, no weights: EVA-02 stores q/k/v as three projections and a SwiGLU MLP
    um = unit_map_for("eva02_base_patch14_224", 10, compute=compute_shape_table)
    attn = _parts(um, "ATTN.0")
    assert {attn[f"attn.{x}_proj.weight"] for x in "qkv"} == {"qkv"}
    assert attn["attn.q_proj.bias"] == attn["attn.v_proj.bias"] == "qkv"
    assert attn["attn.proj.weight"] == "proj" and attn["norm1.weight"] == "norm1"
    ffn = _parts(um, "FFN.0")
    assert ffn["mlp.fc1_g.weight"] == ffn["mlp.fc1_x.weight"] == "fc1"
    assert ffn["mlp.fc2.weight"] == "fc2" and ffn["mlp.norm.weight"] == "other"


def test_eva02_heatmap_rows_carry_the_qkv_part():
    ov = dict(img_size=28, patch_size=14, depth=2, embed_dim=32, num_heads=2)
    model = build_pretrained("eva02_base_patch14_224", 3, pretrained=False, overrides=ov)
    um = unit_map_for("eva02_base_patch14_224", 3, ov, compute=compute_shape_table)
    pre = {k: v.detach().double() for k, v in model.state_dict().items()}
    ft = {k: v + 0.01 for k, v in pre.items()}
    rows = compute_angles(pre, ft, um).rows(um)
    parts = {r["name"]: r["part"] for r in rows if r["scope"] == AngleScope.TENSOR.value}
    assert parts["blocks.1.attn.k_proj.weight"] == "qkv"
    assert not any(p == "qkv" for n, p in parts.items() if ".attn." not in n)


@pytest.mark.parametrize(
    "name,part",
    [
        ("blocks.0.attn.qkv.weight", "qkv"),  # ViT
        ("blocks.0.attn.q_bias", "qkv"),  # BEiT / EVA-01 separate biases of a fused qkv
        ("layers.1.blocks.0.attn.v_bias", "qkv"),  # Swin-V2
        ("blocks_token_only.1.attn.k.weight", "qkv"),  # CaiT class attention
        ("blocks.2.attn.proj_l.weight", "other"),  # CaiT talking heads, not the output proj
        ("layers.0.blocks.0.attn.meta_mlp.fc1.weight", "other"),  # swinv2_cr: not the MLP
        ("layers.0.blocks.0.attn.cpb_mlp.0.weight", "other"),
        ("blocks.4.attn.relative_position_bias_table", "other"),
        ("stages.2.blocks.3.conv_dw.weight", "conv_dw"),  # ConvNeXt
        ("stages.2.blocks.3.norm.weight", "norm"),
        ("stages.2.blocks.3.mlp.fc1.bias", "fc1"),
        ("stages.2.blocks.3.gamma", "other"),
        ("attn_pool.kv.weight", "other"),  # outside the blocks: stem, no part of a unit
    ],
)
def test_part_labels_across_families(name, part):
    assert tensor_part(name) == part
