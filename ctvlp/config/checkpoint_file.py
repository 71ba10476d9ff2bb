"""Reading a checkpoint file safely (``weights_only``): shared by the run directory and the
modules that start from another run's weights (report generation's frozen encoder)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ctvlp.config.errors import ConfigError


def load_checkpoint_file(path: Path, *, mmap: bool = False) -> Any:
    """``torch.load`` of a checkpoint with ``weights_only=True``: unpickling an arbitrary file can
    run any code, so only tensors and plain data (dict, list, tuple, str, numbers, None) are
    accepted, and anything else is a ConfigError. Our checkpoints hold nothing else: the module's
    config is saved as plain containers, the RNG states as tensors and lists
    (callbacks/rng_state.py), Lightning's loop, optimizer, scheduler and ModelCheckpoint states
    are plain; so no type is allow-listed. ``mmap``: map the tensors instead of reading them (a
    cheap check of a large file that is loaded again later; only torch's zip format maps)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"{path} holds objects other than tensors and plain data, so it was not loaded (unpickling "
            "them could run code); only checkpoints written by ctvlp fit are accepted"
        ) from error
