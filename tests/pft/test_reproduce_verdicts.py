"""Issue 17's verdicts: t quantiles and intervals against hand computations, the four outcomes,
the chance guard, learning-rate grids that widen, and claim 3 at matched ingredient counts."""

from __future__ import annotations

import math

import pytest

from pft.reproduce.analysis import (
    NO_VERDICT,
    chance_guard,
    claim2,
    claim3,
    combine,
    compare,
    strategy_rows,
)
from pft.reproduce.plan import SELECTION_SEED, STUDY_SOUPS, RunSpec, get_preset, ladder
from pft.reproduce.report import _verdict_table
from pft.reproduce.results import Record, at_edge, widen
from pft.reproduce.stats import (
    Interval,
    binomial_sd,
    mean_interval,
    noise_interval,
    outcome,
    paired_interval,
    t_cdf,
    t_quantile,
)

# --- t quantiles and intervals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "q"),
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262), (29, 2.045)],
)
def test_t_quantiles_match_the_tables(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-q, abs=5e-4)
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-12)


def test_t_quantiles_tend_to_the_normal_and_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    assert t_quantile(0.975, 10_000) == pytest.approx(1.95996, abs=1e-3)
    for df in (1, 2, 3, 7, 30, 200):
        for p in (0.6, 0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)


def test_mean_interval_by_hand():
    iv = mean_interval([0.80, 0.82, 0.84])  # mean .82, sd .02, se .02/√3, t_{.975,2} 4.303
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert iv.mean == pytest.approx(0.82)
    assert (iv.lo, iv.hi) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    assert iv.n == 3 and iv.sd == pytest.approx(0.02)
    assert math.isinf(mean_interval([0.5]).half_width)  # one seed: no interval
    assert mean_interval([]).n == 0


def test_paired_interval_pairs_the_same_seeds_by_hand():
    a = {0: 0.90, 1: 0.92, 2: 0.91, 3: 0.99}  # seed 3 has no partner: left out
    b = {0: 0.88, 1: 0.90, 2: 0.90}
    iv = paired_interval(a, b)  # differences .02 .02 .01: mean .01667, sd .005774
    half = 4.302653 * 0.0057735 / math.sqrt(3)
    assert iv.n == 3 and iv.mean == pytest.approx(0.05 / 3)
    assert iv.lo == pytest.approx(0.05 / 3 - half, abs=1e-6)
    assert iv.hi == pytest.approx(0.05 / 3 + half, abs=1e-6)
    assert iv.fmt() == "+1.7 [+0.2, +3.1]"
    assert outcome(iv, 0.01) == "better"


def test_noise_interval_of_single_models_by_hand():
    iv = noise_interval(0.03, [0.01, 0.02], df=4)  # t_{.975,4} 2.776 × sqrt(.01² + .02²)
    assert iv.half_width == pytest.approx(2.776445 * math.sqrt(0.0005), abs=1e-6)
    assert math.isinf(noise_interval(0.03, [0.01], df=0).half_width)


# --- the four outcomes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0.01, 0.05, "better"),  # above zero, leaves the margin
        (-0.05, -0.01, "worse"),
        (-0.004, 0.008, "equivalent"),  # inside ±1 point
        (0.002, 0.008, "equivalent"),  # significant but too small to matter: stated up front
        (-0.02, 0.02, "inconclusive"),  # merely not significant: never "on par"
        (-0.001, 0.03, "inconclusive"),
        (-math.inf, math.inf, "inconclusive"),
    ],
)
def test_four_outcomes(lo, hi, expected):
    assert outcome(Interval((lo + hi) / 2, lo, hi, 3), margin=0.01) == expected


def test_the_margin_is_a_preset_setting():
    assert get_preset("full").margin == 0.01
    assert outcome(Interval(0.0, -0.015, 0.015, 3), margin=0.02) == "equivalent"
    assert outcome(Interval(0.0, -0.015, 0.015, 3), margin=0.01) == "inconclusive"


def _c(supports, against):
    return {"supports": supports, "against": against}


def test_claims_are_supported_only_by_better_or_equivalent_with_fewer_params():
    assert combine([_c(True, False), _c(True, False)]) == "supported"
    assert combine([_c(True, False), _c(False, False)]) == "partly supported"
    assert combine([_c(False, True), _c(False, True)]) == "not supported"
    assert combine([_c(False, True), _c(False, False)]) == "inconclusive"
    assert combine([]) == "inconclusive"


# --- rows from made-up records ---------------------------------------------------------------


def record(strategy, lr, seed, heldout, test, params=100, shift=None, classes=4, **kw):
    spec = RunSpec(
        "digits",
        strategy,
        lr,
        seed,
        4,
        phase=kw.get("phase", "seeds"),
        **{k: v for k, v in kw.items() if k in ("k", "order")},
    )
    summary = {
        "heldout_acc": heldout,
        "heldout_loss": 1 - heldout,
        "test_acc": test,
        "num_classes": classes,
        "strategy": {"tuned_params": params, "tuned_fraction": params / 1000},
        "shifts": {"blur": {"acc": shift if shift is not None else test - 0.1}},
        "epochs": [
            {"epoch": 1, "heldout_acc": heldout - 0.05},
            {"epoch": 2, "heldout_acc": heldout},
        ],
    }
    return Record(spec, summary, wall_seconds=1.0)


def rows_of(accs, jitter=(0.0, 0.01, 0.02)):
    recs = [
        record(s, 1e-3, seed, heldout=a, test=a + j, params=p)
        for s, (a, p) in accs.items()
        for seed, j in enumerate(jitter)
    ]
    return strategy_rows(recs, dict.fromkeys(accs, 1e-3))


def test_compare_rows_pairs_seeds_and_counts_parameters():
    full, attn = rows_of({"full": (0.80, 1000), "attn_only": (0.805, 300)})
    c = compare(attn, full, margin=0.01)
    assert c["diff"].mean == pytest.approx(0.005) and c["diff"].half_width == pytest.approx(0)
    assert c["outcome"] == "equivalent" and c["fewer"] and c["supports"]
    back = compare(full, attn, margin=0.01)
    assert back["outcome"] == "equivalent" and not back["supports"] and back["against"]
    assert attn.plateau.mean == pytest.approx(0.05)  # last-epoch held-out gain


def test_chance_guard():
    at_chance = rows_of({"full": (0.26, 1000), "attn_only": (0.27, 300)})
    g = chance_guard(at_chance, classes=4, chance_margin=0.05)
    assert not g["ok"] and g["chance"] == 0.25 and "does not clear chance" in g["reasons"][0]
    good = rows_of({"full": (0.80, 1000), "attn_only": (0.90, 300)})
    g = chance_guard(good, classes=4, chance_margin=0.05)
    assert g["ok"] and g["best"] == "attn_only"
    g = chance_guard(good, classes=4, chance_margin=0.05, random_init=True)
    assert not g["ok"] and "random-init" in g["reasons"][0]
    one_seed = rows_of({"full": (0.9, 1000)}, jitter=(0.0,))  # no interval from one seed
    assert not chance_guard(one_seed, classes=4, chance_margin=0.05)["ok"]


class _A:
    def __init__(self, rows, soups=(), ok=True):
        self.dataset, self.rows, self.soups, self.margin = "digits", rows, list(soups), 0.01
        self.guard = {"ok": ok, "reasons": [] if ok else ["at chance"]}

    def row(self, label):
        return next((r for r in self.rows if r.label == label), None)


def test_claim2_decides_on_the_best_topk_against_full_and_manual():
    recs = []
    for s, a, p, extra in [
        ("full", 0.80, 1000, {}),
        ("attn_only", 0.82, 300, {}),
        ("angle_topk", 0.86, 400, {"k": 2, "order": "largest"}),
        ("angle_topk", 0.84, 400, {"k": 2, "order": "smallest"}),
    ]:
        recs += [record(s, 1e-3, seed, a, a + 0.01 * seed, params=p, **extra) for seed in range(3)]
    rows = strategy_rows(recs, {r.label: 1e-3 for r in recs})
    c = claim2(_A(rows))
    assert c["best_topk"] == "angle_topk largest k=2"
    assert [x["outcome"] for x in c["deciding"]] == ["better", "better"]
    assert c["verdict"] == "supported"
    assert c["orders"][0]["diff"].mean == pytest.approx(-0.02)
    assert claim2(_A(rows, ok=False))["verdict"] == NO_VERDICT


# --- learning-rate grids that widen ----------------------------------------------------------


def test_ladder_steps():
    assert [ladder(x, up=True) for x in (1e-3, 3e-3, 1e-2)] == [3e-3, 1e-2, 3e-2]
    assert [ladder(x, up=False) for x in (1e-3, 3e-3, 1e-2)] == [3e-4, 1e-3, 3e-3]


def _grid(points):
    return [record("full", lr, SELECTION_SEED, h, 0.0, phase="grid") for lr, h in points]


def test_grid_widens_past_the_edge_of_the_chosen_rate():
    top = _grid([(1e-3, 0.5), (3e-3, 0.6)])
    assert at_edge(top) == {"full": "top"}
    assert [(s.lr, s.seed, s.phase) for s in widen(top)] == [(1e-2, SELECTION_SEED, "grid")]
    bottom = _grid([(1e-3, 0.6), (3e-3, 0.5)])
    assert [s.lr for s in widen(bottom)] == [3e-4]
    inside = _grid([(1e-3, 0.5), (3e-3, 0.6), (1e-2, 0.4)])
    assert at_edge(inside) == {} and widen(inside) == []
    single = _grid([(3e-3, 0.5)])
    assert sorted(s.lr for s in widen(single)) == [1e-3, 1e-2]
    reported = [record("full", 1e-2, 0, 0.99, 0.99)]  # reported seeds never choose
    assert at_edge(inside + reported) == {}


# --- claim 3 at matched ingredient counts ----------------------------------------------------


def _soup(name, params, tests, soup_test, soup_shift, n=None):
    ind = [
        {"run_id": f"{name}-{i}", "seed": i, "heldout": t, "test": t, "shifts": {"blur": t - 0.1}}
        for i, t in enumerate(tests[:n] if n else tests)
    ]
    scored = {"heldout": 0.9, "test": soup_test, "shifts": {"blur": soup_shift}}
    out = {"name": name, "individual": ind, "tuned_params": params}
    for m in STUDY_SOUPS:
        out[m] = dict(scored) | ({"selected": ["a"]} if m == STUDY_SOUPS[1] else {})
    return out


def test_claim3_compares_partial_and_full_soups_under_every_method():
    full = _soup("full", 1000, [0.80, 0.81, 0.82], 0.80, 0.70)
    good = _soup("attn_only", 300, [0.85, 0.86, 0.87], 0.90, 0.80)
    bad = _soup("attn_only", 300, [0.60, 0.61, 0.62], 0.60, 0.50)
    c = claim3(_A([], [full, good]))
    assert {p["method"] for p in c["pairs"]} == set(STUDY_SOUPS)
    assert all(p["comps"]["test"]["outcome"] == "better" for p in c["pairs"])
    assert c["verdict"] == "supported"
    # The noise interval: t_{.975,4} × sqrt(sd_partial² + sd_full²), sd = .01 on both sides.
    test = c["pairs"][0]["comps"]["test"]
    assert test["diff"].mean == pytest.approx(0.10)
    assert test["diff"].half_width == pytest.approx(2.776445 * math.sqrt(2) * 0.01, abs=1e-6)
    assert claim3(_A([], [full, bad]))["verdict"] == "not supported"
    assert claim3(_A([], [full, good], ok=False))["verdict"] == NO_VERDICT
    # Soups against their best ingredient, with a noise margin.
    vs_best = {(x["a"], x["metric"]): x for x in c["vs_best"]}
    assert vs_best[("full soup", "test")]["diff"].mean == pytest.approx(-0.02)
    unmatched = claim3(_A([], [full, _soup("attn_only", 300, [0.85, 0.86, 0.87], 0.9, 0.8, 2)]))
    assert unmatched["unmatched"] == ["attn_only"] and unmatched["verdict"] == "inconclusive"


def test_every_verdict_row_shows_difference_interval_margin_and_outcome():
    full, attn = rows_of({"full": (0.80, 1000), "attn_only": (0.90, 300)})
    table = _verdict_table([compare(attn, full, margin=0.01)])
    assert (
        "| comparison | metric | difference (points) | 95% interval | margin | outcome |" in table
    )
    assert "| `attn_only` − `full` | test | +10.0 | [+10.0, +10.0] | ±1.0 | **better** |" in table


def test_the_margin_can_be_overridden_and_is_named():
    from typer.testing import CliRunner

    from pft.cli.app import app
    from pft.cli.reproduce import reproduce as _registered  # noqa: F401
    from pft.reproduce.plan import customise

    p = customise(get_preset("quick"), margin=0.02)
    assert p.margin == 0.02 and p.name == "quick, margin=2 points"
    res = CliRunner().invoke(
        app, ["reproduce", "--quick", "--margin", "0", "--out", "/nonexistent"]
    )
    assert res.exit_code == 2 and "equivalence margin must lie in (0, 1)" in res.output


def test_seeds_that_tie_exactly_do_not_give_a_zero_width_interval():
    iv = paired_interval({0: 0.25, 1: 0.25}, {0: 0.25, 1: 0.25}, sd_floor=1 / 128)
    assert iv.half_width == pytest.approx(12.706205 * (1 / 128) / math.sqrt(2), abs=1e-6)
    assert outcome(iv, 0.01) == "inconclusive"  # two models stuck at chance prove nothing
    assert outcome(paired_interval({0: 0.25, 1: 0.25}, {0: 0.25, 1: 0.25}), 0.01) == "equivalent"
    assert binomial_sd(0.25, 300) == pytest.approx(0.025) and binomial_sd(0.5, None) == 0.0
    full, ffn = rows_of({"full": (0.25, 1000), "ffn_only": (0.25, 600)}, jitter=(0.0, 0.0))
    assert compare(ffn, full, 0.01, sd_floor=1 / 128)["outcome"] == "inconclusive"


def test_the_study_widens_grids_selects_on_an_unreported_seed_and_matches_soups(
    tmp_path, monkeypatch
):
    """The phases of `executor.Study` with training and souping stubbed out: held-out accuracy
    peaks at lr 1e-2 for every strategy, which the grids (quick: 1e-3 .. 3e-3) must reach."""
    from dataclasses import replace

    from pft.reproduce import executor

    def fake_run(self, spec, angles):
        heldout = 0.9 - 0.1 * abs(math.log10(spec.lr) + 2)
        rec = record(
            spec.strategy,
            spec.lr,
            spec.seed,
            heldout,
            heldout,
            phase=spec.phase,
            k=spec.k,
            order=spec.order,
        )
        rec.spec = spec
        self.bar.update(1)
        return rec

    made = {}

    def fake_soup(name, ingredients, shifts, device):
        made[name] = [(r.label, r.spec.seed, r.spec.lr) for r in ingredients]
        return {"name": name, "ingredients": [r.spec.run_id for r in ingredients]}

    def fake_runs(self, specs, angles=None):
        return [fake_run(self, spec, angles) for spec in specs]

    monkeypatch.setattr(executor.Study, "_runs", fake_runs)  # `_run` of one spec too
    monkeypatch.setattr(executor, "soup_runs", fake_soup)
    preset = replace(get_preset("quick"), widen=3)
    state = executor.run_study(preset, tmp_path, progress=False)["targets"]["synthetic"]
    assert set(state["chosen_lr"].values()) == {1e-2}  # inside every widened grid
    runs = state["runs"]
    assert "full-lr0.03-s1000-e2" in runs and "full-lr0.01-s0-e2" in runs
    assert not any("-s0-" in r and "lr0.001" in r for r in runs)  # no reported seed selects
    assert {len(v) for v in made.values()} == {preset.seeds}  # matched ingredient counts
    assert all(seed != SELECTION_SEED for v in made.values() for _, seed, _ in v)
    mixed = next(v for k, v in made.items() if k.startswith("mixed"))
    assert {label for label, _, _ in mixed} == set(preset.mixed_soup)
