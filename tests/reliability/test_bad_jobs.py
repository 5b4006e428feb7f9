"""Jobs that must fail cleanly, and the worker that must carry on.

* the artifact store fills up or turns read-only while a checkpoint is written: the job fails
  with the OS's reason, the previous checkpoint is intact and a retry resumes from it (a real
  tmpfs of a few MB, mounted for the test and unmounted after; the test needs root);
* a truncated checkpoint, a pickle posing as a checkpoint, a dataset folder with an unreadable
  image, a model that does not exist, dataset names and symlinks that lead out of the datasets
  root, soup ingredients that are pickles or live outside the artifact store: each job fails
  with a message a user can act on, and a good job queued behind them succeeds.

Jobs the API would refuse (bad datasets, models, ingredients) are written into the database
behind it, to show that the worker refuses them too. Nothing is ever unpickled: the pickles
carry a payload that would create a marker file.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from contract.vocab import JobKind, JobStatus
from pft.run_state import check_safetensors
from pft.store import sha256_file
from tests.worker.conftest import FINAL, Lab, tiny_spec, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class Payload:
    """Unpickling this creates ``marker``: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def write_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"weights": Payload(marker)}))
    return path


def write_torch_pickle(path: Path, marker: Path) -> Path:
    """A ``torch.save`` file (zip + pickle), the format safetensors replaces."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": Payload(marker)}, path)
    return path


def _epochs_done(lab: Lab, job_id: int) -> int:
    return len(lab.epochs(job_id))


# ------------------------------------------------------------------------------------------
# the artifact store fails during a checkpoint


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs as the artifact store (root only); unmounted afterwards."""
    mnt = tmp_path / "store"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mount: Path) -> Path:
    filler = mount / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("fault", ["disk_full", "read_only"])
def test_checkpoint_to_a_full_or_read_only_store_fails_the_job_and_keeps_the_last_one(
    lab: Lab, small_store: Path, fault: str
):
    worker = lab.start_worker(env={"PFT_ARTIFACT_URL": str(small_store)})
    job_id = lab.create_job(hparams={"epochs": 8, "batch_size": 4})
    wait_for(lambda: _epochs_done(lab, job_id) >= 1, 60, "the first epoch checkpoint", poll=0.05)
    state = lab.run_dir(job_id, small_store) / "state"  # the attempt's folder in the store
    if fault == "disk_full":
        filler = fill(small_store)
        reason = "No space left on device"
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_store)], check=True)
        reason = "Read-only file system"

    job = lab.wait_status(job_id, FINAL, 90)
    assert job.status == JobStatus.FAILED
    assert reason in job.error and "Traceback" not in job.error, job.error
    print(f"{fault}: {job.error}")
    assert worker.alive()

    # the last good checkpoint is complete and loadable, and it is the one the epochs agree on
    saved = json.loads((state / "state.json").read_text())
    tensors = state / saved["tensors"]
    check_safetensors(tensors)
    assert "rng.torch" in load_file(str(tensors))
    assert saved["run"]["epoch"] == _epochs_done(lab, job_id) >= 1
    assert sorted(p.name for p in state.iterdir()) == ["state.json", saved["tensors"]]

    # once the store has room again, a retry resumes from that checkpoint and finishes
    if fault == "disk_full":
        filler.unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_store)], check=True)
    assert lab.post(f"/jobs/{job_id}/retry").status == JobStatus.QUEUED
    job = lab.wait_status(job_id, FINAL, 120)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result["resumed_from_epoch"] == saved["run"]["epoch"]
    assert lab.epochs(job_id) == list(range(1, 9))


# ------------------------------------------------------------------------------------------
# bad checkpoints, data, models and paths: failed jobs, a worker that carries on


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def _image_folder(root: Path, *, images: int = 3) -> Path:
    for c, cls in enumerate(("a", "b")):
        for i in range(images):
            _png(root / cls / f"{i}.png", 40 * c + 10 * i)
    return root


def _state_with(lab: Lab, job_id: int, tensors_file: Path) -> None:
    """Puts ``tensors_file`` where the job's resumable state names its tensors."""
    state = lab.data / "artifacts" / "jobs" / str(job_id) / "state"
    state.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tensors_file, state / "tensors-7.safetensors")
    run = {"epoch": 1}
    (state / "state.json").write_text(json.dumps({"tensors": "tensors-7.safetensors", "run": run}))


def _fake_succeeded_finetune(lab: Lab, delta: Path) -> int:
    """A succeeded fine-tuning job whose recorded delta is ``delta`` (sha256 matching), ended
    through the worker routes as a worker would."""
    job_id = lab.insert_job(JobKind.FINETUNE, tiny_spec())
    with lab.api.client(lab.api.worker_token) as c:
        r = c.post(f"/worker/jobs/{job_id}/claim", json={"worker": "test"})
        assert r.status_code == 200, r.text
        artifact = {"kind": "delta", "location": str(delta), "size_bytes": delta.stat().st_size}
        artifact["sha256"] = sha256_file(delta)
        end = {"claim": r.json()["claim"], "status": "succeeded", "artifacts": [artifact]}
        assert c.post(f"/worker/jobs/{job_id}/finish", json=end).status_code == 204
    return job_id


def _soup(lab: Lab, ingredients: list[int]) -> int:
    spec = {"method": "uniform", "ingredients": ingredients, "params": {}, "shifts": []}
    return lab.insert_job(JobKind.SOUP, spec)


def test_bad_checkpoints_data_and_models_fail_cleanly_and_other_jobs_run(lab: Lab):
    tmp = lab.root
    marker = tmp / "UNPICKLED"
    datasets = tmp / "data" / "datasets"
    outside = _image_folder(tmp / "outside")  # a valid image folder outside the data root

    # checkpoints: truncated safetensors, a pickle, a torch.save file
    whole = tmp / "whole.safetensors"
    save_file({"param.w": torch.zeros(4096)}, str(whole))
    truncated = tmp / "truncated.safetensors"
    truncated.write_bytes(whole.read_bytes()[:-100])
    jobs: dict[str, int] = {}
    for name, file in [
        ("truncated", truncated),
        ("pickle", write_pickle(tmp / "p.safetensors", marker)),
        ("torch_save", write_torch_pickle(tmp / "t.safetensors", marker)),
    ]:
        jobs[name] = lab.insert_job(JobKind.FINETUNE, tiny_spec())
        _state_with(lab, jobs[name], file)

    # data and models
    bad = _image_folder(datasets / "unreadable")
    (bad / "a" / "9.png").write_bytes(b"this is not a PNG file")
    _image_folder(datasets / "leaky")
    os.symlink(outside / "a" / "0.png", datasets / "leaky" / "a" / "9.png")
    os.symlink(outside, datasets / "escape")
    for name, changes in [
        ("unreadable_image", {"dataset": "imagefolder:unreadable"}),
        ("unknown_model", {"model": "pft/no-such-model"}),
        ("dotdot", {"dataset": "imagefolder:../../outside"}),
        ("absolute", {"dataset": f"imagefolder:{outside}"}),
        ("symlinked_folder", {"dataset": "imagefolder:escape"}),
        ("symlinked_image", {"dataset": "imagefolder:leaky"}),
        ("url_encoded", {"dataset": "imagefolder:%2e%2e%2f%2e%2e%2foutside"}),
    ]:
        jobs[name] = lab.insert_job(JobKind.FINETUNE, tiny_spec(**changes))

    # soups whose ingredients' recorded checkpoints are pickles (with matching sha256), planted
    # inside the artifact store (locations outside it are refused before any read)
    store = tmp / "data" / "artifacts" / "planted"
    pickles = [write_pickle(store / f"{i}.safetensors", marker) for i in range(2)]
    jobs["soup_of_pickles"] = _soup(lab, [_fake_succeeded_finetune(lab, p) for p in pickles])
    torch_files = [write_torch_pickle(store / f"{i}.pt", marker) for i in range(2)]
    jobs["soup_of_torch_saves"] = _soup(
        lab, [_fake_succeeded_finetune(lab, p) for p in torch_files]
    )
    for job_id in jobs.values():
        lab.enqueue(job_id)
    good = lab.create_job()

    worker = lab.start_worker()
    assert lab.wait_status(good, FINAL, 240).status == JobStatus.SUCCEEDED
    errors = {}
    for name, job_id in jobs.items():
        job = lab.wait_status(job_id, FINAL, 60)
        assert job.status == JobStatus.FAILED, (name, job.error)
        assert "Traceback" not in job.error and len(job.error) < 2000, (name, job.error)
        errors[name] = job.error
    print(json.dumps(errors, indent=1))
    assert worker.alive()
    assert not marker.exists(), "a pickle was unpickled"

    for name in ("truncated", "pickle", "torch_save"):
        assert errors[name].startswith("corrupt checkpoint"), errors[name]
        assert "retry the job" in errors[name]
    assert "truncated" in errors["truncated"]
    assert "unknown model 'pft/no-such-model'" in errors["unknown_model"]
    assert "accepted" in errors["unknown_model"]
    for name in ("dotdot", "absolute", "symlinked_folder", "symlinked_image"):
        assert "outside" in errors[name] and "only paths inside it" in errors[name], errors[name]
    assert "does not exist under" in errors["url_encoded"]  # a name, never decoded to ../
    for name in ("soup_of_pickles", "soup_of_torch_saves"):
        assert "is not a readable safetensors file" in errors[name], errors[name]
    assert "9.png" in errors["unreadable_image"], errors["unreadable_image"]
