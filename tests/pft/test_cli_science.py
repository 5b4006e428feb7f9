"""The science CLI and its --json contracts (documented in the README)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from lab.cli import app
from pft.base_model import build_pretrained
from pft.checkpoint import delta_metadata, load_delta, save_delta
from pft.model_catalog import unit_map_for
from pft.strategies import resolve_strategy

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result


def test_units_json_contract():
    r = invoke("units", "vit_base_patch16_224.augreg_in21k", "--num-classes", "100", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert {"model", "num_classes", "total_params", "head_params", "units"} <= set(data)
    assert data["total_params"] == 85_875_556 and data["head_params"] == 76_900
    assert data["units"][0] == {
        "name": "ATTN.0",
        "group": "ATTN",
        "kind": "ATTN",
        "block": 0,
        "params": 2_363_904,
        "tensors": data["units"][0]["tensors"],
    }
    assert len(data["units"]) == 24


def test_units_table_and_unknown_model():
    r = invoke("units", "pft/vit-micro", "-n", "3")
    assert r.exit_code == 0 and "FFN.3" in r.output
    r = invoke("units", "vit_bsae_patch16_224")
    assert r.exit_code == 2
    assert "unknown model" in r.output and "vit_base_patch16_224" in r.output


def test_strategies_json_contract():
    r = invoke("strategies", "vit_base_patch16_224.augreg_in21k", "--k", "7", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    rows = {s["name"]: s for s in data["strategies"]}
    assert set(rows["full"]) >= {"name", "description", "tuned_params", "tuned_fraction", "units"}
    assert rows["angle_topk"]["tuned_params"] == 49_692_004
    assert rows["ffn_only"]["tuned_params"] == 56_764_516
    assert "custom" not in rows
    r = invoke("strategies", "pft/vit-micro", "-n", "3", "--unit", "ATTN.1", "--json")
    rows = {s["name"]: s for s in json.loads(r.output)["strategies"]}
    assert rows["custom"]["units"] == ["ATTN.1"]


def test_strategies_bad_k():
    r = invoke("strategies", "pft/vit-micro", "--k", "0")
    assert r.exit_code == 2 and "k must be an integer >= 1" in r.output
    r = invoke("strategies", "pft/vit-micro", "--k", "9")
    assert r.exit_code == 0 and "the whole group is tuned" in r.output


def make_delta(tmp_path, name, strategy, seed, num_classes=3, dataset="synthetic"):
    base = build_pretrained("pft/vit-micro", num_classes, pretrained=False)
    um = unit_map_for("pft/vit-micro", num_classes)
    sel = resolve_strategy(um, strategy)
    g = torch.Generator().manual_seed(seed)
    state = base.state_dict()
    tensors = {t: state[t] + 0.05 * torch.randn(state[t].shape, generator=g) for t in sel.tensors}
    meta = delta_metadata(
        base_model="pft/vit-micro",
        model_overrides={},
        pretrained=False,
        num_classes=num_classes,
        strategy=strategy,
        strategy_params={},
        dataset=dataset,
        data_config={},
        hparams={"head_seed": 0, "seed": seed},
    )
    path = tmp_path / f"{name}.safetensors"
    save_delta(path, tensors, meta)
    return path, state, tensors


def test_angles_of_a_delta(tmp_path):
    path, _, _ = make_delta(tmp_path, "attn", "attn_only", 1)
    r = invoke("angles", "pft/vit-micro", str(path), "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    angles = {u["name"]: u["angle_deg"] for u in data["units"]}
    assert all(angles[f"ATTN.{i}"] > 0 for i in range(4))
    assert all(angles[f"FFN.{i}"] == 0 for i in range(4))
    assert {"name", "angle_deg", "rel_change"} <= set(data["units"][0])
    assert {"name", "angle_deg"} <= set(data["tensors"][0])


def test_angles_between_two_state_dict_files(tmp_path):
    from safetensors.torch import save_file

    base = build_pretrained("pft/vit-micro", 3, pretrained=False).state_dict()
    ft = {k: v.clone() for k, v in base.items()}
    ft["blocks.2.mlp.fc1.weight"] += 0.1
    save_file({k: v.contiguous() for k, v in base.items()}, tmp_path / "pre.safetensors")
    save_file({k: v.contiguous() for k, v in ft.items()}, tmp_path / "ft.safetensors")
    r = invoke("angles", str(tmp_path / "pre.safetensors"), str(tmp_path / "ft.safetensors"))
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("FFN.2"))
    assert float(line.split()[1]) > 0
    assert next(x for x in r.output.splitlines() if x.startswith("FFN.1")).split()[1] == "0.0000"


def test_angles_mismatched_files(tmp_path):
    from safetensors.torch import save_file

    base = build_pretrained("pft/vit-micro", 3, pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in base.items()}, tmp_path / "pre.safetensors")
    ft = {k: v.contiguous() for k, v in base.items() if k != "blocks.0.attn.proj.weight"}
    save_file(ft, tmp_path / "ft.safetensors")
    r = invoke("angles", str(tmp_path / "pre.safetensors"), str(tmp_path / "ft.safetensors"))
    assert r.exit_code == 2 and "blocks.0.attn.proj.weight" in r.output


@pytest.mark.parametrize("method", ["uniform", "masked"])
def test_soup_commands(tmp_path, method):
    a, base, ta = make_delta(tmp_path, "a", "attn_only", 1)
    b, _, tb = make_delta(tmp_path, "b", "ffn_only", 2)
    out = tmp_path / "soup.safetensors"
    r = invoke("soup", method, str(a), str(b), "--out", str(out))
    assert r.exit_code == 0, r.output
    soup, meta = load_delta(out)
    assert meta["strategy"] == f"soup:{method}"
    qkv = "blocks.0.attn.qkv.weight"  # tuned by `a` only
    expected = ta[qkv] if method == "masked" else (ta[qkv] + base[qkv]) / 2
    torch.testing.assert_close(soup[qkv], expected)
    head = "head.weight"  # tuned by both
    torch.testing.assert_close(soup[head], (ta[head] + tb[head]) / 2)


def test_soup_refuses_other_head(tmp_path):
    a, _, _ = make_delta(tmp_path, "a", "attn_only", 1, num_classes=3)
    b, _, _ = make_delta(tmp_path, "b", "attn_only", 2, num_classes=5)
    r = invoke("soup", "uniform", str(a), str(b), "--out", str(tmp_path / "s.safetensors"))
    assert r.exit_code == 2 and "num_classes" in r.output
    assert not (tmp_path / "s.safetensors").exists()


def test_soup_refuses_ingredients_of_different_datasets_naming_them(tmp_path):
    a, _, _ = make_delta(tmp_path, "a", "attn_only", 1)
    b, _, _ = make_delta(tmp_path, "b", "attn_only", 2, dataset="digits3")
    r = invoke("soup", "uniform", str(a), str(b), "--out", str(tmp_path / "s.safetensors"))
    assert r.exit_code == 2
    assert "one dataset" in r.output and "a.safetensors" in r.output
    assert "digits3" in r.output and "b.safetensors" in r.output
