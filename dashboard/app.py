"""pft-lab dashboard: the router (``streamlit run dashboard/app.py``).

Pages live in ``dashboard/app_pages/`` and only render; data comes from the backend over HTTP
(``dashboard.client``), figures from ``dashboard.charts``. The default page is served at ``/``,
the others at ``/jobs``, ``/results``, ``/angles`` and ``/soups``.

Served through ``dashboard/server.py``, the door (`dashboard.door`) checks Host and Origin, asks
for the login and forbids framing before this script runs. A server that should ask for a login
but was started on this file directly (no door in front) renders nothing but that advice.
"""

from __future__ import annotations

import streamlit as st
from streamlit import config as st_config

from dashboard import data, door
from dashboard.client import ApiError
from dashboard.config import get_settings
from dashboard.ui import init_state

st.set_page_config(page_title="pft-lab", page_icon=":material/science:", layout="wide")
_served = getattr(st_config, "_server_mode", None) is not None  # not under AppTest
if (
    _served
    and not door.active()
    and get_settings().door_policy(st.get_option("server.address")).login
):
    st.error(
        "This dashboard is reachable from other machines but was started without its login: "
        "start it with `streamlit run dashboard/server.py` (as `pft up` and compose do)."
    )
    st.stop()
init_state()

pages = [
    st.Page(
        "app_pages/new_experiment.py",
        title="New experiment",
        icon=":material/science:",
        default=True,
    ),
    st.Page("app_pages/jobs.py", title="Jobs", icon=":material/list:", url_path="jobs"),
    st.Page(
        "app_pages/results.py", title="Results", icon=":material/insights:", url_path="results"
    ),
    st.Page("app_pages/angles.py", title="Angles", icon=":material/grid_on:", url_path="angles"),
    st.Page("app_pages/soups.py", title="Soups", icon=":material/blender:", url_path="soups"),
]
page = st.navigation(pages)

with st.sidebar:
    st.caption(f"API: {get_settings().resolved_api_url}")
    try:
        health = data.health()
        if health.status == "ok":
            st.caption(":green[●] backend healthy")
        else:
            problems = [
                problem
                for problem, bad in (
                    ("database down", not health.database),
                    ("database not writable", health.database and not health.database_writable),
                    ("broker down", not health.broker),
                )
                if bad
            ]
            st.caption(f":orange[●] backend {health.status}: {', '.join(problems)}")
    except ApiError as exc:
        st.caption(f":red[●] {exc.message}")

page.run()
