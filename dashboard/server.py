"""The dashboard's entry point: ``streamlit run dashboard/server.py`` (the launcher and compose
start it so).

The router (``dashboard/app.py``) served as a ``streamlit.App`` with the door
(`dashboard.door.Door`) as its outermost middleware, Streamlit's documented hook for ASGI
middleware: Host/Origin checks, the login and the anti-framing headers apply to every request
Streamlit answers, its websocket included. ``streamlit run`` finds ``app`` and serves it on
``--server.address`` / ``--server.port`` as usual.
"""

from __future__ import annotations

import streamlit as st
from starlette.middleware import Middleware
from streamlit import config as st_config

from dashboard.config import get_settings
from dashboard.door import Door, Policy


def policy() -> Policy:
    """The door's policy for this process (read on the first request, config loaded)."""
    return get_settings().door_policy(st_config.get_option("server.address"))


get_settings()  # a bad PFT_DASHBOARD_* variable stops the start here, naming the variable
app = st.App("app.py", middleware=[Middleware(Door, policy=policy)])
