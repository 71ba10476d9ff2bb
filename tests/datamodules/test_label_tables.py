"""``data.labels``: a label table (such as ``ctvlp annotate``'s llm_labels.csv) replaces the
source's own labels in the cache, -1 and blanks become NaN, a changed table rebuilds the index
(reusing every volume), and a bad cell stops the run naming its row and column."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ctvlp.config.loader import load_experiment
from datamodules.datamodule import ensure_cache
from datamodules.errors import DataRootError, MissingLabelColumnError
from datamodules.label_tables import read_label_table
from datamodules.labels import CT_RATE_LABELS
from datamodules.sources.ct_rate import SPLIT_LAYOUTS


def _own_labels(root: Path) -> pd.DataFrame:
    return pd.concat([pd.read_csv(root / layout.labels) for layout in SPLIT_LAYOUTS], ignore_index=True)


def _labels_by_id(index) -> dict[str, list[float]]:
    return {entry.id: list(entry.labels) for entry in index.entries}


def test_read_label_table_values_and_errors(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("VolumeName,Cardiomegaly,Emphysema\na_1.nii.gz,1,-1\nb_1,0,\n", encoding="utf-8")
    values = read_label_table(table, ["Cardiomegaly", "Emphysema"])
    assert values["a_1"]["Cardiomegaly"] == 1.0 and math.isnan(values["a_1"]["Emphysema"])
    assert values["b_1"]["Cardiomegaly"] == 0.0 and math.isnan(values["b_1"]["Emphysema"])
    table.write_text("VolumeName,Cardiomegaly,Emphysema\na_1,1,0\nb_1,yes,0\n", encoding="utf-8")
    with pytest.raises(DataRootError, match=r"row 3 \(VolumeName=b_1\), column 'Cardiomegaly': 'yes'"):
        read_label_table(table, ["Cardiomegaly", "Emphysema"])
    with pytest.raises(MissingLabelColumnError, match="Atelectasis"):
        read_label_table(table, ["Cardiomegaly", "Atelectasis"])
    with pytest.raises(DataRootError, match="ctvlp annotate"):
        read_label_table(tmp_path / "none.csv", ["Cardiomegaly"])


def test_data_labels_replace_the_cached_labels(
    phantom_root, phantom_cache_dir, phantom_overrides, tmp_path, caplog
):
    cache_dir = tmp_path / "cache"
    shutil.copytree(phantom_cache_dir, cache_dir)  # the session cache stays untouched
    overrides = [*phantom_overrides, f"data.cache_dir={cache_dir}"]
    own = _labels_by_id(
        ensure_cache(load_experiment("colipri_c", "cpu_demo", overrides).data, progress=False)
    )

    table = _own_labels(phantom_root)
    first, second = (str(v).removesuffix(".nii.gz") for v in table["VolumeName"][:2])
    table.loc[0, "Cardiomegaly"] = -1  # uncertain -> masked
    table.loc[1, "Emphysema"] = 1 - table.loc[1, "Emphysema"]  # the LLM disagrees with the dataset
    path = tmp_path / "llm_labels.csv"
    table.to_csv(path, index=False)
    cfg = load_experiment("colipri_c", "cpu_demo", [*overrides, f"data.labels={path}"])
    with caplog.at_level(logging.INFO):
        relabelled = _labels_by_id(ensure_cache(cfg.data, progress=False))
    assert "0 built" in caplog.text  # a new label table rebuilds the index, not the volumes
    cardiomegaly, emphysema = CT_RATE_LABELS.index("Cardiomegaly"), CT_RATE_LABELS.index("Emphysema")
    if first in own:
        assert math.isnan(relabelled[first][cardiomegaly]) and not math.isnan(own[first][cardiomegaly])
    if second in own:
        assert relabelled[second][emphysema] == 1 - own[second][emphysema]
    changed = [vid for vid in own if own[vid] != relabelled[vid]]
    assert set(changed) <= {first, second} and changed

    # re-annotated in place: the stamp sees it, like a changed report
    table.loc[1, "Emphysema"] = 1 - table.loc[1, "Emphysema"]
    table.to_csv(path, index=False)
    again = _labels_by_id(ensure_cache(cfg.data, progress=False))
    if second in own:
        assert again[second][emphysema] == own[second][emphysema]
    # back to the dataset's own labels
    assert (
        _labels_by_id(ensure_cache(load_experiment("colipri_c", "cpu_demo", overrides).data, progress=False))
        == own
    )

    table.loc[2, "Atelectasis"] = 2
    table.to_csv(path, index=False)
    with pytest.raises(DataRootError, match="row 4 .*column 'Atelectasis': '2' is not 1, 0, -1 or empty"):
        ensure_cache(cfg.data, progress=False)
