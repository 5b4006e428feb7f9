"""The unit-map contract over the timm registry (meta device, no weights): every model of the
families pft names (ViT, DeiT, Swin, EVA, BEiT, CaiT, FlexiViT, ConvNeXt) is mapped with every
parameter in exactly one of unit / head / stem / final norm, or refused with a message naming
the reason. A fast sample runs by default; the whole sweep (several minutes on one core) runs
with ``PFT_SWEEP=1``."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from lab.cli import app
from pft.errors import PftError
from pft.model_catalog import get_spec, named_shapes_from_table
from pft.model_factory import check_model, compute_shape_table
from pft.model_picker import matching_models
from pft.units import build_unit_map

FAMILIES = ("vit_*", "deit*", "swin*", "eva*", "beit*", "cait*", "flexivit*", "convnext*")
SAMPLE = (
    "vit_base_patch16_224",
    "vit_base_patch16_siglip_224",
    "vit_base_patch16_clip_224",
    "vit_small_resnet26d_224",
    "deit_base_distilled_patch16_224",
    "deit3_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "swinv2_tiny_window8_256",
    "swinv2_cr_tiny_224",
    "eva02_tiny_patch14_224",
    "beitv2_base_patch16_224",
    "cait_xxs24_224",
    "flexivit_small",
    "convnext_atto",
    "convnextv2_atto",
)
REFUSAL_WORDS = ("no transformer", "has no", "timm could not build")


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))


def check_contract(name: str) -> bool:
    try:
        table = compute_shape_table(get_spec(name))
    except Exception as exc:  # noqa: BLE001 (timm itself cannot build it on meta)
        row = check_model(name)
        assert not row["mapped"] and "timm could not build" in row["reason"], exc
        return False
    try:
        um = build_unit_map(named_shapes_from_table(table, 7), model=name, num_classes=7)
    except PftError as exc:
        assert name in str(exc) and any(w in str(exc) for w in REFUSAL_WORDS), str(exc)
        return False
    owned = [t for u in um.units for t in u.tensors] + [*um.head, *um.stem, *um.final_norm]
    assert sorted(owned) == sorted(um.shapes), name  # every tensor exactly once
    assert um.head and um.head_params == um.count(um.head), name
    for group, units in um.groups.items():  # units of a group are comparable
        assert len({u.params for u in units}) == 1, (name, group)
    return True


@pytest.mark.parametrize("name", SAMPLE)
def test_sample_of_the_registry(name):
    assert name in matching_models(name)
    check_contract(name)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PFT_SWEEP"), reason="the whole sweep: set PFT_SWEEP=1")
@pytest.mark.parametrize("family", FAMILIES)
def test_whole_registry_sweep(family):
    names = matching_models(family)
    assert names
    for name in names:
        check_contract(name)


def test_models_command():
    runner = CliRunner()
    r = runner.invoke(app, ["models", "convnext_at*"])
    assert r.exit_code == 0 and "convnext_atto" in r.output.split()
    r = runner.invoke(app, ["models", "cait_xxs24_224", "--check", "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)["models"][0]
    assert row["mapped"] and row["depth"] == 26 and row["groups"]["CA.ATTN"] == 2
    assert row["tuned_params"]["full"] == row["total_params"]
    r = runner.invoke(app, ["models", "convnext_atto", "--check", "--json"])
    row = json.loads(r.output)["models"][0]
    assert row["mapped"] and "attn_only" in row["not_applicable"]
    r = runner.invoke(app, ["models", "resnet18", "--check", "--json"])
    row = json.loads(r.output)["models"][0]
    assert not row["mapped"] and "no transformer" in row["reason"]
    r = runner.invoke(app, ["models", "resnet18", "--check"])
    assert r.exit_code == 0 and "refused" in r.output
    r = runner.invoke(app, ["models", "nothing_like_this*"])
    assert r.exit_code == 2 and "no timm model matches" in r.output
