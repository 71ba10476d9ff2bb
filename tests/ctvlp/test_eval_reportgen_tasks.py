"""`ctvlp eval --tasks reportgen`: the task is split off the others, and CapPa's sectioned reports
are scored as prose."""

from __future__ import annotations

from ctvlp.commands.eval_reportgen import cappa_report_text, split_report_task


def test_reportgen_is_split_off_the_other_tasks() -> None:
    assert split_report_task(None) == (False, None)
    assert split_report_task("reportgen") == (True, None)
    assert split_report_task("retrieval, reportgen,probe") == (True, "retrieval,probe")
    assert split_report_task("retrieval") == (False, "retrieval")


def test_cappa_reports_lose_their_headers_and_empty_sections() -> None:
    sectioned = "Image Quality: \nLungs: No nodule. Mild emphysema.\nHeart: The heart is enlarged.\nBones: "
    assert cappa_report_text(sectioned) == "No nodule. Mild emphysema. The heart is enlarged."
