"""dashboard: the Streamlit + Plotly browser UI; talks to the backend over HTTP only."""
