"""A compare job leaves a started marker while it runs, so a training cut off together with the
compare (no job.json written) is known to have been attempted and continues from its last.ckpt;
a finished job is reused only under the same fingerprint; a compare stopped with SIGTERM stops its
running job too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ctvlp.compare.jobs import RECORD_NAME, STARTED_NAME, Job, run_job


@dataclass(frozen=True)
class ScriptJob(Job):
    """A job whose process is a short Python script instead of ``ctvlp``."""

    script: str = ""

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script]


def test_the_started_marker_exists_while_the_job_runs_and_counts_as_an_attempt(tmp_path: Path) -> None:
    marker = tmp_path / "job" / STARTED_NAME
    check = f"import json, sys; sys.exit(0 if json.load(open({str(marker)!r}))['fingerprint'] == 'k1' else 3)"
    job = ScriptJob("a: train", tmp_path / "job", [], "k1", script=check)
    record = run_job(job)
    assert record.ok and not record.reused and record.wall_s > 0

    # The compare killed with its job: the marker stays, no job.json.
    (tmp_path / "job" / RECORD_NAME).unlink()
    assert job.finished() is None and job.attempted()
    assert not ScriptJob("a: train", tmp_path / "job", [], "k2").attempted()  # another config


def test_a_finished_job_is_reused_under_its_fingerprint_only(tmp_path: Path) -> None:
    job = ScriptJob("b: eval", tmp_path / "job", [], "k1", script="print('scored')")
    first = run_job(job)
    assert first.ok and "scored" in job.log_path.read_text(encoding="utf-8")
    again = run_job(job)
    assert again.reused and again.finished_at == first.finished_at
    record = json.loads((tmp_path / "job" / RECORD_NAME).read_text(encoding="utf-8"))
    assert record["fingerprint"] == "k1" and record["returncode"] == 0
    failing = ScriptJob("b: eval", tmp_path / "job", [], "k2", script="import sys; sys.exit(4)")
    assert failing.finished() is None
    result = run_job(failing)
    assert result.returncode == 4 and not result.reused and failing.finished() is None and failing.attempted()


# Runs one job whose process sleeps and writes its pid; the test sends this runner SIGTERM.
RUNNER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_compare_jobs import ScriptJob
from ctvlp.compare.jobs import run_job
script = "import os, time; open({pid_file!r}, 'w').write(str(os.getpid())); time.sleep(120)"
run_job(ScriptJob("c: train", Path({folder!r}), [], "k1", script=script))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_compare_terminates_its_running_job(tmp_path: Path) -> None:
    pid_file = tmp_path / "job.pid"
    code = RUNNER.format(
        tests=str(Path(__file__).parent), pid_file=str(pid_file), folder=str(tmp_path / "job")
    )
    runner = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, encoding="utf-8")
    deadline = time.monotonic() + 60
    while not pid_file.is_file() or not pid_file.read_text(encoding="utf-8"):
        assert runner.poll() is None and time.monotonic() < deadline, (
            runner.stderr.read() if runner.stderr else ""
        )
        time.sleep(0.1)
    job_pid = int(pid_file.read_text(encoding="utf-8"))
    runner.send_signal(signal.SIGTERM)
    _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 128 + signal.SIGTERM, stderr
    assert "is terminated with this process" in stderr
    assert not _alive(job_pid)  # no orphan left (reaped by the runner)
    assert not (tmp_path / "job" / RECORD_NAME).exists()  # not a finished job: a re-run resumes it
    assert (tmp_path / "job" / STARTED_NAME).is_file()
