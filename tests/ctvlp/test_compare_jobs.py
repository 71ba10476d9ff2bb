"""A compare job leaves a started marker while it runs, so a training cut off together with the
compare (no job.json written) is known to have been attempted and continues from its last.ckpt;
a finished job is reused only under the same fingerprint."""

from __future__ import annotations

import json
import sys
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
