"""Ctrl-C of `pft up` mid-epoch loses no work: `pft up` again resumes the job at the step it
stopped at, and it ends bit-identical to an uninterrupted run.

The launcher is started as `make up` does (the `pft` console script, in its own session) and
stopped with SIGTERM, as Ctrl-C in its terminal does. Its worker saves the running job's state
mid-epoch and gives the job back to the queue before the API stops; the next `pft up` of the
same data folder runs it on. Only the GPU is missing (PFT_DEVICE=cpu).
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from pathlib import Path

import pytest

from pft.store import ArtifactStore
from tests.lab.lab_process import LabProcess, kill_leftovers, lab_env, wait_gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(720)]

JOB = {
    "kind": "finetune",
    "model": "pft/vit-micro",
    "dataset": "synthetic",
    "pretrained": False,
    "strategy": {"name": "full"},
    # 8 short epochs: on an idle machine a run takes a few seconds, and the stop (the launcher
    # stops the dashboard first) must still land mid-run, not in the final phase
    "hparams": {"epochs": 8, "batch_size": 4, "seed": 5},
}
FINAL = {"succeeded", "failed", "cancelled"}


def _api(lab: LabProcess, method: str, path: str, body: object = None) -> dict:
    token = (lab.data_dir / "api_token").read_text().strip()
    req = urllib.request.Request(
        lab.api_url + "/api/v1" + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _wait(lab: LabProcess, job_id: int, until, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = _api(lab, "GET", f"/jobs/{job_id}")
        if until(job):
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}: {job}\n{lab.logs()}")
        time.sleep(0.05)


def _saved_state(data: Path, job_id: int) -> dict | None:
    folder = ArtifactStore(str(data / "artifacts")).latest_dir(job_id)
    try:
        return json.loads((folder / "state" / "state.json").read_text())["run"]
    except (OSError, TypeError, ValueError, KeyError):
        return None


def test_ctrl_c_of_the_launcher_mid_epoch_then_up_again_resumes_bit_identical(tmp_path: Path):
    env = lab_env(tmp_path / "data")
    lab = LabProcess.start(env)
    records: dict[str, dict] = {}
    try:
        lab.wait_up()
        reference = _api(lab, "POST", "/jobs", JOB)["id"]
        ref = _wait(lab, reference, lambda j: j["status"] in FINAL, 300, "the reference job")
        assert ref["status"] == "succeeded", ref

        job_id = _api(lab, "POST", "/jobs", JOB)["id"]
        # part-way into epoch 2 (its first epoch's checkpoint is saved)
        _wait(lab, job_id, lambda j: j["progress"] > 0.15, 120, "epoch 2 to be under way")
        records = lab.service_records()
        assert lab.stop() == 0, lab.output  # SIGTERM, as Ctrl-C in its terminal sends
        assert wait_gone(records) == [], f"processes left behind: {records}"
        saved = _saved_state(lab.data_dir, job_id)
        assert saved is not None and saved["epoch"] >= 1 and saved["step_in_epoch"] > 0, saved

        lab = LabProcess.start(env)  # `pft up` again, same data folder
        lab.wait_up()
        job = _wait(lab, job_id, lambda j: j["status"] in FINAL, 300, "the resumed job")
        assert job["status"] == "succeeded", job
        assert job["result"]["resumed_from_step"] == saved["global_step"]  # not an epoch start
        assert job["attempts"] == 1  # the stop gave its attempt back

        keys = ("epoch", "train_loss", "heldout_acc", "heldout_loss", "test_acc", "test_loss")
        metrics = [
            [{k: row[k] for k in keys} for row in _api(lab, "GET", f"/jobs/{j}/metrics")]
            for j in (job_id, reference)
        ]
        assert metrics[0] == metrics[1] and len(metrics[0]) == JOB["hparams"]["epochs"]
        deltas = []
        for j in (job_id, reference):
            (delta,) = [a for a in _api(lab, "GET", f"/jobs/{j}/artifacts") if a["kind"] == "delta"]
            deltas.append(
                (
                    delta["sha256"],
                    hashlib.sha256((lab.data_dir / "artifacts" / delta["path"]).read_bytes()),
                )
            )
        assert deltas[0][0] == deltas[1][0] == deltas[0][1].hexdigest() == deltas[1][1].hexdigest()
        records = lab.service_records()
        assert lab.stop() == 0, lab.output
        assert wait_gone(records) == []
    finally:
        # the services of the lab running now (the second `pft up`'s, after a restart) too: a
        # failure between the restart and the end must not leave its worker behind
        now = {f"now-{name}": r for name, r in lab.service_records().items()}
        if lab.proc.poll() is None:
            lab.proc.kill()
        kill_leftovers({**records, **now})
