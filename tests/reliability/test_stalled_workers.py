"""Workers that stall, lie about the time or die: the lab's writes go on, and a worker that lost
its job can write nothing more (issue 12's acceptance).

* A worker SIGSTOPped in the middle of an epoch report (a TCP relay between it and the API
  forwards half of the request, then stops the worker's process group): while it is stopped,
  another client's ``POST /jobs`` and another worker's heartbeats, epochs and finish all go
  through, and ``/health`` says the database is writable. Before, a worker stopped while it
  held SQLite's write lock froze every write in the lab.
* Workers whose clocks are an hour ahead or behind (libfaketime) finish their jobs, and a
  skewed worker SIGKILLed mid-job has its job re-queued within the staleness window: the time
  stamps are the API's, never the worker's.
* Reports under a claim the API has given away are refused (409) and change nothing, whether
  sent by a stopped-then-resumed worker or by hand.
* A worker stopped in its final phase (outputs written, finish half sent) and woken after the
  job was taken over and finished writes nothing that lands: each attempt has its own folder.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from contract.vocab import JobStatus
from tests.worker.conftest import (
    FINAL,
    STALE_S,
    Lab,
    WorkerProcess,
    faketime_env,
    free_port,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

LONG = {"epochs": 40, "batch_size": 4}
# A stale job is re-queued within STALE_S plus a reconciler pass (0.5 s) and a worker's claim;
# the slack covers two loaded cores, and it is a deadline to wait for, not a timing measured.
REQUEUE_DEADLINE_S = STALE_S + 30


@contextmanager
def relay_that_stalls(
    upstream_port: int, marker: bytes, stall: Callable[[], None]
) -> Iterator[int]:
    """A TCP relay to the API on a free port. The first request whose bytes contain ``marker``
    is forwarded only in part, then ``stall()`` runs and that connection forwards nothing more:
    the API holds half a request from a client that stopped sending."""
    port, fired = free_port(), threading.Event()
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.2)
    done = threading.Event()

    def pump(src: socket.socket, dst: socket.socket, watch: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if watch and not fired.is_set() and marker in chunk:
                    fired.set()
                    dst.sendall(chunk[: len(chunk) // 2])
                    stall()
                    done.wait()  # hold the half-sent request open until the test ends
                    return
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        while not done.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            api = socket.create_connection(("127.0.0.1", upstream_port))
            threading.Thread(target=pump, args=(client, api, True), daemon=True).start()
            threading.Thread(target=pump, args=(api, client, False), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        done.set()
        thread.join(5)
        server.close()


def _stopped(worker: WorkerProcess) -> bool:
    """Whether every process of the worker's group is stopped (state T in /proc)."""
    pids = [worker.proc.pid, *worker.pool_pids()]
    states = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            return False
    return all(s in ("T", "t") for s in states)


def test_a_worker_stopped_mid_report_blocks_no_write_and_its_later_reports_are_refused(lab: Lab):
    first: list[WorkerProcess] = []
    stall = lambda: first[0].kill_group(signal.SIGSTOP)  # noqa: E731
    with relay_that_stalls(lab.api.port, b"/epochs/", stall) as relay:
        stopped = lab.start_worker("stopped", env={"PFT_API_URL": f"http://127.0.0.1:{relay}"})
        first.append(stopped)
        victim = lab.create_job(hparams=LONG)
        wait_for(lambda: _stopped(stopped), 120, "the worker to stop inside an epoch report")
        assert lab.job(victim).status == JobStatus.RUNNING

        # While it is stopped, with half its report inside the API: every other write goes on.
        health = lab.get("/health")
        assert health["database_writable"] is True, health
        job_id = lab.create_job()  # another client's POST /jobs (queued before the victim's
        other = lab.start_worker("other")  # re-queue, so the other worker runs it first)
        job = lab.wait_status(job_id, FINAL, 120)  # another worker's heartbeats, epochs, finish
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert lab.epochs(job_id) == [1, 2] and _stopped(stopped)
        # the stopped worker's job went stale: re-queued, and taken over by the other worker
        wait_for(
            lambda: lab.job(victim).attempts == 2, REQUEUE_DEADLINE_S, "the stale job's next claim"
        )
        assert lab.job(victim).worker.split(" ")[0] in other.log()

        # Resumed, the stopped worker learns that its claim is gone and reports nothing more.
        taken_over = lab.job(victim)
        stopped.kill_group(signal.SIGCONT)
        wait_for(lambda: "claim lost" in stopped.log(), 60, "the resumed worker to give up")
        wait_for(lambda: "'lost'" in stopped.log(), 60, "its task to end as lost, unreported")
        job = lab.job(victim)
        assert job.worker == taken_over.worker and job.status == JobStatus.RUNNING
        # Its epoch-1 report (half sent before the stop, sent again after it) never landed:
        # the other worker resumed from that epoch's checkpoint and reported from epoch 2 on.
        epochs = lab.epochs(victim)
        assert epochs == list(range(2, len(epochs) + 2)), epochs
        lab.post(f"/jobs/{victim}/cancel")  # no need to train it to the end
        assert lab.wait_status(victim, FINAL, 60).status == JobStatus.CANCELLED
        assert stopped.alive() and other.alive()


@pytest.mark.parametrize("offset", ["+1h", "-1h"])
def test_a_worker_with_a_skewed_clock_finishes_its_jobs(lab: Lab, offset: str):
    worker = lab.start_worker(f"skewed{offset}", env=faketime_env(offset))
    job_id = lab.create_job(hparams={"epochs": 3})
    job = lab.wait_status(job_id, FINAL, 120)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1, job.error
    assert lab.epochs(job_id) == [1, 2, 3]
    assert f"job {job_id} (finetune) claimed by" in worker.log()
    # the API's clock, not the worker's: the time stamps are nowhere near an hour off
    now = datetime.now(UTC)
    for stamp in (job.started_at, job.heartbeat_at, job.finished_at):
        assert abs(stamp.replace(tzinfo=stamp.tzinfo or UTC) - now) < timedelta(minutes=10)


def test_a_dead_worker_an_hour_ahead_has_its_job_requeued_within_the_staleness_window(lab: Lab):
    ahead = lab.start_worker("ahead", env=faketime_env("+1h"))
    job_id = lab.create_job(hparams={"epochs": 6, "batch_size": 4})
    wait_for(lambda: len(lab.epochs(job_id)) >= 1, 120, "an epoch under the skewed worker")
    ahead.kill_group()
    ahead.proc.wait(10)

    behind = lab.start_worker("behind", env=faketime_env("-1h"))
    wait_for(lambda: lab.job(job_id).attempts == 2, REQUEUE_DEADLINE_S, "the dead worker's job")
    job = lab.wait_status(job_id, FINAL, 180)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert f"job {job_id} (finetune) claimed by {job.worker}, attempt 2" in behind.log()
    assert lab.epochs(job_id) == list(range(1, 7))


def test_reports_under_a_claim_given_away_are_refused_and_change_nothing(lab: Lab):
    job_id = lab.create_job(hparams={"epochs": 1})
    route = f"/worker/jobs/{job_id}"
    metrics = {"train_loss": 0.5, "test_acc": 0.123}
    row = {"scope": "unit", "name": "ATTN.0", "angle_deg": 12.5}
    with lab.api.client(lab.api.worker_token) as w:
        old = w.post(f"{route}/claim", json={"worker": "old-worker"}).json()["claim"]
        assert w.post(f"{route}/heartbeat", json={"claim": old}).status_code == 200
        # it stalls past the staleness window: the reconciler re-queues the job, B claims it
        wait_for(lambda: lab.job(job_id).status == JobStatus.QUEUED, REQUEUE_DEADLINE_S, "re-queue")
        claimed = w.post(f"{route}/claim", json={"worker": "new-worker"})
        assert claimed.status_code == 200, claimed.text
        new = claimed.json()["claim"]  # (it reports at once: within the window, nothing stale)
        assert new != old

        epoch = {"claim": old, "epoch": 1, "metrics": metrics, "angles": [row]}
        artifact = {"kind": "delta", "location": "/x", "size_bytes": 1, "sha256": "0" * 64}
        end = {"claim": old, "status": "succeeded", "result": {"test_acc": 0.123}}
        refused = [
            w.post(f"{route}/heartbeat", json={"claim": old, "progress": 0.9}),
            w.put(f"{route}/epochs/1", json=epoch),
            w.post(f"{route}/finish", json={**end, "epochs": [epoch], "artifacts": [artifact]}),
        ]
        for r in refused:
            assert r.status_code == 409, r.text
            assert "no longer owned by this claim" in r.json()["detail"]
        job = lab.job(job_id)
        assert job.status == JobStatus.RUNNING and job.worker == "new-worker"
        assert job.progress < 0.9 and job.result is None
        assert lab.metrics(job_id) == [] and lab.artifacts(job_id) == {}
        assert lab.angles(job_id).epochs == [] and lab.angles(job_id).final is None

        # the new claim's reports land; the old one's finish, retried, still changes nothing
        ok = {**epoch, "claim": new, "metrics": {"train_loss": 0.25, "test_acc": 0.5}}
        assert w.put(f"{route}/epochs/1", json=ok).status_code == 204
        failed = {"claim": new, "status": "failed", "error": "x"}
        assert w.post(f"{route}/finish", json=failed).status_code == 204
        assert w.post(f"{route}/finish", json=end).status_code == 409
    job = lab.job(job_id)
    assert job.status == JobStatus.FAILED and job.error == "x" and job.result is None
    assert [(m.epoch, m.test_acc) for m in lab.metrics(job_id)] == [(1, 0.5)]


def test_the_api_is_the_only_writer_workers_hold_no_database_url(lab: Lab):
    assert not any(k == "PFT_DATABASE_URL" for k in lab.worker_env)
    worker = lab.start_worker()
    with open(f"/proc/{worker.proc.pid}/environ", "rb") as f:
        environ = f.read().split(b"\0")
    assert not any(item.startswith(b"PFT_DATABASE_URL=") for item in environ)
    with lab.api.client() as c:  # the users' token opens no worker route
        r = c.post("/worker/jobs/1/claim", json={"worker": "x"})
        assert r.status_code == 401, r.text
    with lab.api.client(lab.api.worker_token) as c:  # nor the workers' a user route
        assert c.post("/jobs", json={}).status_code == 401


def test_a_worker_stopped_in_its_final_phase_then_woken_overwrites_nothing(lab: Lab):
    """SIGSTOPped while it sends its finish (its outputs written, the report half sent), taken
    over past the staleness window, then SIGCONTed after the new owner finished: nothing the old
    worker writes lands, in the database or the store; every recorded sha256 matches its file."""
    first: list[WorkerProcess] = []
    stall = lambda: first[0].kill_group(signal.SIGSTOP)  # noqa: E731
    with relay_that_stalls(lab.api.port, b"/finish", stall) as relay:
        stopped = lab.start_worker("stopped", env={"PFT_API_URL": f"http://127.0.0.1:{relay}"})
        first.append(stopped)
        victim = lab.create_job(hparams={"epochs": 2, "batch_size": 16})
        wait_for(lambda: _stopped(stopped), 120, "the worker to stop inside its finish")
        old_folder = lab.run_dir(victim)
        assert (old_folder / "delta.safetensors").is_file()  # its outputs were written

        other = lab.start_worker("other")
        job = lab.wait_status(victim, FINAL, REQUEUE_DEADLINE_S + 120)
        assert job.status == JobStatus.SUCCEEDED and job.attempts == 2, (job.status, job.error)
        assert job.worker.split(" ")[0] in other.log()
        recorded = lab.artifacts(victim)
        new_folder = lab.run_dir(victim)
        assert new_folder != old_folder  # the new owner worked in its own attempt's folder
        before = {p: p.read_bytes() for p in new_folder.rglob("*") if p.is_file()}
        rows = [m.model_dump() for m in lab.metrics(victim)]

        stopped.kill_group(signal.SIGCONT)
        wait_for(lambda: "'lost'" in stopped.log(), 90, "the woken worker's task to end as lost")
    job = lab.job(victim)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2
    assert lab.artifacts(victim) == recorded
    assert [m.model_dump() for m in lab.metrics(victim)] == rows
    assert {p: p.read_bytes() for p in new_folder.rglob("*") if p.is_file()} == before
    for kind, artifact in recorded.items():
        path = lab.file(artifact)
        assert path.is_relative_to(new_folder), (kind, path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact.sha256, kind
    assert stopped.alive() and other.alive()
