"""Task arithmetic, TIES and Model Stock on partial ingredients: each against a hand computation
on tiny deltas (ingredients that tuned different units among them), their refusals, the held-out
choice of task arithmetic's scale, streaming, and one CLI run end to end."""

from __future__ import annotations

import importlib
import json
import math
import weakref
from collections.abc import Iterator, Mapping

import pytest
import torch
from typer.testing import CliRunner

from pft.checkpoint import base_from_meta, load_delta
from pft.cli import app
from pft.errors import PftError
from pft.soups import model_stock, task_arithmetic, ties
from pft.soups.registry import get_method
from pft.soups.task_arithmetic import scale_grid
from pft.soups.ties import trim

T = torch.tensor
MICRO = ["--model", "pft/vit-micro", "--random", "--dataset", "synthetic"]


def vit(**tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    """A one-block ViT state dict (every tensor the unit map needs), zeros unless given; keys
    use ``__`` for ``.``."""
    shapes = {
        "patch_embed.proj.weight": (2,),
        "blocks.0.norm1.weight": (2,),
        "blocks.0.attn.qkv.weight": (2, 2),
        "blocks.0.norm2.weight": (2,),
        "blocks.0.mlp.fc1.weight": (2, 2),
        "norm.weight": (2,),
        "head.weight": (3, 2),
    }
    given = {k.replace("__", "."): v for k, v in tensors.items()}
    return {n: given.get(n, torch.zeros(s)).to(torch.float32) for n, s in shapes.items()}


QKV, NORM1 = "blocks.0.attn.qkv.weight", "blocks.0.norm1.weight"
FC1, NORM2, HEAD = "blocks.0.mlp.fc1.weight", "blocks.0.norm2.weight", "head.weight"


def tuned(full: Mapping[str, torch.Tensor], *names: str) -> dict[str, torch.Tensor]:
    """A partial ingredient: only the tensors it tuned."""
    return {n: full[n] for n in names}


# --- task arithmetic ------------------------------------------------------------------------

BASE = vit(
    blocks__0__attn__qkv__weight=T([[1.0, 2.0], [3.0, 4.0]]),
    blocks__0__mlp__fc1__weight=T([[1.0, 1.0], [1.0, 1.0]]),
    head__weight=T([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
)
# A tuned ATTN.0 and the head, B FFN.0 and the head, C ATTN.0 and the head.
A = {QKV: T([[2.0, 2.0], [3.0, 6.0]]), HEAD: T([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])}
B = {FC1: T([[3.0, 1.0], [1.0, 0.0]]), HEAD: T([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])}
C = {QKV: T([[0.0, 3.0], [3.0, 4.0]]), HEAD: T([[1.0, 0.0], [0.0, 1.0], [1.0, 5.0]])}


def test_task_arithmetic_with_a_fixed_scale_by_hand():
    merged = task_arithmetic.merge([A, B, C], BASE, scale=0.5)
    # qkv: deltas [[1,0],[0,2]] (A) + [[-1,1],[0,0]] (C) = [[0,1],[0,2]]; B did not tune it
    torch.testing.assert_close(merged.soup[QKV], T([[1.0, 2.5], [3.0, 5.0]]))
    # fc1: only B, delta [[2,0],[0,-1]]
    torch.testing.assert_close(merged.soup[FC1], T([[2.0, 1.0], [1.0, 0.5]]))
    # head: deltas of A, B and C touch one element each: +1, +2, +4 (times 0.5)
    torch.testing.assert_close(merged.soup[HEAD], T([[1.5, 0.0], [0.0, 2.0], [1.0, 3.0]]))
    assert set(merged.soup) == {QKV, FC1, HEAD}  # nobody tuned the rest: it stays the base
    assert merged.selected == [0, 1, 2]
    assert merged.mixing["scale"] == 0.5 and merged.mixing["grid"] == []
    units = merged.mixing["units"]
    assert list(units) == ["ATTN.0", "FFN.0", "head"]
    assert {g: u["ingredients"] for g, u in units.items()} == {"ATTN.0": 2, "FFN.0": 1, "head": 3}
    assert all(u["weight"] == 0.5 for u in units.values())


def test_task_arithmetic_chooses_the_best_held_out_scale():
    # The held-out score (a deterministic function of the soup, as make_soup's scorer is)
    # prefers head[0][0] near 1.3: the summed head delta there is +1, so scale 0.3 is best.
    seen = []

    def score(soup):
        seen.append(float(soup[HEAD][0, 0]))
        return -abs(float(soup[HEAD][0, 0]) - 1.3)

    merged = task_arithmetic.merge([A, B, C], BASE, score=score)
    grid = merged.mixing["grid"]
    assert [g["scale"] for g in grid] == pytest.approx([0.1 * k for k in range(1, 11)])
    assert merged.mixing["scale"] == pytest.approx(0.3)
    best = max(grid, key=lambda g: g["heldout"])
    assert best["scale"] == merged.mixing["scale"]
    assert seen == pytest.approx([1.0 + 0.1 * k for k in range(1, 11)])  # one soup per value
    torch.testing.assert_close(merged.soup[QKV], T([[1.0, 2.3], [3.0, 4.6]]))


def test_task_arithmetic_ties_keep_the_smallest_scale_and_the_grid_is_a_param():
    merged = task_arithmetic.merge(
        [A, C], BASE, score=lambda s: 0.5, scale_min=0.2, scale_max=0.8, scale_steps=4
    )
    assert [g["scale"] for g in merged.mixing["grid"]] == [0.2, 0.4, 0.6, 0.8]
    assert merged.mixing["scale"] == 0.2  # the score must strictly rise
    assert scale_grid(1.0, 1.0, 1) == [1.0]


def test_task_arithmetic_refusals_name_their_field():
    with pytest.raises(PftError, match="held-out") as exc:
        task_arithmetic.merge([A, C], BASE)  # no scorer and no fixed scale
    assert exc.value.field == "scale"
    method = get_method("task_arithmetic")
    with pytest.raises(PftError, match="must not exceed") as exc:
        method.validate({"scale_min": 0.9, "scale_max": 0.5})
    assert exc.value.field == "scale_min"
    params = method.validate({"scale": 0.7})
    assert method.heldout_candidates(3, params) == 0  # a fixed scale needs no held-out split
    assert method.heldout_candidates(3, method.validate({})) == 10


# --- TIES -----------------------------------------------------------------------------------

TIES_BASE = vit(blocks__0__norm1__weight=torch.ones(5))


def test_trim_keeps_the_largest_magnitudes():
    d = T([3.0, -1.0, 0.5, -2.0, 0.1])
    torch.testing.assert_close(trim(d, 0.4), T([3.0, 0.0, 0.0, -2.0, 0.0]))
    torch.testing.assert_close(trim(d, 0.01), T([3.0, 0.0, 0.0, 0.0, 0.0]))  # at least one
    torch.testing.assert_close(trim(d, 1.0), d)


def test_ties_by_hand_over_ingredients_that_tuned_different_units():
    one = torch.ones(5)
    d1 = T([3.0, -1.0, 0.5, -2.0, 0.1])
    d2 = T([-1.0, -4.0, 2.0, 1.0, 0.2])
    d3 = T([2.0, 1.0, -3.0, 0.3, -0.1])
    fc1 = T([[0.5, -2.0], [1.0, 0.1]])
    ingredients = [
        {NORM1: one + d1},
        {NORM1: one + d2},
        {NORM1: one + d3, FC1: fc1},  # the only one that tuned FFN.0
    ]
    merged = ties.merge(ingredients, TIES_BASE, density=0.4)
    # trimmed (top 2 of 5): [3,0,0,-2,0], [0,-4,2,0,0], [2,0,-3,0,0]; summed [5,-4,-1,-2,0]:
    # signs [+,-,-,-,0]; the 0 takes the majority sign (-). Agreeing values: element 0 {3,2}
    # -> 2.5; element 1 {-4}; element 2 {-3} (2 disagrees); element 3 {-2}; element 4 none -> 0.
    torch.testing.assert_close(merged.soup[NORM1], one + T([2.5, -4.0, -3.0, -2.0, 0.0]))
    # one tuner: its delta trimmed to its top 2 of 4 (-2 and 1); the base is 0
    torch.testing.assert_close(merged.soup[FC1], T([[0.0, -2.0], [1.0, 0.0]]))
    assert set(merged.soup) == {NORM1, FC1}
    units = merged.mixing["units"]
    assert units["ATTN.0"] == {"weight": pytest.approx(5 / 15), "ingredients": 3}
    assert units["FFN.0"] == {"weight": pytest.approx(2 / 4), "ingredients": 1}
    assert merged.mixing["density"] == 0.4 and merged.mixing["scale"] == 1.0
    scaled = ties.merge(ingredients, TIES_BASE, density=0.4, scale=0.5)
    torch.testing.assert_close(scaled.soup[NORM1], one + 0.5 * T([2.5, -4.0, -3.0, -2.0, 0.0]))


def test_ties_at_full_density_keeps_every_agreeing_value():
    merged = ties.merge([A, C], BASE, density=1.0)
    # qkv deltas [[1,0],[0,2]] and [[-1,1],[0,0]]: element (0,0) sums to 0 and takes the
    # majority sign (+: the other sums are positive or 0); only A's +1 agrees there.
    torch.testing.assert_close(merged.soup[QKV], T([[2.0, 3.0], [3.0, 6.0]]))
    torch.testing.assert_close(merged.soup[HEAD], T([[2.0, 0.0], [0.0, 1.0], [1.0, 5.0]]))


# --- Model Stock ----------------------------------------------------------------------------

MS_BASE = vit(blocks__0__norm1__weight=T([1.0, 1.0]), head__weight=torch.ones(3, 2))


def test_model_stock_by_hand_per_unit():
    # ATTN.0 (norm1 + qkv) tuned by ingredients 0 and 1: deltas (1,0 | 1,0,0,0) and
    # (1,0 | 0,1,0,0): cos = 1/2, t = 2·(1/2) / (1 + 1/2) = 2/3.
    # head tuned by all three: deltas e1, e2, e1+e2 (first two elements): pairwise cosines
    # 0, 1/√2, 1/√2 -> cos = √2/3, t = 3c / (1 + 2c).
    # FFN.0 tuned only by ingredient 2.
    e1, e2 = T([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), T([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    ones = torch.ones(3, 2)
    ingredients = [
        {NORM1: T([2.0, 1.0]), QKV: T([[1.0, 0.0], [0.0, 0.0]]), HEAD: ones + e1},
        {NORM1: T([2.0, 1.0]), QKV: T([[0.0, 1.0], [0.0, 0.0]]), HEAD: ones + e2},
        {FC1: T([[5.0, 0.0], [0.0, 5.0]]), HEAD: ones + e1 + e2},
    ]
    merged = model_stock.merge(ingredients, MS_BASE)
    t = 2 / 3
    torch.testing.assert_close(merged.soup[NORM1], T([1.0 + t, 1.0]))
    torch.testing.assert_close(merged.soup[QKV], T([[t / 2, t / 2], [0.0, 0.0]]))
    c = math.sqrt(2) / 3
    t_head = 3 * c / (1 + 2 * c)
    torch.testing.assert_close(merged.soup[HEAD], ones + t_head * (2 / 3) * (e1 + e2))
    torch.testing.assert_close(merged.soup[FC1], T([[5.0, 0.0], [0.0, 5.0]]))  # keep: t = 1
    units = merged.mixing["units"]
    assert units["ATTN.0"] == {
        "weight": pytest.approx(t),
        "ingredients": 2,
        "cos": pytest.approx(0.5),
    }
    assert units["head"]["weight"] == pytest.approx(t_head)
    assert units["head"]["cos"] == pytest.approx(c)
    assert units["FFN.0"] == {"weight": 1.0, "ingredients": 1, "cos": None}
    assert merged.mixing["weight"] == "t"

    kept_base = model_stock.merge(ingredients, MS_BASE, single_tuner="base")
    assert FC1 not in kept_base.soup and kept_base.mixing["units"]["FFN.0"]["weight"] == 0.0
    with pytest.raises(PftError, match="FFN.0 was tuned only by ingredient 2") as exc:
        model_stock.merge(ingredients, MS_BASE, single_tuner="refuse")
    assert exc.value.field == "ingredients"


def test_model_stock_refuses_a_single_ingredient():
    with pytest.raises(PftError, match="at least 2 ingredients.*got 1") as exc:
        model_stock.merge([A], BASE)
    assert exc.value.field == "ingredients"


def test_model_stock_opposed_deltas_keep_the_base_and_aligned_ones_the_mean():
    up = {HEAD: MS_BASE[HEAD] + 1.0}
    down = {HEAD: MS_BASE[HEAD] - 1.0}
    opposed = model_stock.merge([up, down], MS_BASE)  # cos = -1, clamped to 0: t = 0
    torch.testing.assert_close(opposed.soup[HEAD], MS_BASE[HEAD])
    assert opposed.mixing["units"]["head"]["cos"] == pytest.approx(-1.0)
    assert opposed.mixing["units"]["head"]["weight"] == 0.0
    twice = {HEAD: MS_BASE[HEAD] + 2.0}
    aligned = model_stock.merge([up, twice], MS_BASE)  # cos = 1: t = 1, the mean
    torch.testing.assert_close(aligned.soup[HEAD], MS_BASE[HEAD] + 1.5)
    assert model_stock.ratio(0.5, 2) == pytest.approx(2 / 3)


# --- shared checks --------------------------------------------------------------------------


@pytest.mark.parametrize("module", [task_arithmetic, ties, model_stock])
def test_bad_ingredients_are_named(module):
    with pytest.raises(PftError, match="ingredient 1: tensor 'head.weight' has shape"):
        module.merge([A, {HEAD: torch.zeros(2, 2)}], BASE, scale=1.0)
    with pytest.raises(PftError, match="'zz' does not exist"):
        module.merge([A, {"zz": torch.zeros(1)}], BASE, scale=1.0)


@pytest.mark.parametrize("module", [task_arithmetic, ties, model_stock])
def test_buffers_are_statistics_averaged_over_their_tuners(module):
    # A tuned BatchNorm's running variance and counter travel in its deltas: they are averaged
    # (a scaled sum of variance deltas would turn negative), the weights are merged.
    var, count = "patch_embed.bn.running_var", "patch_embed.bn.num_batches_tracked"
    base = vit() | {var: T([1.0, 1.0]), count: T(0)}
    one = {var: T([0.2, 0.4]), count: T(10), HEAD: torch.ones(3, 2)}
    two = {var: T([0.4, 0.6]), count: T(20), HEAD: torch.ones(3, 2) * 2}
    merged = module.merge([one, two], base, scale=3.0, buffers={var})
    torch.testing.assert_close(merged.soup[var], T([0.3, 0.5]))
    assert merged.soup[count].dtype == torch.int64 and int(merged.soup[count]) == 15
    assert list(merged.soup) == [HEAD, var, count]  # in the base's order
    assert "stem" not in merged.mixing["units"]  # statistics carry no mixing weight


class Tracked(Mapping[str, torch.Tensor]):
    """A lazy ingredient like a safetensors file: each access makes the tensor afresh (the same
    values every time) and counts it until it is freed."""

    live = 0
    peak = 0

    def __init__(self, seed: int, base: Mapping[str, torch.Tensor]) -> None:
        self.seed, self.base = seed, base

    def __getitem__(self, name: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1000 + sorted(self.base).index(name))
        value = self.base[name] + torch.randn(self.base[name].shape, generator=g)
        Tracked.live += 1
        Tracked.peak = max(Tracked.peak, Tracked.live)
        weakref.finalize(value, Tracked._freed)
        return value

    @staticmethod
    def _freed() -> None:
        Tracked.live -= 1

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


@pytest.mark.parametrize("module", [task_arithmetic, ties, model_stock])
def test_methods_hold_one_ingredient_tensor_at_a_time(module):
    base = vit()
    Tracked.live = Tracked.peak = 0
    ingredients = [Tracked(i, base) for i in range(12)]
    merged = module.merge(ingredients, base, scale=0.5)
    # Every tensor of 12 ingredients passed through; at most one was resident at a time (plus
    # the ones the soup keeps: none, every soup tensor is computed in the base's dtype).
    assert set(merged.soup) == set(base)
    assert Tracked.peak == 1


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def partial_runs(tmp_path_factory):
    """Partial fine-tuning runs of the built-in tiny setup: two attn_only seeds, one ffn_only."""
    root = tmp_path_factory.mktemp("partial")
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PFT_DATA_DIR", str(root / "data"))
        for name, strategy, seed in (
            ("a1", "attn_only", 1),
            ("a2", "attn_only", 2),
            ("f3", "ffn_only", 3),
        ):
            r = runner.invoke(
                app,
                ["finetune", *MICRO, "--strategy", strategy, "--epochs", "1", "--batch-size", "64"]
                + ["--lr", "0.003", "--seed", str(seed), "--out", str(root / name), "--json"],
            )
            assert r.exit_code == 0, r.output
        yield root


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("model_stock", []),
        ("ties", ["--param", "density=0.5"]),
        ("task_arithmetic", ["--param", "scale_steps=3"]),
    ],
)
def test_cli_builds_each_new_method_end_to_end(tmp_path, monkeypatch, partial_runs, method, params):
    monkeypatch.setenv("PFT_DATA_DIR", str(partial_runs / "data"))
    paths = [partial_runs / n for n in ("a1", "a2", "f3")]
    out = tmp_path / "soup.safetensors"
    r = CliRunner().invoke(
        app,
        ["soup", method, *map(str, paths), "--out", str(out), "--dataset", "synthetic"]
        + ["--device", "cpu", *params, "--json"],
    )
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["method"] == method and 0.0 <= result["test_acc"] <= 1.0
    units = result["mixing"]["units"]
    assert units["head"]["ingredients"] == 3
    assert units["ATTN.0"]["ingredients"] == 2 and units["FFN.0"]["ingredients"] == 1
    soup, meta = load_delta(out)
    assert meta["strategy"] == f"soup:{method}"
    assert meta["strategy_params"]["mixing"] == result["mixing"]  # the lineage records them
    # The saved soup is the method applied to the checkpoints in process.
    loaded = [load_delta(p)[0] for p in paths]
    base = {k: v.detach().clone() for k, v in base_from_meta(meta).state_dict().items()}
    kwargs = {"scale": result["mixing"]["scale"]} if method == "task_arithmetic" else {}
    kwargs |= {k: v for k, v in result["params"].items() if not k.startswith("scale_")}
    registered = get_method(method)
    again = importlib.import_module(registered.module).merge(
        loaded, base, **registered.validate(kwargs)
    )
    assert soup.keys() == again.soup.keys()
    for name in soup:
        torch.testing.assert_close(soup[name], again.soup[name])
    if method == "task_arithmetic":
        assert len(result["mixing"]["grid"]) == 3
        assert (
            "chosen on held-out"
            in CliRunner()
            .invoke(app, ["soup", method, *map(str, paths), "--device", "cpu", *params])
            .stdout
        )
