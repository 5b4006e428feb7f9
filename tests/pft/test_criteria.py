"""Selection criteria (`pft.criteria`): each against a hand computation on a tiny model, seeded
determinism, errors that name the field, `pft rank --json`, top-K over a criterion's scores,
and `compare` against hand-computed rank statistics."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from contract.api import RegistryEntry
from contract.vocab import AngleScope
from lab.cli import app
from pft.base_model import build_pretrained
from pft.checkpoint import delta_metadata, save_delta
from pft.criteria.compare import compare, spearman, topk_overlap
from pft.criteria.ranking import rank, score_units
from pft.criteria.registry import CRITERIA, catalogue, get_criterion
from pft.criteria.scores import Scores
from pft.datasets import DatasetSplits, Split
from pft.errors import PftError
from pft.jobs.specs import FinetuneSpec, Hparams
from pft.model_catalog import TEST_MODEL, unit_map_for
from pft.preprocess import data_config_for, prepare
from pft.reproduce.stats import ranks as average_ranks
from pft.strategies import (
    FULL_FINETUNING,
    STRATEGIES,
    reference_strategies,
    resolve_strategy,
)
from pft.training import train
from pft.units import build_unit_map

runner = CliRunner()
GRADIENT_NORM, FISHER, ANGLE, SHORT_ANGLE = "gradient_norm", "fisher", "angle", "short_angle"
CRITERION_TOPK, ANGLE_TOPK = "criterion_topk", "angle_topk"
PARTIAL = next(s.name for s in STRATEGIES.values() if s.paper)  # a strategy that freezes units
CPU = "cpu"


@pytest.fixture(autouse=True)
def one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- a tiny 2-block ViT and its data ---------------------------------------------------------


def tiny_vit():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=3,
        img_size=8,
        patch_size=4,
        depth=2,
        embed_dim=16,
        num_heads=2,
        in_chans=1,
    )
    um = build_unit_map(
        [(n, p.shape) for n, p in model.named_parameters()], model="tiny", num_classes=3
    )
    return model.eval(), um


def tiny_data(n=40):
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (n,), generator=g)
    split = Split(images, labels)
    return DatasetSplits("tiny", ("a", "b", "c"), split, split, split)


def hand_batch_grads(model, um, data, batches, batch_size, seed):
    """The mean-loss gradient of each batch by ``loss.backward()``, per unit concatenated."""
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
    params = dict(model.named_parameters())
    config = data_config_for(model)
    out = []
    for b in range(batches):
        idx = order[b * batch_size : (b + 1) * batch_size]
        x = prepare(data.train.images[idx], config, "cpu")
        model.zero_grad()
        F.cross_entropy(model(x), data.train.labels[idx]).backward()
        out.append(
            {
                u.name: torch.cat([params[t].grad.reshape(-1).double() for t in u.tensors])
                for u in um.units
            }
        )
    model.zero_grad()
    return out


def unit_weights(model, unit):
    params = dict(model.named_parameters())
    return torch.cat([params[t].detach().reshape(-1).double() for t in unit.tensors])


# --- each criterion against a hand computation -----------------------------------------------


def test_gradient_norm_is_the_mean_gradient_norm_over_the_weight_norm():
    model, um = tiny_vit()
    data = tiny_data()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scores = score_units(
        GRADIENT_NORM, model, um, data, seed=5, params={"batches": 3, "batch_size": 8}, device=CPU
    )
    grads = hand_batch_grads(model, um, data, 3, 8, seed=5)
    for u in um.units:
        mean = sum(g[u.name] for g in grads) / 3
        expected = float(mean.norm() / unit_weights(model, u).norm())
        assert scores.by_unit()[u.name] == pytest.approx(expected, rel=1e-5)
    assert [s.name for s in scores.units] == um.unit_names
    assert [s.group for s in scores.units] == [u.group for u in um.units]
    assert scores.criterion == GRADIENT_NORM and scores.seconds > 0
    # No weight moved, and the model's flags are as they were.
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_fisher_is_the_summed_squared_gradient_per_parameter():
    model, um = tiny_vit()
    data = tiny_data()
    scores = score_units(
        FISHER, model, um, data, seed=2, params={"batches": 4, "batch_size": 5}, device=CPU
    )
    grads = hand_batch_grads(model, um, data, 4, 5, seed=2)
    for u in um.units:
        expected = sum(float(g[u.name].square().sum()) for g in grads) / u.params
        assert scores.by_unit()[u.name] == pytest.approx(expected, rel=1e-5)
        assert u.params == unit_weights(model, u).numel()


def test_gradients_wrap_to_a_new_permutation_past_the_split():
    model, um = tiny_vit()
    small = tiny_data(n=6)
    scores = score_units(
        FISHER, model, um, small, seed=1, params={"batches": 3, "batch_size": 4}, device=CPU
    )
    assert all(math.isfinite(s.score) and s.score > 0 for s in scores.units)


def full_delta(tmp_path, strategy=FULL_FINETUNING, seed=1):
    """A delta of `strategy` on the test model with every tuned tensor moved at random."""
    base = build_pretrained(TEST_MODEL, 3, pretrained=False)
    um = unit_map_for(TEST_MODEL, 3)
    sel = resolve_strategy(um, strategy)
    g = torch.Generator().manual_seed(seed)
    state = base.state_dict()
    tensors = {t: state[t] + 0.05 * torch.randn(state[t].shape, generator=g) for t in sel.tensors}
    meta = delta_metadata(
        base_model=TEST_MODEL,
        model_overrides={},
        pretrained=False,
        num_classes=3,
        strategy=strategy,
        strategy_params={},
        dataset="synthetic",
        data_config={},
        hparams={"head_seed": 0, "seed": seed},
    )
    path = tmp_path / f"{strategy}.safetensors"
    save_delta(path, tensors, meta)
    return path, state, tensors, um


def test_angle_is_the_arccos_of_each_units_cosine(tmp_path):
    path, state, tensors, um = full_delta(tmp_path)
    scores = rank(TEST_MODEL, "synthetic", ANGLE, reference=path)
    for u in um.units:
        a = torch.cat([state[t].reshape(-1).double() for t in u.tensors])
        b = torch.cat([tensors[t].reshape(-1).double() for t in u.tensors])
        expected = math.degrees(math.acos(float(a @ b / (a.norm() * b.norm()))))
        assert scores.by_unit()[u.name] == pytest.approx(expected, abs=1e-6)
    # Its angles.json gives the same ranking.
    rows = [{"name": u, "angle_deg": s} for u, s in scores.by_unit().items()]
    angles = tmp_path / "angles.json"
    angles.write_text(json.dumps({"strategy": FULL_FINETUNING, "units": rows}))
    again = rank(TEST_MODEL, "synthetic", ANGLE, reference=angles)
    assert again.by_unit() == scores.by_unit()


def test_angle_needs_a_reference_of_a_run_that_tuned_every_unit(tmp_path):
    with pytest.raises(PftError, match="needs a reference") as exc:
        rank(TEST_MODEL, "synthetic", ANGLE)
    assert exc.value.field == "reference"
    path, *_ = full_delta(tmp_path, strategy=PARTIAL)
    with pytest.raises(PftError, match=reference_strategies()[0]) as exc:
        rank(TEST_MODEL, "synthetic", ANGLE, reference=path)
    assert exc.value.field == "reference"
    with pytest.raises(PftError, match="does not exist"):
        rank(TEST_MODEL, "synthetic", ANGLE, reference=tmp_path / "nothing.safetensors")


def test_short_angle_is_the_angles_of_a_short_full_run(tmp_path):
    params = {"epochs": 1, "lr": 3e-3, "batch_size": 128}
    scores = rank(
        TEST_MODEL, "synthetic", SHORT_ANGLE, seed=4, params=params, pretrained=False, device=CPU
    )
    hp = Hparams(epochs=1, lr=3e-3, batch_size=128, seed=4, head_seed=4)
    spec = FinetuneSpec(TEST_MODEL, "synthetic", FULL_FINETUNING, hparams=hp, pretrained=False)
    run = train(spec, tmp_path / "run", device="cpu")
    expected = {
        r["name"]: r["angle_deg"] for r in run.angles if r["scope"] == AngleScope.UNIT.value
    }
    assert scores.by_unit() == pytest.approx(expected, abs=1e-9)
    assert all(s.score > 0 for s in scores.units)


# --- determinism and errors ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gradient_norm", "fisher"])
def test_scores_are_deterministic_for_a_seed(name):
    params = {"batches": 2, "batch_size": 16}
    a = rank(TEST_MODEL, "synthetic", name, seed=3, params=params)
    b = rank(TEST_MODEL, "synthetic", name, seed=3, params=params)
    c = rank(TEST_MODEL, "synthetic", name, seed=4, params=params)
    assert a.by_unit() == b.by_unit()
    assert a.by_unit() != c.by_unit()  # the seed draws the data order and the head


def test_unknown_criterion_names_the_accepted_ones():
    with pytest.raises(PftError, match="close matches: gradient_norm") as exc:
        get_criterion("gradient_nrom")
    assert exc.value.field == "criterion"
    assert all(name in str(exc.value) for name in CRITERIA)


@pytest.mark.parametrize(
    ("criterion", "params", "field", "message"),
    [
        ("gradient_norm", {"batches": 0}, "batches", "batches must be an integer >= 1"),
        ("fisher", {"batch_size": 2.5}, "batch_size", "batch_size must be an integer"),
        ("angle", {"batches": 2}, "batches", "takes no parameter 'batches'"),
        ("short_angle", {"lr": 0.0}, "lr", "lr must be a number > 0"),
    ],
)
def test_bad_parameters_name_their_field(criterion, params, field, message):
    with pytest.raises(PftError, match=message) as exc:
        rank(TEST_MODEL, "synthetic", criterion, params=params)
    assert exc.value.field == field


def test_bad_seed_and_misplaced_reference(tmp_path):
    with pytest.raises(PftError, match="seed must be an integer >= 0") as exc:
        rank(TEST_MODEL, "synthetic", GRADIENT_NORM, seed=-1)
    assert exc.value.field == "seed"
    with pytest.raises(PftError, match="takes no reference") as exc:
        rank(TEST_MODEL, "synthetic", GRADIENT_NORM, reference=tmp_path)
    assert exc.value.field == "reference"


def test_registry_catalogue_and_flags():
    assert set(CRITERIA) == {GRADIENT_NORM, FISHER, ANGLE, SHORT_ANGLE}
    assert {CRITERION_TOPK, ANGLE_TOPK} <= set(STRATEGIES)
    for entry in catalogue():
        assert RegistryEntry.model_validate(entry).name in CRITERIA
    assert [c.name for c in CRITERIA.values() if c.needs_reference] == [ANGLE]
    assert [c.name for c in CRITERIA.values() if c.needs_training] == [SHORT_ANGLE]
    assert all(c.cost and c.description for c in CRITERIA.values())
    assert get_criterion(GRADIENT_NORM).validate({}) == {"batches": 8, "batch_size": 32}


# --- the CLI ---------------------------------------------------------------------------------


def test_rank_json_contract():
    args = ["rank", "--model", TEST_MODEL, "--dataset", "synthetic", "--criterion", FISHER]
    r = runner.invoke(app, [*args, "--batches", "2", "--seed", "1", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data) == {"criterion", "units", "seconds"}
    assert data["criterion"] == FISHER and data["seconds"] > 0
    um = unit_map_for(TEST_MODEL, 4)
    assert [u["name"] for u in data["units"]] == um.unit_names
    assert all(set(u) == {"name", "group", "score"} for u in data["units"])
    assert [u["group"] for u in data["units"]] == [u.group for u in um.units]
    assert "batch" in r.stderr  # the progress bar
    again = json.loads(
        runner.invoke(app, [*args, "--batches", "2", "--seed", "1", "--json"]).stdout
    )
    assert Scores.from_dict(again).by_unit() == Scores.from_dict(data).by_unit()
    table = runner.invoke(app, [*args, "--batches", "1"])
    assert table.exit_code == 0 and "FFN.3" in table.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--criterion", "gradient_nrom"], "accepted: angle, short_angle, gradient_norm, fisher"),
        (["--criterion", "gradient_norm", "--batches", "0"], "batches must be an integer >= 1"),
        (["--criterion", "angle", "--epochs", "2"], "takes no parameter 'epochs'"),
        (["--criterion", "angle"], "needs a reference"),
    ],
)
def test_rank_errors(extra, message):
    r = runner.invoke(app, ["rank", "--model", TEST_MODEL, "--dataset", "synthetic", *extra])
    assert r.exit_code == 2 and message in r.output


# --- top-K over a criterion's scores ---------------------------------------------------------


def test_topk_from_gradient_norm_selects_the_largest_scores_per_group():
    scores = rank(TEST_MODEL, "synthetic", GRADIENT_NORM, params={"batches": 2})
    um = unit_map_for(TEST_MODEL, 4)
    by_unit = scores.by_unit()
    sel = resolve_strategy(um, CRITERION_TOPK, k=2, scores=by_unit)
    expected = set()
    for units in um.groups.values():
        ranked = sorted(units, key=lambda u: by_unit[u.name], reverse=True)
        expected |= {u.name for u in ranked[:2]}
    assert set(sel.units) == expected and len(sel.units) == 4
    low = resolve_strategy(um, CRITERION_TOPK, k=2, order="smallest", scores=by_unit)
    assert set(low.units) == set(um.unit_names) - expected
    assert "scores" not in sel.to_dict()["params"]  # the lab-filled values stay out of sight


def test_topk_over_angles_is_the_papers_angle_topk():
    um = unit_map_for(TEST_MODEL, 3)
    angles = {u: float((7 * i) % 5) for i, u in enumerate(um.unit_names)}  # with ties
    for order in ("largest", "smallest"):
        paper = resolve_strategy(um, ANGLE_TOPK, k=2, order=order, angles=angles)
        general = resolve_strategy(um, CRITERION_TOPK, k=2, order=order, scores=angles)
        assert general.units == paper.units and general.tensors == paper.tensors


def test_topk_refuses_scores_missing_a_unit():
    um = unit_map_for(TEST_MODEL, 3)
    scores = dict.fromkeys(um.unit_names[1:], 1.0)
    with pytest.raises(PftError, match=f"missing unit '{um.unit_names[0]}'") as exc:
        resolve_strategy(um, CRITERION_TOPK, k=1, scores=scores)
    assert exc.value.field == "scores"


# --- comparing criteria ----------------------------------------------------------------------


def test_spearman_with_ties_by_hand():
    # ranks [1, 2.5, 2.5, 4] and [1, 3, 2, 4]: cov 4.5, variances 4.5 and 5
    assert average_ranks([1, 2, 2, 3]) == [1, 2.5, 2.5, 4]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([0.1, 5, 7], [1, 2, 3]) == pytest.approx(1.0)  # ranks, not values
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # a constant ranks nothing
    assert average_ranks([3, 3, 3]) == [2, 2, 2]


def rows(scores):
    return {
        "criterion": "x",
        "units": [{"name": n, "group": n.split(".")[0], "score": s} for n, s in scores.items()],
        "seconds": 0.0,
    }


def test_compare_pairs_and_cost_by_hand():
    a = {"ATTN.0": 3, "FFN.0": 1, "ATTN.1": 2, "FFN.1": 5, "ATTN.2": 1, "FFN.2": 4}
    b = {"ATTN.0": 1, "FFN.0": 2, "ATTN.1": 2, "FFN.1": 5, "ATTN.2": 3, "FFN.2": 0}
    c = dict(a)
    sa, sb = rows(a) | {"seconds": 2.0}, rows(b) | {"seconds": 0.5}
    result = compare({"a": sa, "b": sb, "c": Scores.from_dict(rows(c))}, k=1)
    assert result["cost"] == {"a": 2.0, "b": 0.5, "c": 0.0}
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    assert list(pairs) == [("a", "b"), ("a", "c"), ("b", "c")]
    # ranks of a: [4, 1.5, 3, 6, 1.5, 5]; of b: [2, 3.5, 3.5, 6, 5, 1]
    ra, rb = [4, 1.5, 3, 6, 1.5, 5], [2, 3.5, 3.5, 6, 5, 1]
    cov = sum((x - 3.5) * (y - 3.5) for x, y in zip(ra, rb, strict=True))
    var_a = sum((x - 3.5) ** 2 for x in ra)
    var_b = sum((y - 3.5) ** 2 for y in rb)
    assert pairs[("a", "b")]["spearman"] == pytest.approx(cov / math.sqrt(var_a * var_b))
    # k=1, largest: a picks ATTN.0 and FFN.1, b picks ATTN.2 and FFN.1: one of two
    assert pairs[("a", "b")]["topk_overlap"] == pytest.approx(0.5)
    assert pairs[("a", "c")] == {
        "a": "a",
        "b": "c",
        "spearman": pytest.approx(1.0),
        "topk_overlap": 1.0,
    }
    # k=2, smallest: a picks ATTN.2, ATTN.1 and FFN.0, FFN.2; b picks ATTN.0, ATTN.1 and
    # FFN.2, FFN.0: 3 of 4
    assert topk_overlap(
        [(n, n.split(".")[0], s) for n, s in a.items()],
        [(n, n.split(".")[0], s) for n, s in b.items()],
        k=2,
        order="smallest",
    ) == pytest.approx(0.75)


def test_compare_refuses_bad_k_and_order():
    with pytest.raises(PftError) as exc:
        compare({"a": rows({"ATTN.0": 1})}, k=0)
    assert exc.value.field == "k"
    with pytest.raises(PftError) as exc:
        compare({"a": rows({"ATTN.0": 1})}, k=1, order="biggest")
    assert exc.value.field == "order"
