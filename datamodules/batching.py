"""What every DataModule's batches share: the batch kinds, and stacking sample dicts into a batch.

A batch is a dict. Every batch carries ``image`` (B, 1, X, Y, Z) in [-1, 1] (HU / 1000), and per
sample ``image_id``, ``index`` (its position in the split, for de-duplicating padded DDP shards),
``source`` (the data source's name) and ``kind``, one of the kinds below; a batch never mixes kinds.

- :data:`PAIRED`: a volume with its report (``datamodules/dataset.py``, ``datamodules/collate.py``):
  ``labels`` / ``label_mask`` (B, C), ``report`` and ``sections`` (lists), the report's
  ``input_ids`` / ``attention_mask`` (B, L), and ``cappa`` when report generation is trained.
- :data:`IMAGE_ONLY`: a volume without a report (``datamodules/image_dataset.py``): ``labels`` /
  ``label_mask`` where known.
- With two views (RadFound's CC-MIM, ``objectives.mae.cross_view``) paired and image-only samples
  also carry :data:`SECOND_VIEW` (B, 1, X, Y, Z): another crop of the same volume.
- :data:`VOLUME`: a volume alone; the Uniferum evaluation batches are of this kind
  (``datamodules/uniferum_datamodule.py``, with every task's targets).
- :data:`TASK`: one (volume, task, target) per sample, the Uniferum training batches.
"""

from __future__ import annotations

from typing import Any

import torch

PAIRED = "paired"
IMAGE_ONLY = "image_only"
VOLUME = "volume"
TASK = "task"

# The batch key of a sample's second crop of the same volume (``CroppedVolumeDataset(second_view=True)``).
SECOND_VIEW = "image_second_view"


def stack_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Sample dicts -> a batch dict: tensors stacked; bools, ints and floats become bool, long
    and float32 tensors; anything else (ids, text, section dicts) stays a list."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], bool):  # before int: bool is an int subclass
            batch[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(values[0], int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(values[0], float):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[key] = values
    return batch
