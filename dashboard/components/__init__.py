"""The dashboard's own Streamlit components (``streamlit.components.v1``), each a folder with
its page; everything they load is served by the dashboard itself (they work offline)."""
