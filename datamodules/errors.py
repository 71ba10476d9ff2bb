"""Errors shared by the data sources and the cache: configuration problems that stop a run at once."""

from __future__ import annotations


class DataRootError(ValueError):
    """The data root is missing or does not have the dataset's on-disk layout."""


class MissingLabelColumnError(ValueError):
    """A configured label name is not a column of the dataset's label table."""


class BadVolumeError(ValueError):
    """This input volume cannot be converted; the message is the reason (goes to quarantine.csv)."""
