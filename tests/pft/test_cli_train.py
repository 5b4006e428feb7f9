"""`pft pretrain|finetune|evaluate|soup greedy|datasets` through the real CLI on tiny models."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pft.cli import app

runner = CliRunner()
MICRO = ["--model", "pft/vit-micro", "--random", "--dataset", "synthetic"]


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three full fine-tuning runs that differ only in their seed (soup ingredients)."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PFT_DATA_DIR", str(root / "data"))
        for seed in (1, 2, 3):
            r = cli(
                "finetune",
                *MICRO,
                "--strategy",
                "full",
                "--epochs",
                2,
                "--batch-size",
                32,
                "--lr",
                "0.003",
                "--seed",
                seed,
                "--out",
                root / f"s{seed}",
                "--json",
            )
            assert r.exit_code == 0, r.output
        yield root


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))


def test_finetune_json_summary_and_files(runs):
    summary = json.loads((runs / "s1" / "metrics.json").read_text())
    assert summary["strategy"]["name"] == "full" and summary["strategy"]["tuned_fraction"] == 1.0
    assert summary["pretrained"] is False and len(summary["epochs"]) == 2
    assert {"delta.safetensors", "metrics.json", "angles.json"} <= {
        p.name for p in (runs / "s1").iterdir()
    }


def test_angle_topk_from_a_reference_run(tmp_path, runs):
    r = cli(
        "finetune",
        *MICRO,
        "--strategy",
        "angle_topk",
        "--k",
        2,
        "--order",
        "largest",
        "--reference",
        runs / "s1",
        "--epochs",
        1,
        "--out",
        tmp_path / "fapft",
        "--json",
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    units = summary["strategy"]["units"]
    assert len(units) == 4 and sum(u.startswith("ATTN") for u in units) == 2
    angles = json.loads((runs / "s1" / "angles.json").read_text())
    attn = sorted(
        (u for u in angles["units"] if u["name"].startswith("ATTN")), key=lambda u: -u["angle_deg"]
    )
    assert {u["name"] for u in attn[:2]} <= set(units)


@pytest.mark.parametrize(
    "k_groups,stored,attn",
    [("0.5", 0.5, 2), ('{"ATTN": 1, "FFN": 3}', {"ATTN": 1, "FFN": 3}, 1)],
)
def test_angle_topk_with_k_groups(tmp_path, runs, k_groups, stored, attn):
    r = cli(
        "finetune",
        *MICRO,
        "--strategy",
        "angle_topk",
        "--k-groups",
        k_groups,
        "--reference",
        runs / "s1",
        "--epochs",
        1,
        "--out",
        tmp_path / "fapft",
        "--json",
    )
    assert r.exit_code == 0, r.output
    strategy = json.loads(r.stdout[r.stdout.index("{") :])["strategy"]
    assert strategy["params"]["k_groups"] == stored  # normalised by the registry, not text
    units = strategy["units"]
    assert len(units) == 4 and sum(u.startswith("ATTN") for u in units) == attn
    config = json.loads((tmp_path / "fapft" / "metrics.json").read_text())["config"]
    assert config["strategy_params"]["k_groups"] == stored


@pytest.mark.parametrize(
    "k_groups,message",
    [
        ("2", "k_groups must be a fraction in (0, 1] of each group"),
        ("half", "k_groups must be a fraction in (0, 1] of each group"),
        ('{"ATTN": 0, "FFN": 1}', "or a mapping {group: k} with k >= 1"),
        ('{"ATTN": 1}', "k_groups: group 'FFN' missing; the groups of pft/vit-micro are ATTN, FFN"),
    ],
)
def test_bad_k_groups_names_the_field_and_writes_nothing(tmp_path, runs, k_groups, message):
    out = tmp_path / "fapft"
    r = cli(
        "finetune",
        *MICRO,
        "--strategy",
        "angle_topk",
        "--k-groups",
        k_groups,
        "--reference",
        runs / "s1",
        "--epochs",
        1,
        "--out",
        out,
    )
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_k_groups_is_refused_by_strategies_that_rank_nothing(tmp_path):
    r = cli("finetune", *MICRO, "--k-groups", "0.5", "--epochs", 1, "--out", tmp_path / "run")
    assert r.exit_code == 2 and "takes no parameter 'k_groups'" in r.output
    assert not (tmp_path / "run").exists()


def test_evaluate_with_shifts(runs):
    r = cli("evaluate", runs / "s2", "--shift", "blur", "--shift", "gaussian_noise:5", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["dataset"] == "synthetic" and 0 <= result["acc"] <= 1
    assert set(result["shifts"]) == {"blur", "gaussian_noise:5"}
    r = cli("evaluate", runs / "s2", "--split", "heldout")
    assert r.exit_code == 0 and "heldout" in r.stdout


def test_greedy_soup_prints_its_trace(tmp_path, runs):
    out = tmp_path / "soup.safetensors"
    r = cli(
        "soup", "greedy", runs / "s1", runs / "s2", runs / "s3", "--out", out, "--shift", "contrast"
    )
    assert r.exit_code == 0, r.output
    assert "ingredient" in r.stdout and "greedy soup of" in r.stdout and out.is_file()
    r = cli("soup", "greedy", runs / "s1", runs / "s2", runs / "s3", "--json")
    result = json.loads(r.stdout)
    assert len(result["trace"]) == 3 and result["trace"][0]["accepted"] is True
    singles = [t["individual_score"] for t in result["trace"]]
    assert singles == sorted(singles, reverse=True)
    assert result["heldout_acc"] >= singles[0]
    r = cli("evaluate", out, "--json")  # the soup is itself a delta checkpoint
    assert r.exit_code == 0, r.output


def test_soup_of_different_base_models_is_refused(tmp_path, runs):
    r = cli(
        "finetune",
        *MICRO,
        "--override",
        "depth=2",
        "--strategy",
        "linear_probe",
        "--epochs",
        1,
        "--out",
        tmp_path / "other",
    )
    assert r.exit_code == 0, r.output
    r = cli("soup", "greedy", runs / "s1", tmp_path / "other")
    assert r.exit_code == 2 and "model_overrides" in r.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "pft/vit-micro", "--dataset", "fashon_mnist"], "close matches: fashion_mnist"),
        (["--model", "vit_base_patch16_22", "--dataset", "digits"], "close matches"),
        (
            ["--model", "pft/vit-micro", "--dataset", "digits", "--strategy", "atn_only"],
            "close matches: attn_only",
        ),
        (["--model", "pft/vit-micro", "--dataset", "digits", "--k", "2"], "takes no parameter 'k'"),
        (["--model", "pft/vit-micro", "--dataset", "imagefolder:../etc"], "outside"),
    ],
)
def test_bad_input_names_what_is_accepted_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    r = cli("finetune", *args, "--epochs", 1, "--out", out)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_missing_reference_and_checkpoint(tmp_path):
    r = cli(
        "finetune",
        *MICRO,
        "--strategy",
        "angle_topk",
        "--k",
        1,
        "--reference",
        tmp_path / "nope.json",
        "--out",
        tmp_path / "run",
    )
    assert r.exit_code == 2 and "does not exist" in r.output
    r = cli("evaluate", tmp_path / "nothing.safetensors", "--dataset", "synthetic")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_evaluate_on_a_dataset_with_other_classes(runs):
    r = cli("evaluate", runs / "s1", "--dataset", "digits")
    assert r.exit_code == 2 and "4 classes" in r.output


def test_datasets_lists_names():
    r = cli("datasets", "--json")
    assert r.exit_code == 0
    assert "fashion_mnist_b" in {d["name"] for d in json.loads(r.stdout)["datasets"]}


@pytest.mark.slow
def test_tiny_pretrain_then_finetune_the_builtin_backbone(tmp_path):
    r = cli("pretrain", "--epochs", 1, "--subset", 256, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout[r.stdout.index("{") :])
    assert info["subset"] == 256 and 0 <= info["test_acc"] <= 1
    weights = tmp_path / "data" / "models" / "pft" / "vit-tiny-fmnist"
    assert sorted(p.name for p in weights.iterdir()) == ["model.json", "model.safetensors"]
    r = cli(
        "finetune",
        "--model",
        "pft/vit-tiny-fmnist",
        "--dataset",
        "digits",
        "--strategy",
        "linear_probe",
        "--epochs",
        1,
        "--out",
        tmp_path / "probe",
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{") :])["num_classes"] == 10


def test_a_finished_run_is_never_overwritten_by_another_config(runs):
    before = (runs / "s1" / "metrics.json").read_text()
    r = cli("finetune", *MICRO, "--strategy", "attn_only", "--epochs", 1, "--out", runs / "s1")
    assert r.exit_code == 2 and "finished run with a different configuration" in r.output
    assert (runs / "s1" / "metrics.json").read_text() == before


def test_reference_angles_must_come_from_a_full_run(tmp_path, runs):
    partial = json.loads((runs / "s1" / "angles.json").read_text()) | {"strategy": "attn_only"}
    (tmp_path / "angles.json").write_text(json.dumps(partial))
    r = cli(
        "finetune",
        *MICRO,
        "--strategy",
        "angle_topk",
        "--k",
        1,
        "--reference",
        tmp_path / "angles.json",
        "--out",
        tmp_path / "fapft",
    )
    assert r.exit_code == 2 and "from a 'attn_only' run" in r.output
    assert not (tmp_path / "fapft").exists()


def test_finetune_without_augmentation_caches_the_frozen_prefix(tmp_path):
    common = [*MICRO, "--strategy", "linear_probe", "--epochs", 1, "--batch-size", 32, "--json"]
    r = cli("finetune", *common, "--no-augment", "--out", tmp_path / "cached")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    assert summary["config"]["hparams"]["augment"] is False
    assert summary["prefix_cache"]["used"] is True and summary["prefix_cache"]["images"] > 0
    r = cli("finetune", *common, "--no-augment", "--no-prefix-cache", "--out", tmp_path / "off")
    assert r.exit_code == 0, r.output
    off = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert off["prefix_cache"]["used"] is False and off["prefix_cache"]["reason"].startswith(
        "disabled"
    )
    assert off["test_acc"] == summary["test_acc"]  # the cache changes the speed, not the result
