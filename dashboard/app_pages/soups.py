"""Soups: pick compatible ingredients (finished fine-tuning jobs of one model and dataset), a
merge method (the catalogue's, ``/catalog/soups``, with its parameters) and shift sets; then the
soup's lineage (a table and a graph), its per-unit mixing weights (a heatmap, for methods that
weigh units), its trace and the soup against its best ingredient and the other soups of the
same ingredients, in distribution and under shifts."""

from __future__ import annotations

import streamlit as st

from contract.vocab import JobKind, JobStatus
from dashboard import charts, data
from dashboard.client import get_client
from dashboard.downloads import checkpoint_button
from dashboard.params import param_widgets
from dashboard.soup_view import (
    comparison_scores,
    family,
    family_label,
    incompatibility,
    lineage_graph,
    lineage_rows,
    mixing_matrix,
    mixing_notes,
    same_recipe,
    trace_points,
)
from dashboard.ui import backend_errors, flash, init_state, job_label, show_flash, table

init_state()
st.title("Model soups")
show_flash()

with backend_errors("loading jobs"):
    finetunes = data.all_jobs(kind=JobKind.FINETUNE)
    soups = data.all_jobs(kind=JobKind.SOUP)
    datasets = data.datasets()
    methods = {m.name: m for m in data.soup_methods()}

st.subheader("New soup")
finished = [j for j in finetunes if j.status == JobStatus.SUCCEEDED]
if not finished:
    st.info(
        "No finished fine-tuning job yet: a soup averages finished fine-tuning jobs of one "
        "model and dataset. Launch an experiment with several seeds or strategies first."
    )
else:
    families: dict[tuple, list] = {}
    for job in finished:
        families.setdefault(family(job), []).append(job)
    keys = sorted(families, key=lambda f: -len(families[f]))
    chosen_family = st.selectbox(
        "Model and dataset",
        keys,
        key="soup-family",
        format_func=lambda f: f"{family_label(f)} ({len(families[f])} finished job(s))",
    )
    by_id = {j.id: j for j in families[chosen_family]}
    ingredients = st.multiselect(
        "Ingredients",
        list(by_id),
        key="soup-ingredients",
        format_func=lambda i: job_label(by_id[i]),
    )
    method = st.radio(
        "Method",
        list(methods),
        key="soup-method",
        horizontal=True,
        help="; ".join(f"{m.name}: {m.description}" for m in methods.values()),
    )
    st.caption(methods[method].description)
    filled = param_widgets(methods[method], prefix=f"soup-param-{method}")
    params = filled.values
    shifts = st.multiselect(
        "Evaluate under shifts", [s.name for s in datasets.shifts], key="soup-shifts"
    )

    blocked = [(j, incompatibility(j, chosen_family)) for j in finetunes if j.id not in by_id]
    blocked = [(j, why) for j, why in blocked if why]
    if blocked:
        with st.expander(f"{len(blocked)} job(s) cannot be picked for this soup"):
            table(
                [{"job": j.id, "why": why} for j, why in blocked[:500]],
                key="soup-blocked",
                hide_index=True,
                width="stretch",
            )
    if st.button(
        "Build soup",
        type="primary",
        key="submit-soup",
        disabled=len(ingredients) < 2 or not filled.ok,
        help="pick at least two ingredients"
        + "".join(f"; {why}" for why in filled.problems.values()),
    ):
        body = {"ingredients": ingredients, "method": method, "shifts": shifts}
        if params:
            body["params"] = params
        with backend_errors("the backend refused the soup"):
            created = get_client().create_soup(body)
        data.clear()
        flash(
            f"Soup job {created.id} ({created.status}) created from {len(ingredients)} ingredients."
        )
        st.session_state["soup-select"] = created.id
        st.rerun()

st.divider()
st.subheader("Soups")
if not soups:
    st.info("No soup yet: pick two or more ingredients above and build one.")
    st.stop()
soup_jobs = {j.id: j for j in soups}
soup_job_id = st.selectbox(
    "Soup", list(soup_jobs), key="soup-select", format_func=lambda i: job_label(soup_jobs[i])
)
soup_job = soup_jobs[soup_job_id]

# Lineage: the ingredients the soup was made of, where they came from and what they scored.
with backend_errors(f"loading the ingredients of soup {soup_job_id}"):
    ingredient_ids = [int(i) for i in soup_job.config["ingredients"]]
    made_of = {i: data.job(i) for i in ingredient_ids}
    built = data.soup(soup_job_id) if soup_job.status == JobStatus.SUCCEEDED else None
st.caption(f"Soup #{soup_job_id}: {soup_job.config['method']} of {len(ingredient_ids)} ingredients")
verdicts = built.trace if built else ()
c1, c2 = st.columns([3, 2])
with c1:
    table(lineage_rows(ingredient_ids, made_of, verdicts), key="soup-lineage")
c2.plotly_chart(
    charts.soup_lineage_graph(lineage_graph(soup_job, made_of, verdicts)),
    key="soup-lineage-graph",
    width="stretch",
)
if soup_job.status != JobStatus.SUCCEEDED:
    st.info(
        f"Soup job {soup_job_id} is {soup_job.status}: results appear when it "
        "succeeds." + (f" Error: {soup_job.error}" if soup_job.error else "")
    )
    st.stop()
checkpoint_button(soup_job, key="soup-download")
with backend_errors(f"loading soup {soup_job_id}"):
    soup = built or data.soup(soup_job_id)
    ingredient_jobs = [made_of.get(i) or data.job(i) for i in soup.ingredients]
    # Other soups of the same ingredients (their spec names them) to compare against.
    recipe = sorted(soup.ingredients)
    others = same_recipe(
        soup,
        [
            data.soup(j.id)
            for j in soups
            if j.status == JobStatus.SUCCEEDED and sorted(j.config["ingredients"]) == recipe
        ],
    )

matrix = mixing_matrix(soup, made_of)
if matrix:
    st.plotly_chart(charts.mixing_heatmap(matrix), key="soup-mixing", width="stretch")
    notes = mixing_notes(soup)
    if notes:
        st.caption(f"{soup.method}: {notes}")
else:
    st.caption(f"{soup.method} weighs no unit on its own: it has no per-unit mixing weights.")
trace = trace_points(soup)
if trace:
    st.plotly_chart(charts.soup_trace(trace), key="soup-trace", width="stretch")
scores = comparison_scores(soup, ingredient_jobs, others)
if scores:
    st.plotly_chart(charts.soup_comparison(scores), key="soup-comparison", width="stretch")
if not others:
    st.caption("Build a soup of the same ingredients with another method to compare with it.")
