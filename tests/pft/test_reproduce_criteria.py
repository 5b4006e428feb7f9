"""The study's criteria phase (issue 15.2) and its caching recipe (issue 14.5): the plan, the
comparison with the full-run angles and the verdicts against FAPFT, on made-up records (the
quick study in test_reproduce.py runs it end to end)."""

from __future__ import annotations

import pytest

from pft.criteria.registry import CRITERIA
from pft.errors import PftError
from pft.reproduce.analysis import DatasetAnalysis, criteria_comparison, strategy_rows
from pft.reproduce.plan import (
    CHEAP_CRITERIA,
    CRITERION_TOPK,
    PRESETS,
    REFERENCE_CRITERION,
    RunSpec,
    count_plan,
    criteria_runs,
    family,
    fapft_label,
    get_preset,
    selector_k,
    to_spec,
)
from pft.reproduce.report import _criteria_text
from pft.reproduce.results import Record, mean_scores

UNITS = [{"name": f"{g}.{b}", "group": g, "block": b} for b in range(4) for g in ("ATTN", "FFN")]


def test_cheap_criteria_are_every_registry_criterion_but_the_reference():
    assert set(CHEAP_CRITERIA) == set(CRITERIA) - {REFERENCE_CRITERION}
    assert {"gradient_norm", "fisher", "short_angle"} <= set(CHEAP_CRITERIA)


def test_plan_yields_the_criteria_runs_at_fapfts_rate_and_middle_k():
    p = get_preset("reduced")
    t = p.targets[0]
    runs = criteria_runs(p, t, 3e-3)
    assert len(runs) == len(CHEAP_CRITERIA) * p.seeds
    assert {(r.criterion, r.seed) for r in runs} == {
        (c, s) for c in CHEAP_CRITERIA for s in range(p.seeds)
    }
    assert {(r.strategy, r.k, r.order, r.lr, r.phase) for r in runs} == {
        (CRITERION_TOPK, selector_k(p), "largest", 3e-3, "criteria")
    }
    assert selector_k(get_preset("full")) == 6 and selector_k(get_preset("quick")) == 2
    assert fapft_label(p, t) == f"angle_topk largest k={selector_k(p)}"
    assert family(CRITERION_TOPK) == "angle_topk"
    assert len({r.run_id for r in runs}) == len(runs)
    assert runs[0].label == f"criterion_topk {runs[0].criterion} largest k=6"
    assert RunSpec.from_dict(runs[0].to_dict()) == runs[0]
    # counted in the plan (the progress bar and the report's completeness check)
    assert count_plan(p).runs == 58 + len(CHEAP_CRITERIA) * p.seeds  # 58 before the phase
    assert PRESETS["quick"].criteria_batches == 2


def test_study_runs_without_augmentation_so_that_prefixes_can_be_cached():
    for preset in PRESETS.values():
        assert preset.augment is False
    p = get_preset("quick")
    spec = criteria_runs(p, p.targets[0], 1e-3)[0]
    with pytest.raises(PftError, match="criterion_topk runs need the scores"):
        to_spec(spec, p)
    cfg = to_spec(spec, p, {"ATTN.0": 2.0})
    assert cfg.hparams.augment is False and cfg.hparams.prefix_cache is True
    assert cfg.strategy_params == {"k": 2, "order": "largest", "scores": {"ATTN.0": 2.0}}
    full = to_spec(RunSpec("synthetic", "full", 1e-3, 0, 2), p)
    assert full.hparams.augment is False


# --- made-up records ---------------------------------------------------------------------------


def _run(strategy, seed, test, *, phase="angle", criterion=None, angles=None, k=2, epochs=4):
    spec = RunSpec(
        "digits",
        strategy,
        1e-3,
        seed,
        epochs,
        k=k if strategy != "full" else None,
        order="largest" if strategy != "full" else None,
        phase=phase,
        criterion=criterion,
    )
    summary = {
        "heldout_acc": test,
        "heldout_loss": 1 - test,
        "test_acc": test,
        "train_seconds": 10.0 if epochs == 4 else 2.5,
        "strategy": {"tuned_params": 1000 if strategy == "full" else 300, "tuned_fraction": 0.3},
        "shifts": {},
    }
    units = [u | {"angle_deg": (angles or {}).get(u["name"], 0.0)} for u in UNITS]
    return Record(spec, summary, unit_angles=dict(angles or {}), units=units, wall_seconds=12.0)


def _angles(seed):
    """Deeper units move more; seed s perturbs one unit."""
    out = {u["name"]: 1.0 + u["block"] + (0.1 if u["group"] == "FFN" else 0.0) for u in UNITS}
    out["ATTN.0"] += 0.05 * seed
    return out


def _scores(name, seed, values):
    return {
        "criterion": name,
        "units": [
            {"name": u["name"], "group": u["group"], "score": values[u["name"]]} for u in UNITS
        ],
        "seconds": 0.5 + seed,
    }


def _study(gap_fisher=0.2):
    """FAPFT at 80% (+1 point per seed); gradient_norm 0.2 points below on every seed (an
    interval inside the ±1-point margin), fisher ``gap_fisher`` below, short_angle level."""
    seeds = range(3)
    fulls = [_run("full", s, 0.85 + 0.01 * s, phase="seeds", angles=_angles(s)) for s in seeds]
    fapft = [_run("angle_topk", s, 0.80 + 0.01 * s) for s in seeds]
    short = [_angles(s) | {"ATTN.1": 5.0} for s in seeds]  # one unit out of order
    cheap = [_run("full", s, 0.6, phase="cheap", angles=short[s], epochs=1) for s in seeds]
    acc = {"gradient_norm": 0.002, "fisher": gap_fisher, "short_angle": 0.0}
    crit = [
        _run(CRITERION_TOPK, s, 0.80 + 0.01 * s - acc[c], phase="criteria", criterion=c)
        for c in CHEAP_CRITERIA
        for s in seeds
    ]
    reverse = {u["name"]: -v for u, v in zip(UNITS, _angles(0).values(), strict=True)}
    scores = {
        "gradient_norm": {s: _scores("gradient_norm", s, _angles(s)) for s in seeds},
        "fisher": {s: _scores("fisher", s, reverse) for s in seeds},
    }
    records = fulls + fapft + cheap + crit
    chosen = {"full": 1e-3, "angle_topk largest k=2": 1e-3}
    rows = strategy_rows(records, chosen)
    c = criteria_comparison(
        records,
        fulls,
        rows,
        scores,
        UNITS,
        (1, 2),
        k=2,
        fapft="angle_topk largest k=2",
        margin=0.01,
    )
    return c, records, rows


def test_criteria_comparison_scores_agreement_cost_and_accuracy():
    c, _, _ = _study()
    by = {e["criterion"]: e for e in c["rows"]}
    assert set(by) == set(CHEAP_CRITERIA)
    # gradient_norm's scores are the angles themselves: ρ = 1 on every seed, full overlap.
    assert by["gradient_norm"]["rho"].mean == pytest.approx(1.0)
    assert by["gradient_norm"]["overlap"] == {1: 1.0, 2: 1.0}
    assert by["fisher"]["rho"].mean == pytest.approx(-1.0, abs=0.01)  # reversed
    assert by["fisher"]["overlap"][1] == 0.0
    assert by["gradient_norm"]["cost"].mean == pytest.approx(1.5)  # 0.5, 1.5, 2.5 s
    assert by["short_angle"]["cost"].mean == pytest.approx(2.5)  # the short runs' training
    assert c["reference_cost"].mean == pytest.approx(10.0)
    assert by["gradient_norm"]["test"].mean == pytest.approx(0.808)
    assert by["gradient_norm"]["test"].n == 3
    names = c["matrix"]["names"]
    assert names[0] == REFERENCE_CRITERION and set(names[1:]) == set(CHEAP_CRITERIA)
    assert (
        mean_scores(
            {
                0: _scores("x", 0, {u["name"]: 1.0 for u in UNITS}),
                1: _scores("x", 1, {u["name"]: 3.0 for u in UNITS}),
            }
        )["FFN.3"]
        == 2.0
    )


def test_verdicts_against_fapft_follow_the_numbers():
    c, _, _ = _study(gap_fisher=0.05)
    by = {e["criterion"]: e for e in c["rows"]}
    # the same seeds, a constant −0.2-point gap: its interval lies inside the ±1-point margin
    grad = by["gradient_norm"]["vs_fapft"]["test"]
    assert grad["diff"].mean == pytest.approx(-0.002)
    assert grad["outcome"] == "equivalent"
    fisher = by["fisher"]["vs_fapft"]["test"]
    assert fisher["outcome"] == "worse" and fisher["diff"].hi < -0.01
    assert by["short_angle"]["vs_fapft"]["test"]["outcome"] == "equivalent"
    assert by["gradient_norm"]["vs_full"]["test"]["outcome"] == "worse"


def test_report_section_states_the_numbers_and_what_follows(tmp_path):
    c, records, rows = _study(gap_fisher=0.05)
    a = DatasetAnalysis(
        dataset="digits",
        rows=rows,
        lr_grid={},
        pareto=[],
        units=UNITS,
        angles={},
        angle_seeds=3,
        stability={},
        cheap={"pairs": []},
        soups=[],
        criteria=c,
        guard={"ok": True},
    )
    text = _criteria_text(a, get_preset("reduced"))
    assert "| criterion | cost s | Spearman ρ vs full-run angles | top-K overlap K=1 |" in text
    grad = next(line for line in text.splitlines() if line.startswith("| `gradient_norm`"))
    assert "| 1.5 |" in grad and "| 100% | 100% |" in grad
    assert "80.8 [" in grad and "| -0.2 [" in grad
    assert "**equivalent**" in grad
    fisher = next(line for line in text.splitlines() if line.startswith("| `fisher`"))
    assert "**worse**" in fisher and "-1.00" in fisher
    assert "| `angle` (FAPFT, `angle_topk largest k=2`) | 10.0 | reference |" in text
    assert "`gradient_norm` agrees best with the full-run angle ranking" in text
    assert "`fisher` rank the units opposite to the full-run angles" in text
    assert "Equivalent to or better than FAPFT" in text and "`gradient_norm`" in text
    assert "`fisher`" not in text.split("Equivalent to or better than FAPFT")[1].split(".")[0]
    a.guard = {"ok": False, "reasons": ["chance"]}
    assert "support no conclusion" in _criteria_text(a, get_preset("reduced"))


def test_no_criterion_matching_fapft_is_said_plainly():
    c, _, rows = _study(gap_fisher=0.05)
    for e in c["rows"]:
        e["vs_fapft"]["test"]["outcome"] = "inconclusive"
    a = DatasetAnalysis("digits", rows, {}, [], UNITS, {}, 3, {}, {"pairs": []}, [], criteria=c)
    assert "No cheap criterion is shown to match FAPFT" in _criteria_text(a, get_preset("quick"))
