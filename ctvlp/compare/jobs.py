"""The jobs of a compare: each one a ``ctvlp`` subprocess (a crash or a leak in one cannot take the
comparison down), its cost measured, and its outcome kept for reuse.

A job's folder holds ``job.json``: its fingerprint (what it computes: the resolved config, the
weights it reads, its tasks), the command, the exit code, and the cost of that one child process
(wall seconds; CPU seconds from ``os.wait4``; peak resident memory of it and its workers). A job whose ``job.json`` has the
same fingerprint and exit code 0 is reused, not run again.

Two launchers: ``local`` runs the jobs one after the other here; ``slurm`` submits each job whose
inputs exist through submitit (the job runs :func:`run_job` on its node, so ``job.json`` and its
cost come from there) and leaves ``submitted.json`` with the SLURM job id; a later ``ctvlp compare``
finds the finished jobs, submits the stages that depended on them, and writes the table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

RECORD_NAME = "job.json"
SUBMITTED_NAME = "submitted.json"
# Written when a job starts here: if the compare is killed with it, no job.json says it ran.
STARTED_NAME = "started.json"
# SLURM states of a job that may still write its job.json (sacct's names, as submitit reports them).
SLURM_ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "UNKNOWN")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (the config hash of reuse)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class JobRecord:
    """What one job did and cost (``job.json``)."""

    fingerprint: str
    command: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_gb: float
    finished_at: str
    # CUDA devices visible where the job ran (0: a CPU node): its GPU-hours are wall x the devices
    # its run trained on (ctvlp/compare/tables.py).
    cuda_devices: int = 0
    reused: bool = field(default=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class Job:
    """One stage of one encoder: ``ctvlp <args>`` run in ``folder`` (its log: ``folder/job.log``)."""

    label: str
    folder: Path
    arguments: list[str]
    key: str
    devices: Any = 1  # what a SLURM submission asks for (the job's trainer.devices / num_nodes)
    num_nodes: int = 1

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "ctvlp.cli", *self.arguments]

    @property
    def log_path(self) -> Path:
        return self.folder / "job.log"

    def finished(self) -> JobRecord | None:
        """The record of an earlier successful run of this same job, if any."""
        path = self.folder / RECORD_NAME
        if not path.is_file():
            return None
        record = JobRecord(**json.loads(path.read_text(encoding="utf-8")))
        return record if record.ok and record.fingerprint == self.key else None

    def attempted(self) -> bool:
        """Whether this same job ran or was submitted before (and did not finish well)."""
        for name in (RECORD_NAME, SUBMITTED_NAME, STARTED_NAME):
            path = self.folder / name
            if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("fingerprint") == self.key:
                return True
        return False


class PeakMemory:
    """The peak resident memory of a process and its descendants (data workers), sampled every
    ``interval`` seconds while it runs. Not ``ru_maxrss``: a child's high-water mark starts at its
    parent's resident size at fork, so a large parent would stand in for every job."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _tree_rss(self) -> int:
        total = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak_bytes = max(self.peak_bytes, self._tree_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def _terminated_with(process: subprocess.Popen) -> Any:
    """While the job runs, a SIGTERM to this process (``kill PID``, a scheduler's stop) ends the job
    too before this process exits: otherwise the job lives on as an orphan and a re-run starts a
    second one in the same folder. (Ctrl-C needs none of this: it reaches the whole process group.)
    Only the main thread may set handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        log.warning("Stopping: the running job (pid %d) is terminated with this process", process.pid)
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _visible_cuda_devices() -> int:
    import torch  # the job's own process imported it; here only to count the devices

    return int(torch.cuda.device_count())


def run_job(job: Job) -> JobRecord:
    """Run ``job`` here unless an identical one finished before; its output goes to ``job.log``.
    Under SLURM with several tasks (one per GPU), every task runs the command (one rank each) and
    task 0 writes the record."""
    earlier = job.finished()
    if earlier is not None:
        earlier.reused = True
        return earlier
    job.folder.mkdir(parents=True, exist_ok=True)
    rank_zero = int(os.environ.get("SLURM_PROCID", "0")) == 0
    if rank_zero:
        started = {"fingerprint": job.key, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (job.folder / STARTED_NAME).write_text(json.dumps(started) + "\n", encoding="utf-8")
    start = time.monotonic()
    with job.log_path.open("w", encoding="utf-8") as out:
        out.write(" ".join(job.command) + "\n\n")
        out.flush()
        process = subprocess.Popen(job.command, stdout=out, stderr=subprocess.STDOUT)
        with _terminated_with(process), PeakMemory(process.pid) as memory:
            _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    record = JobRecord(
        fingerprint=job.key,
        command=job.command,
        returncode=process.returncode,
        wall_s=round(time.monotonic() - start, 2),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
        peak_rss_gb=round(memory.peak_bytes / 2**30, 3),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        cuda_devices=_visible_cuda_devices(),
    )
    record_data = asdict(record)
    record_data.pop("reused")
    if rank_zero:
        (job.folder / RECORD_NAME).write_text(json.dumps(record_data, indent=1) + "\n", encoding="utf-8")
    if not record.ok:
        log.error("%s failed (exit %d); its log: %s", job.label, record.returncode, job.log_path)
    return record


class SlurmLauncher:
    """Submits a job through submitit unless it finished, or is still queued or running; returns
    its record when it finished, else a sentence saying where it stands."""

    def __init__(self, options: dict[str, Any]) -> None:
        import submitit  # imported here: the local launcher never needs it

        self.submitit = submitit
        self.options = options

    def __call__(self, job: Job) -> JobRecord | str:
        from ctvlp.sweep.launchers import slurm_parameters

        earlier = job.finished()
        if earlier is not None:
            earlier.reused = True
            return earlier
        submitted = job.folder / SUBMITTED_NAME
        if submitted.is_file():
            marker = json.loads(submitted.read_text(encoding="utf-8"))
            if marker.get("fingerprint") == job.key:
                state = self.submitit.SlurmJob(folder=job.folder / "slurm", job_id=marker["job_id"]).state
                if state in SLURM_ACTIVE:
                    return f"SLURM job {marker['job_id']} is {state.lower()}; run ctvlp compare again once it ends"
                log.warning("%s: SLURM job %s ended %s without a successful record; resubmitting "
                            "(logs: %s)", job.label, marker["job_id"], state, job.folder / "slurm")  # fmt: skip
        job.folder.mkdir(parents=True, exist_ok=True)
        executor = self.submitit.AutoExecutor(folder=job.folder / "slurm")
        executor.update_parameters(
            name=job.label.replace(" ", ""), **slurm_parameters(self.options, job.devices, job.num_nodes)
        )
        handle = executor.submit(run_job, job)
        submitted.write_text(
            json.dumps({"fingerprint": job.key, "job_id": handle.job_id}) + "\n", encoding="utf-8"
        )
        return f"submitted as SLURM job {handle.job_id}; run ctvlp compare again once it ends"


def run_local(job: Job) -> JobRecord | str:
    return run_job(job)
