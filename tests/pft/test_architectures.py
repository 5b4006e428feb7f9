"""Unit maps and strategies beyond plain ViTs: ConvNeXt, Swin with large K, distilled DeiT, CaiT
(meta device, no weights), and K per group or as a fraction of each group."""

import json

import pytest
import torch
from typer.testing import CliRunner

from lab.cli import app
from pft.base_model import build_pretrained, classifier_heads
from pft.errors import PftError
from pft.model_catalog import unit_map_for
from pft.model_factory import compute_shape_table
from pft.strategies import (
    STRATEGIES,
    k_per_group,
    manual_strategies,
    prepare_params,
    preview_strategy,
    resolve_strategy,
)

runner = CliRunner()
TOPK = next(s.name for s in STRATEGIES.values() if s.one_of)
CUSTOM = next(s.name for s in STRATEGIES.values() if any(p.kind == "units" for p in s.params))
LINEAR_PROBE = next(
    s.name
    for s in STRATEGIES.values()
    if not s.tunes_stem and not s.params and s.kinds is None and not s.paper
)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))


def um_of(name, n=100, overrides=None):
    return unit_map_for(name, n, overrides, compute=compute_shape_table)


def angles(um):
    return {u: float(i % 5) for i, u in enumerate(um.unit_names)}


def owned(um):
    return [t for u in um.units for t in u.tensors] + list(um.head + um.stem + um.final_norm)


def test_convnext_one_block_unit_per_block_grouped_per_stage():
    um = um_of("convnext_tiny")
    assert um.kinds == ("BLOCK",)
    assert list(um.groups) == ["S0.BLOCK", "S1.BLOCK", "S2.BLOCK", "S3.BLOCK"]
    assert [len(us) for us in um.groups.values()] == [3, 3, 9, 3]
    assert um.depth == 18
    assert sorted(owned(um)) == sorted(um.shapes)
    unit = um.unit("BLOCK.0")
    assert {t.split(".", 4)[-1].split(".")[0] for t in unit.tensors} >= {"conv_dw", "norm", "mlp"}
    assert any(t.endswith("gamma") for t in unit.tensors)
    assert set(um.head) == {"head.fc.weight", "head.fc.bias"}
    assert all(t.startswith("head.norm.") for t in um.final_norm)
    assert any(t.startswith("stages.1.downsample.") for t in um.stem)
    for units in um.groups.values():
        assert len({u.params for u in units}) == 1


def test_convnext_refuses_attn_ffn_strategies_naming_those_that_apply():
    um = um_of("convnext_tiny")
    for name in manual_strategies():
        strategy = STRATEGIES[name]
        if strategy.kinds is None:
            sel = resolve_strategy(um, name)
            assert sel.units and all(u.startswith("BLOCK.") for u in sel.units)
            continue
        with pytest.raises(PftError, match="strategies that apply: ") as exc:
            resolve_strategy(um, name)
        message = str(exc.value)
        assert "BLOCK" in message and TOPK in message and CUSTOM in message
        assert name not in message.split("apply: ")[1].split(", ")
    sel = resolve_strategy(um, TOPK, k=7, angles=angles(um))
    assert len(sel.units) == 3 + 3 + 7 + 3


def test_swin_k7_takes_whole_small_groups_and_says_so():
    um = um_of("swin_tiny_patch4_window7_224", 10)
    sel = preview_strategy(um, TOPK, k=7)
    assert len(sel.units) == 2 * (2 + 2 + 6 + 2)
    assert sel.provisional
    assert any("S0.ATTN" in n and "whole group" in n for n in sel.to_dict()["notes"])
    big = um_of("swin_base_patch4_window7_224", 10)
    assert len(resolve_strategy(big, TOPK, k=7, angles=angles(big)).units) == 2 * (2 + 2 + 7 + 2)


def test_k_per_group_and_fraction():
    um = um_of("swin_tiny_patch4_window7_224", 10)
    assert k_per_group(um, {"k_groups": 0.5}) == {
        g: max(1, round(len(us) / 2)) for g, us in um.groups.items()
    }
    mapping = {g: i + 1 for i, g in enumerate(um.groups)}
    sel = resolve_strategy(um, TOPK, k_groups=mapping, angles=angles(um))
    assert len(sel.units) == sum(min(k, len(um.groups[g])) for g, k in mapping.items())
    # From a form or a flag: JSON text.
    sel2 = resolve_strategy(um, TOPK, k_groups=json.dumps(mapping), angles=angles(um))
    assert sel2.units == sel.units
    assert len(resolve_strategy(um, TOPK, k_groups="1", angles=angles(um)).units) == 24
    with pytest.raises(PftError, match="group 'S0.FFN' missing"):
        resolve_strategy(um, TOPK, k_groups={"S0.ATTN": 1}, angles=angles(um))
    for bad in (0, 1.5, {"S0.ATTN": 0}, "nope"):
        with pytest.raises(PftError, match="k_groups must be"):
            resolve_strategy(um, TOPK, k_groups=bad, angles=angles(um))
    with pytest.raises(PftError, match="needs k: .* \\(or k_groups\\)"):
        resolve_strategy(um, TOPK, angles=angles(um))
    stored = prepare_params(TOPK, {"k_groups": 0.25, "reference_job": 3}, fill=lambda p, v: {})
    assert stored["k_groups"] == 0.25 and "k" not in stored


def test_distilled_deit_both_heads_are_the_head():
    um = um_of("deit_base_distilled_patch16_224")
    assert set(um.head) == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert resolve_strategy(um, LINEAR_PROBE).tuned_params == 153_800
    assert sorted(owned(um)) == sorted(um.shapes)
    for name in manual_strategies():
        assert set(um.head) <= set(resolve_strategy(um, name).tensors)


def test_distilled_head_is_initialised_from_head_seed():
    ov = dict(img_size=16, patch_size=4, depth=1, embed_dim=16, num_heads=2, in_chans=1)

    def heads(seed):
        net = build_pretrained(
            "deit_tiny_distilled_patch16_224", 5, pretrained=False, overrides=ov, head_seed=seed
        )
        return [h.weight.detach().clone() for h in classifier_heads(net)]

    a, b, c = heads(0), heads(0), heads(1)
    assert len(a) == 2
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])
    assert 0.005 < float(a[1].std()) < 0.05  # trunc_normal(std=0.02), not timm's default init


def test_cait_class_attention_blocks_are_units_after_self_attention():
    um = um_of("cait_xxs24_224")
    assert list(um.groups) == ["ATTN", "FFN", "CA.ATTN", "CA.FFN"]
    assert um.depth == 26
    assert [u.block for u in um.groups["CA.ATTN"]] == [24, 25]
    assert um.unit("ATTN.24").tensors[0].startswith("blocks_token_only.0.")
    assert sorted(owned(um)) == sorted(um.shapes)
    assert not any(t.startswith("blocks_token_only") for t in um.stem)
    for units in um.groups.values():
        assert len({u.params for u in units}) == 1
    assert len(preview_strategy(um, TOPK, k=7).units) == 7 + 7 + 2 + 2


@pytest.mark.parametrize(
    "model",
    [
        "convnext_tiny",
        "swin_tiny_patch4_window7_224",
        "cait_xxs24_224",
        "deit_base_distilled_patch16_224",
    ],
)
def test_cli_units_and_strategies_k7(model):
    r = runner.invoke(app, ["units", model, "-n", "100", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["units"]
    r = runner.invoke(app, ["strategies", model, "-n", "100", "--k", "7", "--json"])
    assert r.exit_code == 0, r.output
    rows = {s["name"]: s for s in json.loads(r.output)["strategies"]}
    assert TOPK in rows and rows[TOPK]["provisional"]
    if model.startswith("deit"):
        assert rows[LINEAR_PROBE]["tuned_params"] == 153_800
    r = runner.invoke(app, ["strategies", model, "-n", "100", "--k", "7"])
    assert r.exit_code == 0, r.output
    if model == "convnext_tiny":
        assert "not applicable" in r.output
    r = runner.invoke(app, ["strategies", model, "--k-groups", "0.5", "--json"])
    assert r.exit_code == 0, r.output


def test_convnext_base_of_the_paper_is_in_the_catalogue_torch_free():
    um = unit_map_for("convnext_base.fb_in22k", 100)  # a shipped table: no compute needed
    assert [len(us) for us in um.groups.values()] == [3, 3, 27, 3]
    sel = preview_strategy(um, TOPK, k=7)
    assert len(sel.units) == 3 + 3 + 7 + 3
    assert resolve_strategy(um, LINEAR_PROBE).tuned_params == 1024 * 100 + 100


FULL = next(s.name for s in STRATEGIES.values() if s.tunes_stem)


@pytest.mark.parametrize(
    "model,prefix",
    [("vit_base_patch16_siglip_224", "attn_pool."), ("swinv2_cr_tiny_224", None)],
)
def test_map_pooling_and_block_level_norms_sit_with_the_stem(model, prefix):
    """attn_pool and swinv2_cr's norm3: outside every unit, shown as stem in the unit map,
    tuned by full fine-tuning only (never by a linear probe or a partial strategy)."""
    um = um_of(model)
    odd = [t for t in um.shapes if (t.startswith(prefix) if prefix else ".norm3." in t)]
    assert odd
    data = um.to_dict()
    assert set(odd) <= set(data["stem"])
    in_units = [t for u in data["units"] for t in u["tensors"]]
    assert not set(odd) & set(in_units)
    assert sorted(in_units + data["head"] + data["stem"] + data["final_norm"]) == sorted(um.shapes)
    assert set(odd) <= set(resolve_strategy(um, FULL).tensors)
    for name in (LINEAR_PROBE, *manual_strategies()):
        assert not set(odd) & set(resolve_strategy(um, name).tensors)
