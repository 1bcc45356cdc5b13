"""Errors raised for datasets a user supplied (files, Minari ids, arrays)."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset is missing, malformed or does not fit the task.

    The message names the file (or dataset id), the offending key, the bad value and the fix.
    """


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset file, directory or Minari id does not exist."""
