"""The model picker's list: torch-free, the catalogue and pattern matches from shape tables,
mapped / refused / not checked yet, and the same summary `pft models --check` prints."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pft.errors import PftError
from pft.model_catalog import CATALOG, unit_map_for
from pft.model_factory import check_model, compute_shape_table
from pft.model_picker import list_models, model_row


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))


def test_listing_the_catalogue_needs_no_torch(tmp_path):
    code = (
        "import sys; from pft.model_picker import list_models; rows = list_models(); "
        "print(len(rows), all(r['mapped'] for r in rows), 'torch' in sys.modules)"
    )
    env = {"PFT_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == [str(len(CATALOG)), "True", "False"]


@pytest.mark.parametrize(
    "model", ["convnext_base.fb_in22k", "swin_tiny_patch4_window7_224.ms_in1k"]
)
def test_a_mapped_row_is_what_pft_models_check_says(model):
    row = model_row(model, 100)
    assert row["description"] == CATALOG[model].description and row["reason"] is None
    assert {k: v for k, v in row.items() if k not in ("description", "source")} == check_model(
        model, 100
    )


def test_a_model_without_a_shape_table_is_listed_as_not_checked_until_one_exists():
    rows = {r["model"]: r for r in list_models("convnext_at*")}
    assert "convnext_atto" in rows and not set(rows) & set(CATALOG)
    row = rows["convnext_atto"]
    assert row["mapped"] is None and "pft units convnext_atto" in row["reason"]
    unit_map_for("convnext_atto", 10, compute=compute_shape_table)  # caches the table
    row = model_row("convnext_atto")
    assert row["mapped"] is True and row["groups"] == {
        f"S{i}.BLOCK": n for i, n in enumerate((2, 2, 6, 2))
    }


def test_a_refused_model_says_why():
    def compute(model, n):
        return unit_map_for(model, n, compute=compute_shape_table)

    row = model_row("resnet18", lookup=compute)
    assert row["mapped"] is False and "no transformer" in row["reason"]
    assert "depth" not in row


def test_patterns_also_match_catalogue_names():
    assert [r["model"] for r in list_models("pft/*")] == [
        n for n in CATALOG if n.startswith("pft/")
    ]


@pytest.mark.parametrize(
    "kwargs,field,message",
    [
        ({"pattern": "nothing_like_this*"}, "pattern", "no model matches"),
        ({"pattern": "vit_*", "limit": 5}, "pattern", "at most 5 are listed"),
        ({"num_classes": 0}, "num_classes", "num_classes must be an integer >= 1"),
    ],
)
def test_bad_requests_name_the_field(kwargs, field, message):
    with pytest.raises(PftError, match=message) as exc:
        list_models(**kwargs)
    assert exc.value.field == field
