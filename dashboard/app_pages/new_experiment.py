"""New experiment: pick a model, a dataset, strategies (with their parameters), seeds and
hyperparameters; preview the tuned units of each strategy on the unit grid; launch one job per
strategy x seed.

Strategies, their parameters and what each tunes come from the API: the catalogue
(``/catalog/strategies``), the unit map with the parameter-free selections
(``/models/{model}/units``) and ``POST /preview`` for a strategy with parameters.
"""

from __future__ import annotations

import streamlit as st

from contract.api import SelectionPublic
from contract.vocab import JobKind, JobStatus
from dashboard import charts, data
from dashboard.client import ApiError, get_client
from dashboard.layout import unit_grid
from dashboard.params import param_widgets
from dashboard.ui import backend_errors, init_state, reference_order, show_flash, table

OTHER_MODEL = "other timm model…"
IMAGEFOLDER = "imagefolder:"
# The hyperparameter the "Seeds" box sets: one job per seed (`POST /experiments`'s `seeds`).
SEED = "seed"

init_state()
st.title("New experiment")
show_flash()

with backend_errors("loading the catalogues"):
    models, datasets, strategies = data.models(), data.datasets(), data.strategies()
    hparam_entry = data.hparams()
shift_names = [s.name for s in datasets.shifts]

left, right = st.columns(2)
with left:
    names = [m.name for m in models] + [OTHER_MODEL]
    descriptions = {m.name: m.description for m in models}
    choice = st.selectbox(
        "Model",
        names,
        key="model",
        format_func=lambda n: f"{n} — {descriptions[n]}" if descriptions.get(n) else n,
    )
    model = choice
    if choice == OTHER_MODEL:
        model = st.text_input(
            "timm model name", key="timm-model", placeholder="vit_small_patch16_224.augreg_in21k"
        ).strip()
with right:
    by_name = {d.name: d for d in datasets.datasets}
    dataset = st.selectbox(
        "Dataset",
        list(by_name),
        key="dataset",
        format_func=lambda n: f"{n} — {by_name[n].description}".rstrip(" —"),
    )
    num_classes = by_name[dataset].num_classes or 10  # an image folder: counted at run time
    if dataset.startswith(IMAGEFOLDER) and dataset.endswith("NAME"):
        folder = st.text_input("Folder under the datasets root", key="imagefolder-name").strip()
        dataset = IMAGEFOLDER + folder

if choice == OTHER_MODEL and model:  # the picker: does this timm model map onto units?
    try:
        row = next((r for r in data.model_rows(model, int(num_classes)).items), None)
    except ApiError as exc:
        st.warning(f"{model}: {exc.message}")
    else:
        if row is not None and row.mapped:
            groups = ", ".join(f"{g} ({n})" for g, n in row.groups.items())
            st.caption(
                f"{row.model}: mapped — {row.depth} blocks, groups {groups}, "
                f"{row.total_params:,} parameters"
            )
        elif row is not None:
            (st.warning if row.mapped is False else st.info)(f"{row.model}: {row.reason}")

catalog = {s.name: s for s in strategies}
chosen = st.multiselect(
    "Strategies",
    list(catalog),
    default=list(catalog)[:1],
    key="strategies",
    help="; ".join(f"{s.name}: {s.description}" for s in strategies),
)
for name in chosen:
    st.caption(f"**{name}** — {catalog[name].description}")

# The unit map answers "which units, how many parameters" before anything is launched.
preview, units_error = None, None
if model:
    try:
        preview = data.units(model, int(num_classes))
    except ApiError as exc:
        units_error = exc.message
unit_names = [u.name for u in preview.unit_map.units] if preview else []

params: dict[str, dict] = {}
problems: dict[str, str] = {}  # what blocks Launch: "<field>" -> why
with_params = [n for n in chosen if catalog[n].params]
if with_params:
    with backend_errors("loading finished fine-tuning jobs"):
        references = reference_order(
            [
                j
                for j in data.all_jobs(kind=JobKind.FINETUNE, status=JobStatus.SUCCEEDED)
                if j.model == model and j.dataset == dataset
            ]
        )
    for name in with_params:
        st.subheader(name)
        filled = param_widgets(
            catalog[name],
            prefix=f"param-{name}",
            units=unit_names,
            jobs=references,
            no_jobs=f"no finished fine-tuning job of {model} on {dataset} yet",
        )
        params[name] = filled.values
        problems |= {f"{name}.{p}": why for p, why in filled.problems.items()}

if preview:
    ready = {s.name: s for s in preview.strategies}  # the parameter-free strategies
    selections: list[SelectionPublic] = []
    refused: list[str] = []
    for name in chosen:
        if name in ready:
            selections.append(ready[name])
            continue
        if any(f.startswith(f"{name}.") for f in problems):
            continue  # its widgets show what to fix; nothing to preview yet
        body = {"model": model, "dataset": dataset, "strategy": {"name": name, **params[name]}}
        try:
            selection = data.preview(body)
        except ApiError as exc:
            refused.append(f"{name}: {exc.message}")
            continue
        selections.append(selection)
        for note in selection.notes:
            st.caption(f"{name}: {note}")
        if selection.provisional:
            st.caption(
                f"{name}: the units shown stand in until its missing inputs are chosen; "
                "the parameter counts are exact."
            )
    st.plotly_chart(
        charts.unit_selection_grid(unit_grid(preview.unit_map), selections),
        key="unit-grid",
        width="stretch",
    )
    for message in refused:
        st.warning(message)
elif units_error:
    st.info(f"No unit preview for {model}: {units_error}")

st.subheader("Seeds and hyperparameters")
seeds_text = st.text_input(
    "Seeds (comma-separated): one job per strategy and seed", "0", key="seeds"
)
try:
    seeds = [int(s) for s in seeds_text.replace(" ", "").split(",") if s] or [0]
except ValueError:
    seeds = []
    problems["seeds"] = f"seeds must be whole numbers separated by commas, got {seeds_text!r}"
    st.error(problems["seeds"])
# Every hyperparameter of the API's request schema, with its default and accepted range.
hp = param_widgets(hparam_entry, prefix="hp", fixed={SEED: seeds[0] if seeds else 0}, columns=4)
problems |= hp.problems
hparams = {k: v for k, v in hp.values.items() if k != SEED}
shifts = st.multiselect(
    "Evaluate under shifts after training", shift_names, key="experiment-shifts"
)


def cost_preview(model: str, dataset: str, chosen: list[str], hparams: dict) -> None:
    """Per chosen strategy, the predicted time and peak memory (``GET /cost``), or a button
    that queues the calibration they need."""
    st.subheader("Cost preview")
    if not model or not chosen or {"epochs", "batch_size"} & set(problems):
        st.caption("Choose a model, strategies and valid epochs and batch size to see costs.")
        return
    run = {k: hparams.get(k) for k in ("epochs", "batch_size", "augment", "prefix_cache")}
    try:
        cost = data.cost(model, dataset, **run)
    except ApiError as exc:
        st.info(f"No cost preview: {exc.message}")
        return
    if not cost.calibrated:
        if cost.pending_job is not None:
            pending = data.job(cost.pending_job)
            st.info(
                f"Calibrate job #{pending.id} of {model} on {dataset} is {pending.status}; "
                "the predictions appear here when it has succeeded."
            )
            return
        st.info(
            f"No calibration of {model} on {dataset} yet: it measures a few training steps "
            "on the worker's device once, then every run's cost is predicted from it."
        )
        if st.button(f"Calibrate {model} on the worker", key="calibrate"):
            body = {"kind": "calibrate", "model": model, "dataset": dataset}
            with backend_errors("the backend refused the calibration"):
                job = get_client().create_job(body)
            data.cost.clear()
            st.session_state["calibrate_job"] = job.id
            st.rerun()
        return
    if st.session_state.get("calibrate_job") == cost.calibration_job:
        st.success(f"Calibrate job #{cost.calibration_job} has finished.")
    by_name = {p.strategy: p for p in cost.strategies}
    rows = [
        {
            "strategy": name,
            "predicted time": _duration(by_name[name].seconds),
            "peak memory (MB)": round(by_name[name].peak_mb, 1),
            "prefix cached": "yes" if by_name[name].prefix_cached else "no",
            "note": "units ranked at launch: a guess" if by_name[name].provisional else "",
        }
        for name in chosen
        if name in by_name
    ]
    table(rows, key="cost-preview", hide_index=True)
    missing = [n for n in chosen if n not in by_name]
    st.caption(
        f"Per job, on {cost.device_kind} (calibrate job #{cost.calibration_job}): "
        f"{cost.epochs} epochs of {cost.train_images:,} images, batch {cost.batch_size}, "
        f"evaluation of {cost.eval_images:,} images per epoch included."
        + (
            f" No prediction for {', '.join(missing)} (their units are chosen at launch)."
            if missing
            else ""
        )
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


cost_preview(model, dataset, chosen, hparams)

default_name = f"{model} on {dataset}"
name = st.text_input("Experiment name", key="experiment-name", placeholder=default_name).strip()

blockers = list(problems.values())
if not chosen:
    blockers.insert(0, "choose at least one strategy")
if not model:
    blockers.insert(0, "name a timm model")
if blockers:
    st.caption("Launch is disabled until these are fixed: " + "; ".join(blockers))
if st.button("Launch", type="primary", key="submit-experiment", disabled=bool(blockers)):
    body = {
        "name": name or default_name,
        "model": model,
        "dataset": dataset,
        "strategies": [{"name": n, **params.get(n, {})} for n in chosen],
        "seeds": seeds,
        "hparams": hparams,
        "shifts": shifts,
    }
    with backend_errors("the backend refused the experiment"):
        created = get_client().create_experiment(body)
    data.clear()
    st.session_state["submitted_jobs"] = created.jobs
    st.session_state["last_experiment"] = created.experiment.id

if st.session_state["submitted_jobs"]:
    jobs = st.session_state["submitted_jobs"]
    st.success(
        f"Experiment #{st.session_state.get('last_experiment')} created with "
        f"{len(jobs)} job(s); follow them on the Jobs page."
    )
    table(
        [
            {"job": j.id, "strategy": j.strategy, "seed": j.seed, "status": str(j.status)}
            for j in jobs
        ],
        key="submitted-jobs",
        hide_index=True,
    )
