"""New experiment: pick a model, a dataset, strategies, seeds and hyperparameters; preview the
tuned units of each strategy on the unit grid; launch one job per strategy x seed."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data
from dashboard.client import ApiError, get_client
from dashboard.selection import preview
from dashboard.shaping import normalize_angles
from dashboard.ui import backend_errors, init_state, job_label, show_flash, table, unit_map_of
from pft.errors import PftError

OTHER_MODEL = "other timm model…"
IMAGEFOLDER = "imagefolder:"

init_state()
st.title("New experiment")
show_flash()

with backend_errors("loading the catalogues"):
    models, datasets, strategies = data.models(), data.datasets(), data.strategies()
shift_names = [s["name"] for s in datasets.get("shifts", [])]

left, right = st.columns(2)
with left:
    names = [m["name"] for m in models] + [OTHER_MODEL]
    descriptions = {m["name"]: m.get("description", "") for m in models}
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
    by_name = {d["name"]: d for d in datasets.get("datasets", [])}
    dataset = st.selectbox(
        "Dataset",
        list(by_name),
        key="dataset",
        format_func=lambda n: f"{n} — {by_name[n].get('description', '')}".rstrip(" —"),
    )
    num_classes = int((by_name.get(dataset) or {}).get("num_classes") or 10)
    if dataset.startswith(IMAGEFOLDER) and dataset.endswith("NAME"):
        folder = st.text_input("Folder under the datasets root", key="imagefolder-name").strip()
        dataset = IMAGEFOLDER + folder

catalog = {s["name"]: s for s in strategies}
chosen = st.multiselect(
    "Strategies",
    list(catalog),
    default=[n for n in ("full", "attn_only") if n in catalog],
    key="strategies",
    help="; ".join(f"{s['name']}: {s.get('description', '')}" for s in strategies),
)
for name in chosen:
    st.caption(f"**{name}** — {catalog[name].get('description', '')}")

# The unit map answers "which units, how many parameters" before anything is launched.
unit_map, units_error = None, None
if model:
    try:
        unit_map = unit_map_of(data.units(model, num_classes))
    except ApiError as exc:
        units_error = exc.message

params: dict[str, dict] = {}
previews, preview_errors = [], []
if "angle_topk" in chosen:
    st.subheader("angle_topk (FAPFT)")
    with backend_errors("loading finished full fine-tuning jobs"):
        refs = [
            j
            for j in data.all_jobs(kind="finetune", status="succeeded")
            if j.get("strategy") == "full"
            and j.get("model") == model
            and j.get("dataset") == dataset
        ]
    c1, c2, c3 = st.columns(3)
    k = c1.number_input("K (units per group)", min_value=1, value=1, step=1, key="topk-k")
    order = c2.radio(
        "Order",
        ["smallest", "largest"],
        key="topk-order",
        horizontal=True,
        help="largest angles for hard tasks, smallest for easy ones",
    )
    if refs:
        labels = {j["id"]: job_label(j) for j in refs}
        ref_id = c3.selectbox(
            "Reference job (full fine-tuning)",
            list(labels),
            key="topk-reference",
            format_func=labels.get,
        )
        params["angle_topk"] = {"k": int(k), "order": order, "reference_job": ref_id}
    else:
        c3.info(
            f"No finished full fine-tuning job of {model} on {dataset} yet: launch one "
            "(strategy `full`) first; its angles choose the units."
        )
if "custom" in chosen:
    options = [u["name"] for u in unit_map["units"]] if unit_map else []
    picked = st.multiselect("Units to tune (custom)", options, key="custom-units")
    params["custom"] = {"units": picked}

if unit_map:
    for name in chosen:
        p = dict(params.get(name, {}))
        try:
            if name == "angle_topk":
                if "reference_job" not in p:
                    continue
                angles = normalize_angles(data.angles(p.pop("reference_job"))).units
                p["angles"] = angles
            previews.append(preview(unit_map, name, p))
        except (PftError, ApiError) as exc:
            preview_errors.append(f"{name}: {exc}")
    st.plotly_chart(
        charts.unit_selection_grid(unit_map, previews), key="unit-grid", width="stretch"
    )
    for message in preview_errors:
        st.warning(message)
elif units_error:
    st.info(f"No unit preview for {model}: {units_error}")

st.subheader("Seeds and hyperparameters")
h1, h2, h3, h4 = st.columns(4)
seeds_text = h1.text_input("Seeds (comma-separated)", "0", key="seeds")
epochs = h2.number_input("Epochs", min_value=1, max_value=1000, value=3, key="hp-epochs")
lr = h3.number_input(
    "Learning rate", min_value=1e-7, max_value=1.0, value=1e-3, format="%.6f", key="hp-lr"
)
batch_size = h4.number_input(
    "Batch size", min_value=1, max_value=4096, value=64, key="hp-batch-size"
)
shifts = st.multiselect(
    "Evaluate under shifts after training", shift_names, key="experiment-shifts"
)
name = st.text_input("Experiment name", value=f"{model} on {dataset}", key="experiment-name")

if st.button("Launch", type="primary", key="submit-experiment", disabled=not chosen or not model):
    try:
        seeds = [int(s) for s in seeds_text.replace(" ", "").split(",") if s]
    except ValueError:
        st.error(f"seeds must be whole numbers separated by commas, got {seeds_text!r}")
        st.stop()
    body = {
        "name": name,
        "model": model,
        "dataset": dataset,
        "strategies": [{"name": n, **params.get(n, {})} for n in chosen],
        "seeds": seeds or [0],
        "hparams": {"epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size)},
        "shifts": shifts,
    }
    with backend_errors("the backend refused the experiment"):
        created = get_client().create_experiment(body)
    data.clear()
    st.session_state["submitted_jobs"] = created.get("jobs", [])
    st.session_state["last_experiment"] = (created.get("experiment") or {}).get("id")

if st.session_state["submitted_jobs"]:
    jobs = st.session_state["submitted_jobs"]
    st.success(
        f"Experiment #{st.session_state.get('last_experiment')} created with "
        f"{len(jobs)} job(s); follow them on the Jobs page."
    )
    table(
        [
            {
                "job": j.get("id"),
                "strategy": j.get("strategy"),
                "seed": j.get("seed"),
                "status": j.get("status"),
            }
            for j in jobs
        ],
        key="submitted-jobs",
        hide_index=True,
    )
