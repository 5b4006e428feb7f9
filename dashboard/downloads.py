"""The "Download checkpoint" button of the Jobs and Soups pages.

A job's checkpoint is its ``.safetensors`` artifact (a fine-tuning job's delta, a soup, a
pre-trained backbone). The dashboard fetches the bytes from the API with its own token only
when the button is clicked (Streamlit's deferred download): the browser receives the file,
never the token, and nothing is held in memory for a button nobody clicks.
"""

from __future__ import annotations

from collections.abc import Iterable

import streamlit as st

from contract.api import ArtifactPublic, JobPublic
from contract.vocab import JobStatus
from dashboard import data
from dashboard.client import ApiError, get_client

CHECKPOINT_SUFFIX = ".safetensors"


def checkpoint(artifacts: Iterable[ArtifactPublic]) -> ArtifactPublic | None:
    """The job's checkpoint among its artifacts (None: it stored none)."""
    return next((a for a in artifacts if a.file_name.endswith(CHECKPOINT_SUFFIX)), None)


def checkpoint_button(job: JobPublic, *, key: str) -> None:
    """The button (with the file's size and sha256), or a caption saying why there is none."""
    if job.status != JobStatus.SUCCEEDED:
        return
    try:
        found = checkpoint(data.artifacts(job.id))
    except ApiError as exc:
        st.caption(f"Checkpoint: {exc.message}")
        return
    if found is None:
        st.caption(f"Job {job.id} stored no checkpoint.")
        return
    job_id, kind = job.id, found.kind
    st.download_button(
        "Download checkpoint",
        data=lambda: get_client().artifact_file(job_id, kind),
        file_name=found.file_name,
        mime="application/octet-stream",
        key=key,
        on_click="ignore",
        help="the file as the API checked it against the sha256 recorded when it was written",
    )
    st.caption(f"{found.file_name} · {found.size_bytes / 1e6:.2f} MB · sha256 `{found.sha256}`")
