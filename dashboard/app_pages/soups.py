"""Soups: pick compatible ingredients (finished fine-tuning jobs of one model and dataset), a
method and shift sets; then the greedy trace and the soup against its best ingredient and the
uniform soup, in distribution and under shifts."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data
from dashboard.client import get_client
from dashboard.soup_view import (
    comparison_scores,
    family,
    family_label,
    incompatibility,
    trace_points,
)
from dashboard.ui import backend_errors, flash, init_state, job_label, show_flash, table

METHODS = {
    "uniform": "average every ingredient",
    "greedy": "add ingredients by held-out accuracy, keep each only if it helps (Wortsman 2022)",
    "masked": "average only the tensors each ingredient tuned, on the pre-trained base",
}

init_state()
st.title("Model soups")
show_flash()

with backend_errors("loading jobs"):
    finetunes = data.all_jobs(kind="finetune")
    soups = data.all_jobs(kind="soup")
    datasets = data.datasets()

st.subheader("New soup")
finished = [j for j in finetunes if j.get("status") == "succeeded"]
if not finished:
    st.info(
        "No finished fine-tuning job yet: a soup averages finished fine-tuning jobs of one "
        "model and dataset. Launch an experiment with several seeds or strategies first."
    )
else:
    families: dict[tuple, list[dict]] = {}
    for job in finished:
        families.setdefault(family(job), []).append(job)
    keys = sorted(families, key=lambda f: -len(families[f]))
    chosen_family = st.selectbox(
        "Model and dataset",
        keys,
        key="soup-family",
        format_func=lambda f: f"{family_label(f)} ({len(families[f])} finished job(s))",
    )
    pool = families[chosen_family]
    by_id = {j["id"]: j for j in pool}
    ingredients = st.multiselect(
        "Ingredients",
        list(by_id),
        key="soup-ingredients",
        format_func=lambda i: job_label(by_id[i]),
    )
    method = st.radio(
        "Method",
        list(METHODS),
        key="soup-method",
        horizontal=True,
        format_func=str,
        help="; ".join(f"{k}: {v}" for k, v in METHODS.items()),
    )
    st.caption(METHODS[method])
    shift_names = [s["name"] for s in datasets.get("shifts", [])]
    shifts = st.multiselect("Evaluate under shifts", shift_names, key="soup-shifts")

    blocked = [(j, incompatibility(j, chosen_family)) for j in finetunes if j["id"] not in by_id]
    blocked = [(j, why) for j, why in blocked if why]
    if blocked:
        with st.expander(f"{len(blocked)} job(s) cannot be picked for this soup"):
            table(
                [{"job": j["id"], "why": why} for j, why in blocked[:500]],
                key="soup-blocked",
                hide_index=True,
                width="stretch",
            )
    if st.button(
        "Build soup",
        type="primary",
        key="submit-soup",
        disabled=len(ingredients) < 2,
        help="pick at least two ingredients",
    ):
        with backend_errors("the backend refused the soup"):
            created = get_client().create_soup(
                {"ingredients": ingredients, "method": method, "shifts": shifts}
            )
        data.clear()
        flash(
            f"Soup job {created.get('id')} ({created.get('status')}) created from "
            f"{len(ingredients)} ingredients."
        )
        st.session_state["soup-select"] = created.get("id")
        st.rerun()

st.divider()
st.subheader("Soups")
if not soups:
    st.info("No soup yet: pick two or more ingredients above and build one.")
    st.stop()
soup_jobs = {j["id"]: j for j in soups}
soup_job_id = st.selectbox(
    "Soup", list(soup_jobs), key="soup-select", format_func=lambda i: job_label(soup_jobs[i])
)
soup_job = soup_jobs[soup_job_id]
if soup_job.get("status") != "succeeded":
    st.info(
        f"Soup job {soup_job_id} is {soup_job.get('status')}: results appear when it "
        "succeeds." + (f" Error: {soup_job['error']}" if soup_job.get("error") else "")
    )
    st.stop()
with backend_errors(f"loading soup {soup_job_id}"):
    soup = data.soup(soup_job_id)
    ingredient_jobs = [data.job(i) for i in soup.get("ingredients", [])]

trace = trace_points(soup)
if trace:
    st.plotly_chart(charts.greedy_trace(trace), key="soup-trace", width="stretch")
uniform_jobs = [
    data.soup(j["id"])
    for j in soups
    if j.get("status") == "succeeded"
    and j["id"] != soup_job_id
    and (j.get("config") or {}).get("method") == "uniform"
    and sorted((j.get("config") or {}).get("ingredients", []))
    == sorted(soup.get("ingredients", []))
]
scores = comparison_scores(soup, ingredient_jobs, uniform_jobs[0] if uniform_jobs else None)
if scores:
    st.plotly_chart(charts.soup_comparison(scores), key="soup-comparison", width="stretch")
if soup.get("method") != "uniform" and not uniform_jobs:
    st.caption("Build a uniform soup of the same ingredients to compare against it.")
